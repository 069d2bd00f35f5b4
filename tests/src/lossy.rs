//! A broker whose replies get lost, in front of a real one: a call named lossy is carried out by the
//! real broker and then answered, the first time, with a connection error, as when the reply is
//! lost on its way back. A call named refused is answered with a conflict without being carried out.

use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::{Broker, Notice};
use runlane_core::model::*;
use runlane_core::{Error, Result};
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct LossyBroker<B> {
    inner: B,
    lossy: HashSet<&'static str>,
    refused: HashSet<&'static str>,
    /// Calls (name and arguments) whose reply was already lost once.
    lost: Mutex<HashSet<String>>,
    /// Every call made, in order, by name.
    pub calls: Mutex<Vec<&'static str>>,
}

fn lost_reply() -> Error {
    Error::Unavailable("the reply was lost (test)".into())
}

impl<B: Broker> LossyBroker<B> {
    pub fn new(inner: B, lossy: &[&'static str], refused: &[&'static str]) -> Self {
        LossyBroker {
            inner,
            lossy: lossy.iter().copied().collect(),
            refused: refused.iter().copied().collect(),
            lost: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// Whether this call's reply is to be lost now (the first time for these arguments).
    fn lose(&self, name: &'static str, key: String) -> bool {
        self.calls.lock().expect("calls").push(name);
        self.lossy.contains(name) && self.lost.lock().expect("lost").insert(format!("{name}:{key}"))
    }

    fn refuse(&self, name: &'static str) -> Result<()> {
        if self.refused.contains(name) { Err(Error::Conflict(format!("{name} refused (test)"))) } else { Ok(()) }
    }

    /// Carries the call out, then loses its reply if it is lossy.
    async fn pass<T>(&self, name: &'static str, key: String, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.refuse(name)?;
        let result = call.await;
        if result.is_ok() && self.lose(name, key) { Err(lost_reply()) } else { result }
    }
}

impl<B: Broker> Broker for LossyBroker<B> {
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<WorkerId> {
        self.inner.register_worker(reg).await
    }

    async fn worker_heartbeat(&self, worker: WorkerId, state: WorkerState, update: &WorkerUpdate) -> Result<()> {
        self.inner.worker_heartbeat(worker, state, update).await
    }

    async fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> Result<Vec<ClaimedRun>> {
        self.inner.claim_runs(worker, lanes, limit, session).await
    }

    async fn heartbeat_run(&self, lease: Lease) -> Result<HeartbeatReply> {
        self.inner.heartbeat_run(lease).await
    }

    async fn start_step(&self, lease: Lease, step: i32) -> Result<i64> {
        self.pass("start_step", format!("{step}"), self.inner.start_step(lease, step)).await
    }

    async fn finish_step(
        &self,
        lease: Lease,
        step: i32,
        status: StepStatus,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Result<i64> {
        self.pass("finish_step", format!("{step}"), self.inner.finish_step(lease, step, status, exit_code, error)).await
    }

    async fn append_events(&self, lease: Lease, batch: i32, events: &[NewEvent]) -> Result<i64> {
        self.pass("append_events", format!("{batch}"), self.inner.append_events(lease, batch, events)).await
    }

    async fn put_artifact(&self, lease: Lease, artifact: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        let queue = |e| ArtifactError::Queue { name: artifact.name.to_string(), source: e };
        self.refuse("put_artifact").map_err(queue)?;
        let result = self.inner.put_artifact(lease, artifact).await;
        if result.is_ok() && self.lose("put_artifact", artifact.id.to_string()) {
            return Err(queue(lost_reply()));
        }
        result
    }

    async fn complete_run(
        &self,
        lease: Lease,
        outcome: Outcome,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<RunStatus> {
        let call = self.inner.complete_run(lease, outcome, result, error);
        self.pass("complete_run", outcome.as_str().to_string(), call).await
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        self.inner.lane_stats().await
    }

    async fn fleet_id(&self) -> Result<uuid::Uuid> {
        self.inner.fleet_id().await
    }

    async fn running_attempts(&self, runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
        self.inner.running_attempts(runs).await
    }

    async fn subscribe(&self, lanes: &[Lane]) -> Result<mpsc::Receiver<Notice>> {
        self.inner.subscribe(lanes).await
    }
}
