//! The `Broker` seam: everything a worker asks of the queue. PostgreSQL directly is [`PgBroker`];
//! the executor API over HTTPS is the other implementation, so a worker needs no database
//! credentials. Every call about a run is fenced by its lease: a stale one is `Error::LeaseLost`.

use crate::artifacts::{ArtifactBytes, ArtifactError, ArtifactStore};
use crate::db;
use crate::error::Result;
use crate::model::*;
use crate::notices::{self, CANCEL_CHANNEL, Notice, lane_channel};
use crate::ops::{OpOutcome, RunOps};
use sqlx::PgPool;
use std::future::Future;
use tokio::sync::mpsc;

/// Runs one claim takes at most (the executor API refuses more; a worker with more free slots
/// claims again).
pub const MAX_CLAIM: u32 = 1000;

/// The worker's view of the queue. Every call about a run is safe to repeat after a lost reply.
pub trait Broker: Send + Sync + 'static {
    fn register_worker(&self, reg: &WorkerRegistration) -> impl Future<Output = Result<WorkerId>> + Send;
    fn worker_heartbeat(
        &self,
        worker: WorkerId,
        state: WorkerState,
        update: &WorkerUpdate,
    ) -> impl Future<Output = Result<()>> + Send;
    fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> impl Future<Output = Result<Vec<ClaimedRun>>> + Send;
    fn heartbeat_run(&self, lease: Lease) -> impl Future<Output = Result<HeartbeatReply>> + Send;
    /// Applies many runs' items in one call and one commit, each fenced by its own lease and
    /// answered on its own (in order). The call's own error (the queue unreachable) is the outer one.
    fn apply_ops(&self, items: &[RunOps]) -> impl Future<Output = Result<Vec<OpOutcome>>> + Send;
    /// Stores an artifact's bytes where this broker keeps them (inline or in the object store, by
    /// size) and records it.
    fn put_artifact(
        &self,
        lease: Lease,
        artifact: &ArtifactBytes<'_>,
    ) -> impl Future<Output = Result<ArtifactId, ArtifactError>> + Send;
    fn lane_stats(&self) -> impl Future<Output = Result<Vec<LaneStats>>> + Send;
    /// The fleet (database) this broker serves; step containers are labelled with it.
    fn fleet_id(&self) -> impl Future<Output = Result<uuid::Uuid>> + Send;
    /// Of these runs, the ones running now, with their current attempt (orphan reaping).
    fn running_attempts(&self, runs: &[RunId]) -> impl Future<Output = Result<Vec<(RunId, i32)>>> + Send;
    /// Notices for these lanes and for cancellations, until the receiver is dropped.
    fn subscribe(&self, lanes: &[Lane]) -> impl Future<Output = Result<mpsc::Receiver<Notice>>> + Send;
}

/// The queue reached through a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgBroker {
    /// Cloning shares the pool.
    pool: PgPool,
    /// Where large artifacts' bytes go.
    artifacts: ArtifactStore,
}

impl PgBroker {
    pub fn new(pool: PgPool, artifacts: ArtifactStore) -> Self {
        PgBroker { pool, artifacts }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Broker for PgBroker {
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<WorkerId> {
        db::register_worker(&self.pool, reg).await
    }

    async fn worker_heartbeat(&self, worker: WorkerId, state: WorkerState, update: &WorkerUpdate) -> Result<()> {
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

    async fn apply_ops(&self, items: &[RunOps]) -> Result<Vec<OpOutcome>> {
        db::apply_ops(&self.pool, items).await
    }

    async fn put_artifact(&self, lease: Lease, artifact: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        self.artifacts.save(&self.pool, lease, artifact).await
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        db::lane_stats(&self.pool).await
    }

    async fn fleet_id(&self) -> Result<uuid::Uuid> {
        db::fleet_id(&self.pool).await
    }

    async fn running_attempts(&self, runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
        db::running_attempts(&self.pool, runs).await
    }

    async fn subscribe(&self, lanes: &[Lane]) -> Result<mpsc::Receiver<Notice>> {
        let mut channels: Vec<String> = lanes.iter().map(|l| lane_channel(*l)).collect();
        channels.push(CANCEL_CHANNEL.to_string());
        Ok(notices::listen(&self.pool, &channels, 1024).await?)
    }
}
