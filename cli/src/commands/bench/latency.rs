//! Latency and footprint figures: pickup by an idle worker, cancel → the step's processes gone,
//! a step's line → seen by `runlane tail`, kill -9 → running elsewhere, log lines stored per second,
//! and an idle worker process's memory.

use super::Args;
use super::setup::Bench;
use anyhow::Context;
use runlane_core::db;
use runlane_core::model::{EnqueueRequest, Lane, RunId};
use runlane_worker::process_group::processes_in_group;
use serde_json::json;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Every figure of this module, by key, saying what it does as it goes.
pub async fn measure(bench: &Bench, args: &Args, say: &dyn Fn(&str)) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let mut figures = Vec::new();
    let idle = bench.workers(1, 4, false).await?;
    say(&format!("pickup latency over {} runs on an idle worker …", args.pickups));
    let mut pickups = pickup_latencies(&bench.pool, args.pickups).await?;
    let (p50, p95) = (percentile(&mut pickups, 0.50), percentile(&mut pickups, 0.95));
    say(&format!("  p50 {p50:.2} ms, p95 {p95:.2} ms"));
    figures.extend([("pickup_p50_ms", p50), ("pickup_p95_ms", p95)]);
    say(&format!("cancel → step process killed, {} times …", args.cancels));
    let mut cancels = cancel_latencies(&bench.pool, args.cancels).await?;
    let cancel_p95 = percentile(&mut cancels, 0.95);
    say(&format!("  p95 {cancel_p95:.1} ms"));
    figures.push(("cancel_p95_ms", cancel_p95));
    say("a step's line → seen by `runlane tail`, 100 lines …");
    let mut tails = tail_latencies(bench).await?;
    let tail_p95 = percentile(&mut tails, 0.95);
    say(&format!("  p95 {tail_p95:.1} ms over {} lines", tails.len()));
    figures.push(("tail_p95_ms", tail_p95));
    say(&format!("one shell step writing {} lines …", args.log_lines));
    let lines = log_lines_per_s(&bench.pool, args.log_lines).await?;
    say(&format!("  {lines:.0} lines/s stored"));
    figures.push(("log_lines_per_s", lines.round()));
    idle.stop().await;

    say("an idle worker process's resident memory …");
    let rss = idle_rss_mib(&bench.url).await?;
    say(&format!("  {rss:.1} MiB"));
    figures.push(("idle_rss_mib", rss));
    if !args.skip_recovery {
        say(&format!("kill -9 of a worker mid-run, lease {} ms …", args.lease_ms));
        let secs = recovery(bench, args.lease_ms).await?;
        say(&format!("  running elsewhere after {secs:.2} s"));
        figures.extend([("recovery_s", secs), ("lease_s", args.lease_ms as f64 / 1000.0)]);
    }
    Ok(figures)
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn enqueue(pool: &PgPool, template: &str, params: serde_json::Value) -> anyhow::Result<RunId> {
    let req = EnqueueRequest { template: template.into(), params, lane: Some(Lane::A), ..Default::default() };
    Ok(db::enqueue_run(pool, &req).await?)
}

async fn wait_status(pool: &PgPool, run: RunId, done: &[&str]) -> anyhow::Result<()> {
    loop {
        let status = db::get_run(pool, run).await?.status;
        if done.contains(&status.as_str()) {
            return Ok(());
        }
        let ended = ["succeeded", "failed", "cancelled"].contains(&status.as_str());
        anyhow::ensure!(!ended, "run {run} ended {status}, not {}", done.join(" or "));
        // Latencies come from the database's timestamps, not from this poll: a gentle one leaves the
        // two cores to the queue.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Enqueue → claim, by the database's own clock (created_at and claimed_at).
async fn pickup_latencies(pool: &PgPool, n: u32) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let run = enqueue(pool, "noop", json!({})).await?;
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

/// The process group of a `hold` step's given attempt, from the line it prints first.
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
        let run = enqueue(pool, "hold", json!({})).await?;
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

/// The `ticker` step prints `tick <unix ns>` every 20 ms; `runlane tail --json` runs beside it and
/// each line's age is taken when tail prints it.
async fn tail_latencies(bench: &Bench) -> anyhow::Result<Vec<f64>> {
    let run = enqueue(&bench.pool, "ticker", json!({})).await?;
    let mut tail = tokio::process::Command::new(std::env::current_exe()?)
        .args(["tail", "--json", &run.to_string()])
        .env("DATABASE_URL", &bench.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting runlane tail")?;
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().context("tail's stdout")?).lines();
    let mut out = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let seen = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let event: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("tail printed {line}"))?;
        if let Some(written) =
            event["body"].as_str().and_then(|b| b.strip_prefix("tick ")).and_then(|n| n.parse::<i64>().ok())
        {
            out.push((seen - written) as f64 / 1e6);
        }
    }
    let status = tail.wait().await?;
    anyhow::ensure!(status.success(), "runlane tail exited {status}");
    anyhow::ensure!(out.len() == 100, "tail showed {} of 100 ticks", out.len());
    Ok(out)
}

/// One shell step printing `lines` lines: lines stored per second, from the claim (which starts the
/// step) to the commit that finished it, after checking every line is there.
async fn log_lines_per_s(pool: &PgPool, lines: u32) -> anyhow::Result<f64> {
    let run = enqueue(pool, "chatty", json!({"lines": lines})).await?;
    wait_status(pool, run, &["succeeded"]).await?;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runlane.run_events WHERE run_id = $1 AND kind = 'step.output'")
            .bind(run)
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(stored == i64::from(lines), "{stored} of {lines} lines stored");
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at - started_at)::float8 FROM runlane.run_steps WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    Ok(f64::from(lines) / secs)
}

/// `runlane worker` as a child process of this one, on the bench's database.
fn spawn_worker(url: &str, name: &str, lease_ms: u64) -> std::io::Result<std::process::Child> {
    std::process::Command::new(std::env::current_exe()?)
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("RUNLANE__WORKER__LEASE_MS", lease_ms.to_string())
        .env("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", (lease_ms / 3).max(100).to_string())
        .env("RUNLANE__WORKER__LISTEN", "127.0.0.1:0")
        .env("RUNLANE__WORKER__HOST", name)
        .env("RUNLANE__SWEEPER__INTERVAL_MS", "250")
        .env("RUNLANE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// A worker process with the default settings, registered and idle for two seconds: VmRSS.
async fn idle_rss_mib(url: &str) -> anyhow::Result<f64> {
    let pool = db::connect(url, 1, "runlane-bench-rss").await?;
    let mut worker = spawn_worker(url, "bench-idle", 15_000)?;
    while !db::list_workers(&pool).await?.iter().any(|w| w.host == "bench-idle") {
        anyhow::ensure!(worker.try_wait()?.is_none(), "the idle worker exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.id()))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let _ = worker.kill();
    let _ = worker.wait();
    pool.close().await;
    Ok(kib / 1024.0)
}

/// kill -9 of the worker process running a step → the run's next attempt running in another.
async fn recovery(bench: &Bench, lease_ms: u64) -> anyhow::Result<f64> {
    let pool = &bench.pool;
    let mut first = spawn_worker(&bench.url, "bench-doomed", lease_ms)?;
    let run = enqueue(pool, "hold", json!({})).await?;
    let orphan = step_pgid(pool, run, 1).await?;
    let mut second = spawn_worker(&bench.url, "bench-survivor", lease_ms)?;
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
    // The killed worker could not stop its step: its process group outlives it.
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{orphan}")]).status();
    Ok(secs)
}
