//! `runlane demo`: a whole fleet on this machine. Starts a throwaway PostgreSQL under `.runlane/`
//! (from `initdb`/`pg_ctl` on PATH), migrates, applies templates/, starts a worker and the executor
//! API, enqueues a sample run in every lane and tails them. `--once` exits 0 when every sample run succeeded;
//! without it the worker keeps serving until Ctrl-C.

use super::tail::{follow, print_event};
use anyhow::Context;
use runlane_core::db;
use runlane_core::local_pg::{LocalPg, LocalPgOptions};
use runlane_core::model::{EnqueueRequest, Lane, RunId, RunStatus, SessionId};
use runlane_core::settings::Settings;
use runlane_core::templates;
use runlane_worker::daemon::Daemon;
use runlane_worker::worker::{Capacity, Shutdown};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exit when the sample runs are done: 0 if all succeeded
    #[arg(long)]
    once: bool,
    /// Where the throwaway PostgreSQL, work directories and artifacts live
    #[arg(long, default_value = ".runlane")]
    dir: PathBuf,
    /// Template directory to apply
    #[arg(long, default_value = "templates")]
    templates: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let templates = templates::load_dir(&args.templates).map_err(anyhow::Error::msg)?;
    println!("starting PostgreSQL under {} …", args.dir.display());
    let pg_dir = args.dir.join("pg");
    let pg = tokio::task::spawn_blocking(move || {
        let pg = LocalPg::start(&pg_dir, &LocalPgOptions::default())?;
        pg.create_database("runlane")?;
        Ok::<_, std::io::Error>(pg)
    })
    .await?
    .context("starting the demo's PostgreSQL")?;
    if let Some(note) = pg.relocation() {
        println!("note: {note}");
    }
    let url = pg.url("runlane");
    let pool = db::connect(&url, 20, "runlane-demo").await?;
    let (from, to) = db::migrate(&pool).await?;
    println!("PostgreSQL at {url} (schema {from} → {to})");
    for t in &templates {
        let v = db::apply_template(&pool, &t.name, &t.spec)
            .await
            .with_context(|| format!("applying {}", t.source.display()))?;
        println!("template {} v{v}", t.name);
    }

    let mut settings = Settings::default();
    settings.worker.listen = "127.0.0.1:0".into();
    settings.worker.work_dir = std::path::absolute(args.dir.join("work"))?;
    settings.worker.heartbeat_interval_ms = 1_000;
    settings.worker.lease_ms = 5_000;
    settings.artifacts.local_dir = std::path::absolute(args.dir.join("artifacts"))?;
    let shutdown = Shutdown::default();
    let (_capacity_tx, capacity) = watch::channel(Capacity { lanes: Lane::ALL.to_vec(), slots: 4 });
    let daemon = Daemon::start(settings, pool.clone(), shutdown.clone(), capacity).await.map_err(anyhow::Error::msg)?;

    let api_stop = tokio_util::sync::CancellationToken::new();
    let api_state = runlane_executor_api::state(&Settings::default(), pool.clone(), api_stop.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let (api_addr, api_task) = runlane_executor_api::serve(api_state, "127.0.0.1:0", api_stop.clone()).await?;
    let token = runlane_executor_api::auth::new_token();
    db::create_token(&pool, "demo", "operator", None, None, &runlane_executor_api::auth::token_hash(&token)).await?;
    println!("executor API at http://{api_addr} (operator token {token})");
    let docker = daemon.metrics.docker_available.get() == 1 && prepare_docker_image().await;
    let session = db::create_session(&pool, "demo").await?;
    let health = format!("http://{}/healthz", daemon.health_addr);
    let samples = [
        ("hello", Lane::A, json!({"who": "operator"})),
        ("health-probe", Lane::B, json!({"url": health})),
        ("db-backup", Lane::C, json!({"database": "orders", "password": "s3cr3t-demo-password"})),
        ("noop", Lane::D, json!({})),
        ("docker-smoke", Lane::D, json!({"greeting": "hello"})),
    ];
    let mut runs: Vec<(RunId, String)> = Vec::new();
    for (template, lane, params) in samples {
        if !templates.iter().any(|t| t.name == template) || (template == "docker-smoke" && !docker) {
            continue;
        }
        let run = enqueue(&pool, template, lane, params, session).await?;
        println!("enqueued {template} in lane {lane}: {run}");
        runs.push((run, format!("[{lane} {template}]")));
    }
    let statuses = tail_all(&pool, &runs).await?;
    let all_ok = statuses.iter().all(|s| *s == RunStatus::Succeeded);
    println!("\nsummary:");
    for ((run, label), status) in runs.iter().zip(&statuses) {
        println!("  {label:<22} {run}  {status}");
    }
    if !args.once {
        println!(
            "\nthe worker keeps serving (health: {health}). In another terminal:\n  \
             DATABASE_URL={url} runlane enqueue hello --param who=you\n  \
             DATABASE_URL={url} runlane tail RUN_ID\n  \
             curl -H 'Authorization: Bearer {token}' http://{api_addr}/v1/runs\n\
             Ctrl-C stops the worker, the API and PostgreSQL."
        );
        tokio::signal::ctrl_c().await?;
    }
    shutdown.stop_claiming.cancel();
    api_stop.cancel();
    let _ = api_task.await;
    daemon.wait().await.map_err(anyhow::Error::msg)?;
    pool.close().await;
    tokio::task::spawn_blocking(move || pg.stop()).await??;
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn enqueue(
    pool: &sqlx::PgPool,
    template: &str,
    lane: Lane,
    params: serde_json::Value,
    session: SessionId,
) -> anyhow::Result<RunId> {
    let req = EnqueueRequest {
        template: template.into(),
        params,
        lane: Some(lane),
        session_id: Some(session),
        ..Default::default()
    };
    Ok(db::enqueue_run(pool, &req).await?)
}

/// Follows every run at once, each line labelled; returns their final statuses in order.
async fn tail_all(pool: &sqlx::PgPool, runs: &[(RunId, String)]) -> anyhow::Result<Vec<RunStatus>> {
    let mut tasks = Vec::new();
    for (run, label) in runs.iter().cloned() {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move { follow(&pool, run, 0, |e| print_event(e, false, Some(&label))).await }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    Ok(statuses)
}

/// The image the docker sample uses, imported from a static busybox (no registry needed).
const DEMO_IMAGE: &str = "runlane-busybox:latest";
const BUSYBOX: &str = "/bin/busybox";

/// Imports the demo image when missing; false (with a note) when it cannot be had here.
async fn prepare_docker_image() -> bool {
    let docker = match runlane_worker::containers::connect(&Default::default()).await {
        Ok(d) => d,
        Err(_) => return false,
    };
    if docker.inspect_image(DEMO_IMAGE).await.is_ok() {
        return true;
    }
    match runlane_worker::containers::import_busybox_image(&docker, DEMO_IMAGE, std::path::Path::new(BUSYBOX)).await {
        Ok(()) => {
            println!("imported {DEMO_IMAGE} from {BUSYBOX}");
            true
        }
        Err(e) => {
            println!("skipping the docker sample: {e} (install a static busybox, e.g. Debian's busybox-static)");
            false
        }
    }
}
