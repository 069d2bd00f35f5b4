//! What workers send and read: registration and liveness, claims, lease renewals, batches of
//! runs' writes, running attempts, artifact uploads, notices.

use crate::broker::MAX_CLAIM;
use crate::model::{ArtifactId, ClaimedRun, Lane, RunId, SessionId, WorkerId, WorkerState, WorkerUpdate};
use crate::ops::{MAX_BATCH_ITEMS, OpOutcome, RunOps};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use uuid::Uuid;

/// The answer to `POST /v1/workers` (201).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRegistered {
    pub worker_id: WorkerId,
}

/// `POST /v1/workers/{worker_id}/heartbeat`: liveness, and what changed (absent: unchanged).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerHeartbeat {
    pub state: WorkerState,
    #[serde(flatten)]
    pub update: WorkerUpdate,
}

/// `GET /v1/notices`: the lanes to hear about, comma-separated (`A,B`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoticesQuery {
    pub lanes: String,
}

/// `POST /v1/claims`: up to `limit` runs of these lanes, each with its first step started.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub worker_id: WorkerId,
    pub lanes: Vec<Lane>,
    #[schemars(range(max = MAX_CLAIM))]
    pub limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
}

/// The runs a claim got (none when nothing is runnable).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ClaimedRuns {
    pub runs: Vec<ClaimedRun>,
}

/// `POST /v1/runs/{run_id}/heartbeat`: renews the lease (answered with a `HeartbeatReply`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunHeartbeat {
    pub lease: Uuid,
}

/// `POST /v1/ops`: many runs' items in one request and one commit. Borrowed when a worker sends
/// it, so a batch is not copied to be sent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsBatch<'a> {
    #[schemars(length(max = MAX_BATCH_ITEMS))]
    pub items: Cow<'a, [RunOps]>,
}

/// One answer per item of an `OpsBatch`, in order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OpsAnswers {
    pub outcomes: Vec<OpOutcome>,
}

/// `POST /v1/running-attempts`: which of these runs are running.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunIds {
    pub run_ids: Vec<RunId>,
}

/// The runs of a `RunIds` that are running, each with its current attempt.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunningAttempts {
    pub running: Vec<RunningAttempt>,
}

/// A running run and the attempt it is in (a worker reaps step containers of other attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunningAttempt {
    pub run_id: RunId,
    pub attempt: i32,
}

/// `GET /v1/fleet`: the fleet (database) the API serves; step containers are labelled with it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Fleet {
    pub fleet_id: Uuid,
}

/// `PUT /v1/runs/{run_id}/artifacts/{name}`; the body is the bytes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactUploadQuery {
    /// The run's lease token.
    pub lease: Uuid,
    /// The worker's id for the artifact, so a retried upload is recorded once.
    pub id: Option<ArtifactId>,
    pub step: Option<i32>,
    /// `application/octet-stream` if not given.
    pub content_type: Option<String>,
}

/// The answer to an upload (201).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactCreated {
    pub artifact_id: ArtifactId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lease, WorkerRegistration};
    use serde_json::json;

    #[test]
    fn worker_calls_travel_without_absent_parts() {
        let beat = WorkerHeartbeat { state: WorkerState::Draining, update: WorkerUpdate::default() };
        assert_eq!(serde_json::to_value(&beat).expect("json"), json!({"state": "draining"}));
        let claim = ClaimRequest { worker_id: WorkerId(Uuid::nil()), lanes: vec![Lane::B], limit: 3, session_id: None };
        assert_eq!(
            serde_json::to_value(&claim).expect("json"),
            json!({"worker_id": Uuid::nil(), "lanes": ["B"], "limit": 3})
        );
    }

    #[test]
    fn worker_calls_refuse_unknown_fields_and_take_their_defaults() {
        let beat: WorkerHeartbeat = serde_json::from_value(json!({"state": "active", "slots": 2})).expect("beat");
        assert_eq!(beat.update, WorkerUpdate { slots: Some(2), ..Default::default() });
        assert!(serde_json::from_value::<WorkerHeartbeat>(json!({"state": "active", "colour": 1})).is_err());
        let reg: WorkerRegistration =
            serde_json::from_value(json!({"host": "h", "lanes": ["A"], "slots": 1, "version": "v", "lease_ms": 500}))
                .expect("registration");
        assert!(reg.capabilities.is_empty() && reg.kill_grace_ms == 0);
    }

    #[test]
    fn a_borrowed_batch_reads_back_as_sent() {
        let lease = Lease { run_id: RunId(Uuid::nil()), token: Uuid::nil() };
        let items = [RunOps { lease, op: 1, events: vec![], finish: None, start: Some(1), complete: None }];
        let sent = serde_json::to_string(&OpsBatch { items: Cow::Borrowed(&items) }).expect("json");
        let read: OpsBatch<'static> = serde_json::from_str(&sent).expect("batch");
        assert_eq!(read.items.as_ref(), &items);
    }
}
