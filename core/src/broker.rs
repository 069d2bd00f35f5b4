//! The `Broker` seam: everything a worker asks of the queue. PostgreSQL directly is [`PgBroker`];
//! the executor API over HTTPS is the other implementation, so a worker needs no database
//! credentials. Every call about a run is fenced by its lease: a stale one is `Error::LeaseLost`.

use crate::db::{self, NewArtifact};
use crate::error::Result;
use crate::model::*;
use sqlx::PgPool;
use std::future::Future;

/// The worker's view of the queue.
pub trait Broker: Send + Sync + 'static {
    fn register_worker(&self, reg: &WorkerRegistration) -> impl Future<Output = Result<WorkerId>> + Send;
    fn worker_heartbeat(
        &self,
        worker: WorkerId,
        state: WorkerState,
        update: Option<&WorkerRegistration>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> impl Future<Output = Result<Vec<ClaimedRun>>> + Send;
    fn heartbeat_run(&self, lease: Lease) -> impl Future<Output = Result<HeartbeatReply>> + Send;
    fn start_step(&self, lease: Lease, step: i32) -> impl Future<Output = Result<i64>> + Send;
    fn finish_step(
        &self,
        lease: Lease,
        step: i32,
        status: StepStatus,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> impl Future<Output = Result<i64>> + Send;
    fn append_events(&self, lease: Lease, events: &[NewEvent]) -> impl Future<Output = Result<i64>> + Send;
    fn put_artifact(&self, lease: Lease, artifact: &NewArtifact<'_>)
    -> impl Future<Output = Result<ArtifactId>> + Send;
    fn complete_run(
        &self,
        lease: Lease,
        outcome: Outcome,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> impl Future<Output = Result<RunStatus>> + Send;
    fn sweep(&self, opts: &SweepOptions) -> impl Future<Output = Result<SweepReport>> + Send;
}

/// The queue reached through a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgBroker {
    /// Cloning shares the pool.
    pool: PgPool,
}

impl PgBroker {
    pub fn new(pool: PgPool) -> Self {
        PgBroker { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Broker for PgBroker {
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<WorkerId> {
        db::register_worker(&self.pool, reg).await
    }

    async fn worker_heartbeat(
        &self,
        worker: WorkerId,
        state: WorkerState,
        update: Option<&WorkerRegistration>,
    ) -> Result<()> {
        db::worker_heartbeat(&self.pool, worker, state, update).await
    }

    async fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> Result<Vec<ClaimedRun>> {
        db::claim_runs(&self.pool, worker, lanes, limit, session).await
    }

    async fn heartbeat_run(&self, lease: Lease) -> Result<HeartbeatReply> {
        db::heartbeat_run(&self.pool, lease).await
    }

    async fn start_step(&self, lease: Lease, step: i32) -> Result<i64> {
        db::start_step(&self.pool, lease, step).await
    }

    async fn finish_step(
        &self,
        lease: Lease,
        step: i32,
        status: StepStatus,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Result<i64> {
        db::finish_step(&self.pool, lease, step, status, exit_code, error).await
    }

    async fn append_events(&self, lease: Lease, events: &[NewEvent]) -> Result<i64> {
        db::append_events(&self.pool, lease, events).await
    }

    async fn put_artifact(&self, lease: Lease, artifact: &NewArtifact<'_>) -> Result<ArtifactId> {
        db::put_artifact(&self.pool, lease, artifact).await
    }

    async fn complete_run(
        &self,
        lease: Lease,
        outcome: Outcome,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<RunStatus> {
        db::complete_run(&self.pool, lease, outcome, result, error).await
    }

    async fn sweep(&self, opts: &SweepOptions) -> Result<SweepReport> {
        db::sweep(&self.pool, opts).await
    }
}
