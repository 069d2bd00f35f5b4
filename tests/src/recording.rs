//! A broker in memory that records every call and answers as the test scripts it: the batcher, a
//! run's writer and lease keeping are driven step by step with tokio's paused clock, no database
//! and no wall-clock wait. (What a real queue answers is pinned by the tests against PostgreSQL and
//! the executor API; this one only has to be predictable.)

use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::Broker;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{OpOutcome, RunOps};
use runlane_core::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{Semaphore, mpsc};

/// How the broker answers a lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewals {
    /// Renewed; `cancel_requested` as given.
    Answer { cancel_requested: bool },
    /// No answer ever comes (a dead connection).
    Hang,
    /// The queue is unreachable.
    Fail,
}

/// One call the broker received, with what it carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Renewal(Lease),
    Ops(Vec<RunOps>),
}

#[derive(Debug)]
pub struct RecordingBroker {
    calls: Mutex<Vec<Call>>,
    renewals: Mutex<Renewals>,
    /// Each `apply_ops` call takes a permit before it answers: a test holds calls in flight by
    /// giving none, and lets them through one by one.
    ops_gate: Semaphore,
    /// Each run's last seq handed out.
    seqs: Mutex<HashMap<RunId, i64>>,
}

impl RecordingBroker {
    /// Renewals answered (no cancel), `apply_ops` answered at once.
    pub fn new() -> Self {
        RecordingBroker {
            calls: Mutex::default(),
            renewals: Mutex::new(Renewals::Answer { cancel_requested: false }),
            ops_gate: Semaphore::new(Semaphore::MAX_PERMITS),
            seqs: Mutex::default(),
        }
    }

    /// `apply_ops` calls wait until [`RecordingBroker::let_through`] lets them answer.
    pub fn holding_ops() -> Self {
        RecordingBroker { ops_gate: Semaphore::new(0), ..RecordingBroker::new() }
    }

    /// Lets `n` held `apply_ops` calls answer.
    pub fn let_through(&self, n: usize) {
        self.ops_gate.add_permits(n);
    }

    pub fn set_renewals(&self, r: Renewals) {
        *self.renewals.lock().expect("renewals") = r;
    }

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The `apply_ops` calls so far, each as its items.
    pub fn batches(&self) -> Vec<Vec<RunOps>> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Ops(items) => Some(items),
                Call::Renewal(_) => None,
            })
            .collect()
    }

    pub fn renewals(&self) -> usize {
        self.calls().iter().filter(|c| matches!(c, Call::Renewal(_))).count()
    }

    fn record(&self, call: Call) {
        self.calls.lock().expect("calls").push(call);
    }

    /// Applied, with seqs handed out in order per run; an ending leaves the run `succeeded`,
    /// `failed` or `cancelled` as asked (an interrupted one `queued`).
    fn answer(&self, i: usize, item: &RunOps) -> OpOutcome {
        let mut seqs = self.seqs.lock().expect("seqs");
        let seq = seqs.entry(item.lease.run_id).or_insert(2);
        let writes = item.events.len()
            + usize::from(item.finish.is_some())
            + usize::from(item.start.is_some())
            + usize::from(item.complete.is_some());
        *seq += writes as i64;
        let status = item.complete.as_ref().map(|c| match c.outcome {
            Outcome::Interrupted => "queued".to_string(),
            other => other.as_str().to_string(),
        });
        OpOutcome { item: i as i32 + 1, code: "ok".into(), last_seq: Some(*seq), status, message: None }
    }
}

impl Default for RecordingBroker {
    fn default() -> Self {
        RecordingBroker::new()
    }
}

fn unused(what: &str) -> Error {
    Error::Schema(format!("the recording broker does not answer {what}"))
}

impl Broker for RecordingBroker {
    async fn register_worker(&self, _reg: &WorkerRegistration) -> Result<WorkerId> {
        Err(unused("register_worker"))
    }

    async fn worker_heartbeat(&self, _worker: WorkerId, _state: WorkerState, _update: &WorkerUpdate) -> Result<()> {
        Err(unused("worker_heartbeat"))
    }

    async fn claim_runs(
        &self,
        _worker: WorkerId,
        _lanes: &[Lane],
        _limit: u32,
        _session: Option<SessionId>,
    ) -> Result<Vec<ClaimedRun>> {
        Err(unused("claim_runs"))
    }

    async fn heartbeat_run(&self, lease: Lease) -> Result<HeartbeatReply> {
        self.record(Call::Renewal(lease));
        let mode = *self.renewals.lock().expect("renewals");
        match mode {
            Renewals::Answer { cancel_requested } => Ok(HeartbeatReply { cancel_requested }),
            Renewals::Hang => std::future::pending().await,
            Renewals::Fail => Err(Error::Unavailable("the queue is unreachable (test)".into())),
        }
    }

    async fn apply_ops(&self, items: &[RunOps]) -> Result<Vec<OpOutcome>> {
        self.record(Call::Ops(items.to_vec()));
        self.ops_gate.acquire().await.expect("gate open").forget();
        Ok(items.iter().enumerate().map(|(i, item)| self.answer(i, item)).collect())
    }

    async fn put_artifact(&self, _lease: Lease, artifact: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        Err(ArtifactError::Queue { name: artifact.name.to_string(), source: unused("put_artifact") })
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        Err(unused("lane_stats"))
    }

    async fn fleet_id(&self) -> Result<uuid::Uuid> {
        Err(unused("fleet_id"))
    }

    async fn running_attempts(&self, _runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
        Err(unused("running_attempts"))
    }

    async fn subscribe(&self, _lanes: &[Lane]) -> Result<mpsc::Receiver<Notice>> {
        Err(unused("subscribe"))
    }
}

/// A lease for a made-up run.
pub fn lease() -> Lease {
    Lease { run_id: RunId(uuid::Uuid::now_v7()), token: uuid::Uuid::new_v4() }
}
