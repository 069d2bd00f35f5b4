//! The bench's world: its own PostgreSQL (fsync on, as in production), the templates it runs, and
//! workers started in this process — over PostgreSQL, or behind an executor API served here too.

use anyhow::Context;
use runlane_core::db;
use runlane_core::local_pg::{LocalPg, LocalPgOptions};
use runlane_core::model::{EnqueueRequest, Lane, SessionId};
use runlane_core::settings::Settings;
use runlane_worker::daemon::Daemon;
use runlane_worker::http_broker::HttpBroker;
use runlane_worker::worker::{Capacity, Shutdown};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Bench {
    pg: LocalPg,
    pub url: String,
    pub pool: PgPool,
}

/// Workers started for one figure (and the API they reach the queue through, if any).
#[derive(Debug)]
pub struct Running {
    workers: Vec<(Daemon, Shutdown)>,
    api: Option<CancellationToken>,
}

impl Bench {
    pub async fn start() -> anyhow::Result<Bench> {
        let dir = std::env::temp_dir().join(format!("runlane-bench-{}", std::process::id()));
        let pg = tokio::task::spawn_blocking(move || {
            let opts = LocalPgOptions { fsync: true, max_connections: 300, remove_on_drop: true };
            let pg = LocalPg::start(&dir, &opts)?;
            pg.create_database("runlane")?;
            Ok::<_, std::io::Error>(pg)
        })
        .await?
        .context("starting the benchmark's PostgreSQL")?;
        let url = pg.url("runlane");
        let pool = db::connect(&url, 16, "runlane-bench").await?;
        db::migrate(&pool).await?;
        let templates = [
            ("noop", json!({"steps": [{"name": "noop", "kind": "noop"}]})),
            (
                "hold",
                json!({"steps": [{"name": "hold", "kind": "shell", "cancel_grace_ms": 5000,
                                  "command": "echo pgid $$ attempt $RUNLANE_ATTEMPT; exec sleep 300"}]}),
            ),
            (
                "chatty",
                json!({"params": {"type": "object", "properties": {"lines": {"type": "integer"}}},
                       "steps": [{"name": "seq", "kind": "shell", "command": "seq 1 ${{ params.lines }}"}]}),
            ),
            (
                "ticker",
                json!({"steps": [{"name": "tick", "kind": "shell",
                                  "command": "for i in $(seq 1 100); do echo \"tick $(date +%s%N)\"; sleep 0.02; done"}]}),
            ),
        ];
        for (name, spec) in templates {
            db::apply_template(&pool, name, &spec).await?;
        }
        Ok(Bench { pg, url, pool })
    }

    /// Enqueues `n` no-op runs over the four lanes (enqueue_runs, 5,000 a call) in a new session.
    pub async fn enqueue_noops(&self, n: u32) -> anyhow::Result<SessionId> {
        let session = db::create_session(&self.pool, "bench").await?;
        let reqs: Vec<EnqueueRequest> = (0..n)
            .map(|i| EnqueueRequest {
                template: "noop".into(),
                params: json!({}),
                lane: Some(Lane::ALL[i as usize % 4]),
                session_id: Some(session),
                ..Default::default()
            })
            .collect();
        for chunk in reqs.chunks(5_000) {
            db::enqueue_runs(&self.pool, chunk).await?;
        }
        Ok(session)
    }

    /// `count` workers of `slots` slots each; behind an executor API served here when `http`.
    pub async fn workers(&self, count: u32, slots: u32, http: bool) -> anyhow::Result<Running> {
        let mut running = Running { workers: Vec::new(), api: None };
        let api = if http { Some(self.api(&mut running).await?) } else { None };
        for i in 0..count {
            let mut s = Settings::default();
            s.worker.slots = slots;
            s.worker.listen = "127.0.0.1:0".into();
            s.worker.poll_interval_ms = 200;
            s.worker.host = Some(format!("bench-{i}"));
            s.sweeper.enabled = i == 0;
            s.artifacts.local_dir =
                std::env::temp_dir().join(format!("runlane-bench-artifacts-{}", std::process::id()));
            let shutdown = Shutdown::default();
            let (_tx, capacity) = watch::channel(Capacity { lanes: Lane::ALL.to_vec(), slots });
            let daemon = match &api {
                Some((base, token)) => {
                    let broker = Arc::new(HttpBroker::new(base, token).map_err(anyhow::Error::msg)?);
                    Daemon::start_with(s, broker, None, shutdown.clone(), capacity).await
                }
                None => {
                    let pool = db::connect(&self.url, 8, "runlane-bench-worker").await?;
                    Daemon::start(s, pool, shutdown.clone(), capacity).await
                }
            }
            .map_err(anyhow::Error::msg)?;
            running.workers.push((daemon, shutdown));
        }
        Ok(running)
    }

    /// The executor API on a free port with a worker token: (base URL, token).
    async fn api(&self, running: &mut Running) -> anyhow::Result<(String, String)> {
        let stop = CancellationToken::new();
        let mut settings = Settings::default();
        settings.api.rate_per_s = 1_000_000;
        settings.api.rate_burst = 1_000_000;
        settings.api.address_rate_per_s = 1_000_000;
        settings.api.address_rate_burst = 1_000_000;
        let pool = db::connect(&self.url, 32, "runlane-bench-api").await?;
        let state = runlane_executor_api::state(&settings, pool, stop.clone()).await.map_err(anyhow::Error::msg)?;
        let (addr, _task) = runlane_executor_api::serve(state, "127.0.0.1:0", stop.clone()).await?;
        let token = runlane_executor_api::auth::new_token();
        let hash = runlane_executor_api::auth::token_hash(&token);
        db::create_token(&self.pool, "bench", "worker", None, None, &hash).await?;
        running.api = Some(stop);
        Ok((format!("http://{addr}"), token))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let pg = self.pg;
        tokio::task::spawn_blocking(move || drop(pg)).await?;
        Ok(())
    }
}

impl Running {
    /// Drains the workers (they finish what they hold) and stops the API.
    pub async fn stop(self) {
        for (_, shutdown) in &self.workers {
            shutdown.stop_claiming.cancel();
        }
        for (daemon, _) in self.workers {
            let _ = daemon.wait().await;
        }
        if let Some(api) = self.api {
            api.cancel();
        }
    }
}
