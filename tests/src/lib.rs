//! # runlane-tests
//!
//! End-to-end, fleet and fault tests against a real PostgreSQL.
//!
//! # Layout
//! - this file: [`TestDb`], a fresh migrated database per test: its own throwaway cluster (from
//!   `initdb`/`pg_ctl` on PATH), or, when `DATABASE_URL` is set, a new database on that server.
//! - [`api`]: the executor API served in-process, and tokens for it.
//! - [`docker`]: the Docker engine for docker-step tests (a locally imported busybox image).
//! - [`lossy`]: a broker whose replies get lost (or whose calls are refused), in front of a real one.
//! - [`params_cases`]: one params schema per JSON-Schema keyword, with passing and failing params
//!   (the SQL, API and CLI tests of params run the same table).
//! - [`process`]: real `runlane worker` processes for fleet and fault tests (used from cli/tests/).
//! - [`proxy`]: a TCP proxy a test can cut, between a worker and its queue (PostgreSQL or the API).
//! - [`recording`]: a broker in memory that records every call and answers as scripted (the
//!   batcher, a run's writer and lease keeping under tokio's paused clock).
//! - [`retention`]: finished runs of a known age with artifacts in a real store (retention tests).
//! - [`templates`]: a bad value of every template policy field, with the problem it must be named by.
//! - `tests/`: one file per area (queue contract, executors …).

pub mod api;
pub mod docker;
pub mod lossy;
pub mod params_cases;
pub mod process;
pub mod proxy;
pub mod recording;
pub mod retention;
pub mod templates;

use runlane_core::artifacts::ArtifactStore;
use runlane_core::broker::PgBroker;
use runlane_core::db;
use runlane_core::local_pg::{LocalPg, LocalPgOptions};
use runlane_core::model::*;
use runlane_core::settings::ArtifactSettings;
use runlane_worker::batcher::{Batcher, BatcherOptions};
use runlane_worker::metrics::Metrics;
use runlane_worker::run_writer::{RunWriter, WriterOptions};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A fresh, migrated runlane database that lives as long as the test holds it.
#[derive(Debug)]
pub struct TestDb {
    /// The test's own cluster (None when DATABASE_URL pointed at a shared server).
    pub cluster: Option<LocalPg>,
    pub url: String,
    /// A superuser pool, for setting up and for checking what the SQL API wrote.
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let (cluster, url) = match std::env::var("DATABASE_URL") {
            Ok(base) => (None, shared_server_database(&base).await),
            Err(_) => {
                let dir = std::env::temp_dir().join(format!("runlane-test-{}", uuid::Uuid::new_v4().simple()));
                let opts = LocalPgOptions { fsync: false, max_connections: 200, remove_on_drop: true };
                let pg = tokio::task::spawn_blocking(move || {
                    let pg = LocalPg::start(&dir, &opts)?;
                    pg.create_database("runlane")?;
                    Ok::<_, std::io::Error>(pg)
                })
                .await
                .expect("cluster task")
                .expect("start a throwaway PostgreSQL");
                let url = pg.url("runlane");
                (Some(pg), url)
            }
        };
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.expect("connect");
        db::migrate(&pool).await.expect("migrate");
        TestDb { cluster, url, pool }
    }

    /// The cluster this test owns (fault tests restart it).
    pub fn cluster(&self) -> &LocalPg {
        self.cluster.as_ref().expect("this test needs its own cluster: unset DATABASE_URL")
    }

    /// A separate pool (its own connections), as a separate process would have.
    pub async fn new_pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new().max_connections(max_connections).connect(&self.url).await.expect("connect")
    }

    /// A broker over this database, keeping large artifacts in a store inside the test's cluster
    /// directory (or a temporary one on a shared server).
    pub fn broker(&self) -> PgBroker {
        let dir = match &self.cluster {
            Some(c) => c.dir().join("artifacts"),
            None => std::env::temp_dir().join(format!("runlane-test-store-{}", uuid::Uuid::new_v4().simple())),
        };
        let settings = ArtifactSettings { local_dir: dir, ..Default::default() };
        PgBroker::new(self.pool.clone(), ArtifactStore::from_settings(&settings).expect("artifact store"))
    }

    /// A run writer for `lease` over this database (its own batcher), as a run task has.
    pub fn run_writer(&self, lease: Lease, opts: WriterOptions, lease_lost: CancellationToken) -> RunWriter {
        let metrics = Arc::new(Metrics::default());
        let (batcher, _) = Batcher::spawn(Arc::new(self.broker()), BatcherOptions::default(), metrics.clone());
        RunWriter::spawn(batcher, lease, opts, lease_lost, metrics).0
    }

    /// Applies a template spec given as JSON.
    pub async fn apply(&self, name: &str, spec: serde_json::Value) -> i32 {
        db::apply_template(&self.pool, name, &spec).await.expect("apply template")
    }

    /// Applies a one-step no-op template named `noop`.
    pub async fn apply_noop(&self) {
        self.apply("noop", serde_json::json!({"steps": [{"name": "noop", "kind": "noop"}]})).await;
    }

    pub async fn enqueue(&self, template: &str, lane: Lane) -> RunId {
        let req = EnqueueRequest {
            template: template.into(),
            params: serde_json::json!({}),
            lane: Some(lane),
            ..Default::default()
        };
        db::enqueue_run(&self.pool, &req).await.expect("enqueue")
    }

    pub async fn register(&self, lanes: &[Lane], lease_ms: u32) -> WorkerId {
        let reg = WorkerRegistration {
            host: "test".into(),
            lanes: lanes.to_vec(),
            slots: 8,
            version: "test".into(),
            capabilities: vec![],
            lease_ms,
            kill_grace_ms: 0,
        };
        db::register_worker(&self.pool, &reg).await.expect("register worker")
    }

    pub async fn status(&self, run: RunId) -> String {
        db::get_run(&self.pool, run).await.expect("get run").status
    }

    /// Counts rows of a query returning one bigint.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("count query")
    }
}

async fn shared_server_database(base: &str) -> String {
    let name = format!("runlane_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new().max_connections(1).connect(base).await.expect("connect to DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    match base.rfind('/') {
        Some(i) if !base[..i].ends_with('/') => format!("{}/{name}", &base[..i]),
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    }
}
