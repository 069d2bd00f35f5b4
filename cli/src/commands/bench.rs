//! `runlane bench`: the queue's figures on this machine, against its own throwaway PostgreSQL
//! (fsync on): bulk enqueue, no-op runs through the whole life cycle, pickup latency of an idle
//! worker, cancel → step process killed, kill -9 of a worker → the run running elsewhere.

use anyhow::Context;
use runlane_core::db;
use runlane_core::local_pg::{LocalPg, LocalPgOptions};
use runlane_core::model::{EnqueueRequest, Lane, RunId};
use runlane_core::settings::Settings;
use runlane_worker::daemon::Daemon;
use runlane_worker::process_group::processes_in_group;
use runlane_worker::worker::{Capacity, Shutdown};
use serde_json::json;
use sqlx::PgPool;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// No-op runs for the throughput figure
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// Worker processes' worth of in-process workers for the throughput figure
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots per worker
    #[arg(long, default_value_t = 32)]
    slots: u32,
    /// Sequential runs timed for pickup latency
    #[arg(long, default_value_t = 200)]
    pickups: u32,
    /// Cancels timed
    #[arg(long, default_value_t = 20)]
    cancels: u32,
    /// Lease for the kill -9 recovery figure, milliseconds (the worker default is 15000)
    #[arg(long, default_value_t = 15_000)]
    lease_ms: u64,
    /// Skip the kill -9 recovery figure (it takes a lease and more)
    #[arg(long)]
    skip_recovery: bool,
    /// One JSON object with every figure
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("runlane-bench-{}", std::process::id()));
    let pg = tokio::task::spawn_blocking(move || {
        let pg = LocalPg::start(&dir, &LocalPgOptions { fsync: true, max_connections: 300, remove_on_drop: true })?;
        pg.create_database("runlane")?;
        Ok::<_, std::io::Error>(pg)
    })
    .await?
    .context("starting the benchmark's PostgreSQL")?;
    let url = pg.url("runlane");
    let pool = db::connect(&url, 8, "runlane-bench").await?;
    db::migrate(&pool).await?;
    db::apply_template(&pool, "noop", &json!({"steps": [{"name": "noop", "kind": "noop"}]})).await?;
    let sleeper = json!({"steps": [{"name": "hold", "kind": "shell", "cancel_grace_ms": 5000,
                                     "command": "echo pgid $$ attempt $RUNLANE_ATTEMPT; exec sleep 300"}]});
    db::apply_template(&pool, "hold", &sleeper).await?;
    let say = |s: &str| {
        if !args.json {
            eprintln!("{s}")
        }
    };

    say(&format!("bulk enqueue of {} no-op runs …", args.runs));
    let enqueue_per_s = bulk_enqueue(&pool, args.runs).await?;
    say(&format!("  {enqueue_per_s:.0} runs/s"));

    say(&format!("{} no-op runs through {} workers × {} slots …", args.runs, args.workers, args.slots));
    let runs_per_s = drain(&url, &pool, args.runs, args.workers, args.slots).await?;
    say(&format!("  {runs_per_s:.0} runs/s"));

    let idle = start_workers(&url, 1, 4, 1_000, 15_000).await?;
    say(&format!("pickup latency over {} runs on an idle worker …", args.pickups));
    let mut pickups = pickup_latencies(&pool, args.pickups).await?;
    let (p50, p95) = (percentile(&mut pickups, 0.50), percentile(&mut pickups, 0.95));
    say(&format!("  p50 {p50:.2} ms, p95 {p95:.2} ms"));
    say(&format!("cancel → step process killed, {} times …", args.cancels));
    let mut cancels = cancel_latencies(&pool, args.cancels).await?;
    let cancel_p95 = percentile(&mut cancels, 0.95);
    say(&format!("  p95 {cancel_p95:.1} ms"));
    stop_workers(idle).await;

    let recovery_s = if args.skip_recovery {
        None
    } else {
        say(&format!("kill -9 of a worker mid-run, lease {} ms …", args.lease_ms));
        let r = recovery(&url, &pool, args.lease_ms).await?;
        say(&format!("  running elsewhere after {r:.2} s"));
        Some(r)
    };
    let figures = json!({
        "runs_per_s": runs_per_s.round(),
        "enqueue_per_s": enqueue_per_s.round(),
        "pickup_p50_ms": round2(p50),
        "pickup_p95_ms": round2(p95),
        "cancel_p95_ms": round2(cancel_p95),
        "recovery_s": recovery_s.map(round2),
        "runs": args.runs, "workers": args.workers, "slots": args.slots, "lease_ms": args.lease_ms,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(ExitCode::SUCCESS)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `enqueue_runs` in calls of 5,000 runs, spread over the four lanes.
async fn bulk_enqueue(pool: &PgPool, n: u32) -> anyhow::Result<f64> {
    let reqs: Vec<EnqueueRequest> = (0..n)
        .map(|i| EnqueueRequest {
            template: "noop".into(),
            params: json!({}),
            lane: Some(Lane::ALL[i as usize % 4]),
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    for chunk in reqs.chunks(5_000) {
        db::enqueue_runs(pool, chunk).await?;
    }
    Ok(f64::from(n) / started.elapsed().as_secs_f64())
}

type Running = Vec<(Daemon, Shutdown)>;

async fn start_workers(url: &str, count: u32, slots: u32, heartbeat_ms: u64, lease_ms: u64) -> anyhow::Result<Running> {
    let mut running = Vec::new();
    for i in 0..count {
        let mut s = Settings::default();
        s.worker.slots = slots;
        s.worker.listen = "127.0.0.1:0".into();
        s.worker.heartbeat_interval_ms = heartbeat_ms;
        s.worker.lease_ms = lease_ms;
        s.worker.poll_interval_ms = 200;
        s.worker.host = Some(format!("bench-{i}"));
        s.sweeper.enabled = i == 0;
        let pool = db::connect(url, slots + 4, "runlane-bench-worker").await?;
        let shutdown = Shutdown::default();
        let (_tx, capacity) = watch::channel(Capacity { lanes: Lane::ALL.to_vec(), slots });
        let daemon = Daemon::start(s, pool, shutdown.clone(), capacity).await.map_err(anyhow::Error::msg)?;
        running.push((daemon, shutdown));
    }
    Ok(running)
}

async fn stop_workers(running: Running) {
    for (_, shutdown) in &running {
        shutdown.stop_claiming.cancel();
    }
    for (daemon, _) in running {
        let _ = daemon.wait().await;
    }
}

async fn count_succeeded(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM runlane.runs WHERE status = 'succeeded'").fetch_one(pool).await?)
}

async fn drain(url: &str, pool: &PgPool, n: u32, workers: u32, slots: u32) -> anyhow::Result<f64> {
    let before = count_succeeded(pool).await?;
    let started = Instant::now();
    let running = start_workers(url, workers, slots, 2_000, 15_000).await?;
    while count_succeeded(pool).await? < before + i64::from(n) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop_workers(running).await;
    Ok(f64::from(n) / secs)
}

async fn enqueue(pool: &PgPool, template: &str) -> anyhow::Result<RunId> {
    let req =
        EnqueueRequest { template: template.into(), params: json!({}), lane: Some(Lane::A), ..Default::default() };
    Ok(db::enqueue_run(pool, &req).await?)
}

async fn wait_status(pool: &PgPool, run: RunId, done: &[&str]) -> anyhow::Result<()> {
    loop {
        let status = db::get_run(pool, run).await?.status;
        if done.contains(&status.as_str()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Enqueue → claim, from the database's own clock (created_at and claimed_at).
async fn pickup_latencies(pool: &PgPool, n: u32) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let run = enqueue(pool, "noop").await?;
        wait_status(pool, run, &["succeeded"]).await?;
        let ms: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM claimed_at - created_at)::float8 * 1000 FROM runlane.runs WHERE id = $1",
        )
        .bind(run)
        .fetch_one(pool)
        .await?;
        out.push(ms);
        tokio::time::sleep(Duration::from_millis(20)).await; // the worker idles again
    }
    Ok(out)
}

async fn step_pgid(pool: &PgPool, run: RunId, attempt: i32) -> anyhow::Result<u32> {
    loop {
        for e in db::read_events(pool, run, 0, 100).await? {
            let body = e.body.unwrap_or_default();
            if body.ends_with(&format!("attempt {attempt}"))
                && let Some(pgid) = body.split_whitespace().nth(1).and_then(|p| p.parse().ok())
            {
                return Ok(pgid);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// cancel_run → no process of the step's group left.
async fn cancel_latencies(pool: &PgPool, n: u32) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let run = enqueue(pool, "hold").await?;
        let pgid = step_pgid(pool, run, 1).await?;
        let asked = Instant::now();
        db::cancel_run(pool, run, Some("bench")).await?;
        while processes_in_group(pgid) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out.push(asked.elapsed().as_secs_f64() * 1000.0);
        wait_status(pool, run, &["cancelled"]).await?;
    }
    Ok(out)
}

/// kill -9 of the worker running a step → the run claimed by another worker process.
async fn recovery(url: &str, pool: &PgPool, lease_ms: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let heartbeat = (lease_ms / 3).max(100).to_string();
    let spawn = |name: &str| {
        std::process::Command::new(&exe)
            .arg("worker")
            .env("DATABASE_URL", url)
            .env("RUNLANE__WORKER__LEASE_MS", lease_ms.to_string())
            .env("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", &heartbeat)
            .env("RUNLANE__WORKER__LISTEN", "127.0.0.1:0")
            .env("RUNLANE__WORKER__HOST", name)
            .env("RUNLANE__SWEEPER__INTERVAL_MS", "250")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut first = spawn("bench-doomed")?;
    let run = enqueue(pool, "hold").await?;
    step_pgid(pool, run, 1).await?;
    let mut second = spawn("bench-survivor")?;
    first.kill()?;
    let killed = Instant::now();
    let _ = first.wait();
    let pgid = step_pgid(pool, run, 2).await?;
    let secs = killed.elapsed().as_secs_f64();
    db::cancel_run(pool, run, Some("bench done")).await?;
    while processes_in_group(pgid) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = second.kill();
    let _ = second.wait();
    Ok(secs)
}
