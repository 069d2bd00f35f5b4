//! A broker whose replies get lost, in front of a real one: a batch holding an item seen for the
//! first time (or an artifact uploaded for the first time) is carried out by the real broker, and then
//! answered with a connection error, as when the reply is lost on its way back. It can also refuse
//! every step finish (as a conflict) without carrying it out.

use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::Broker;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{OpOutcome, RunOps};
use runlane_core::{Error, Result};
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct LossyBroker<B> {
    inner: B,
    lose_replies: bool,
    refuse_finishes: bool,
    /// Items (run, op) and artifacts already answered with a lost reply.
    seen: Mutex<HashSet<String>>,
    /// Replies lost so far.
    pub lost: Mutex<u32>,
}

fn lost_reply() -> Error {
    Error::Unavailable("the reply was lost (test)".into())
}

impl<B: Broker> LossyBroker<B> {
    /// `lose_replies`: lose the first reply for every item and artifact; `refuse_finishes`: answer
    /// every item that finishes a step with a conflict.
    pub fn new(inner: B, lose_replies: bool, refuse_finishes: bool) -> Self {
        LossyBroker { inner, lose_replies, refuse_finishes, seen: Mutex::default(), lost: Mutex::default() }
    }

    /// Whether `key` is new (then it is remembered).
    fn first_time(&self, key: String) -> bool {
        self.lose_replies && self.seen.lock().expect("seen").insert(key)
    }

    fn count_lost(&self) {
        *self.lost.lock().expect("lost") += 1;
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

    async fn apply_ops(&self, items: &[RunOps]) -> Result<Vec<OpOutcome>> {
        let refused = |item: &RunOps| self.refuse_finishes && item.finish.is_some();
        let passed: Vec<RunOps> = items.iter().filter(|i| !refused(i)).cloned().collect();
        let mut answers = self.inner.apply_ops(&passed).await?.into_iter();
        let outcomes = items
            .iter()
            .enumerate()
            .map(|(n, item)| {
                let mut outcome = if refused(item) {
                    OpOutcome {
                        item: 0,
                        code: "RL409".into(),
                        last_seq: None,
                        status: None,
                        message: Some("finish refused (test)".into()),
                    }
                } else {
                    answers.next().expect("an answer per item")
                };
                outcome.item = n as i32 + 1;
                outcome
            })
            .collect();
        let new = items.iter().filter(|i| self.first_time(format!("{}:{}", i.lease.run_id, i.op))).count();
        if new > 0 {
            self.count_lost();
            return Err(lost_reply());
        }
        Ok(outcomes)
    }

    async fn put_artifact(&self, lease: Lease, artifact: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        let result = self.inner.put_artifact(lease, artifact).await;
        if result.is_ok() && self.first_time(artifact.id.to_string()) {
            self.count_lost();
            return Err(ArtifactError::Queue { name: artifact.name.to_string(), source: lost_reply() });
        }
        result
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
