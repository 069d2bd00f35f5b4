//! What operators send and read about runs: a run created, listed, shown, cancelled, retried; its
//! events; its artifacts' download links.

use crate::db::StepRecord;
use crate::model::{ArtifactId, Event, Lane, RunId, RunRecord, RunStatus, SessionId};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/runs`: a run of a template. A `run_at` ahead waits as `scheduled`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    pub template: String,
    #[serde(default = "empty_object")]
    #[schemars(with = "Map<String, Value>")]
    pub params: Value,
    /// A lane name, in any case: the API parses it (its message names the lanes) and checks it
    /// against the token's lanes.
    #[schemars(with = "Option<Lane>")]
    pub lane: Option<String>,
    #[schemars(range(min = -100, max = 100))]
    pub priority: Option<i32>,
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    pub session_id: Option<SessionId>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// The answer to `POST /v1/runs` (201).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunCreated {
    pub run_id: RunId,
}

/// `POST /v1/runs` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCreateQuery {
    /// `true`: check the run as the enqueue would (the same errors) and answer what it would enqueue
    /// (200 `RunDryRun`), writing nothing.
    pub dry_run: Option<bool>,
}

/// The answer to `POST /v1/runs?dry_run=true` (200): the run as the enqueue would store and run it.
/// Nothing was written.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunDryRun {
    /// The run the idempotency key already names: the enqueue would return it and write nothing (the
    /// fields below then describe that run).
    pub existing_run_id: Option<RunId>,
    pub template: String,
    pub template_version: i32,
    #[schemars(with = "Lane")]
    pub lane: String,
    pub priority: i32,
    /// `queued`, or `scheduled` while `run_at` is ahead.
    #[schemars(with = "RunStatus")]
    pub status: String,
    pub run_at: DateTime<Utc>,
    /// With the template's defaults filled in; the values of secret params as `***`.
    #[schemars(with = "Map<String, Value>")]
    pub params: Value,
    pub secret_params: Vec<String>,
    /// Capabilities a worker needs to claim the run (`docker`).
    pub requires: Vec<String>,
    pub timeout_ms: i32,
    pub max_attempts: i32,
    pub steps: Vec<DryRunStep>,
}

/// One step of a dry run, as the worker would run it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DryRunStep {
    pub index: i32,
    pub name: String,
    pub kind: String,
    /// Every key the worker reads for this step (defaults included, unset ones left out), with
    /// `${{ params.x }}` filled in as the worker fills it: secret values show as `***`.
    #[schemars(with = "Map<String, Value>")]
    pub spec: Value,
    /// Why the worker would fail this step before starting it (a placeholder naming no param).
    pub problem: Option<String>,
}

/// `GET /v1/runs`: filters, newest first, paged by `before` (the previous page's `next_before`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunListQuery {
    /// Checked by the API, so an unknown status is a 422 naming the known ones.
    #[schemars(with = "Option<RunStatus>")]
    pub status: Option<String>,
    #[schemars(with = "Option<Lane>")]
    pub lane: Option<String>,
    pub template: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub before: Option<RunId>,
    /// 1–500, 50 if not given.
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<i64>,
}

/// A page of runs; `next_before` is set when the page is full.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<RunRecord>,
    pub next_before: Option<RunId>,
}

/// `GET /v1/runs/{run_id}`: the run with the steps of all its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Run")]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRecord,
    pub steps: Vec<RunStep>,
}

/// One step of one attempt of a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunStep {
    pub attempt: i32,
    pub idx: i32,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<StepRecord> for RunStep {
    fn from(s: StepRecord) -> Self {
        let StepRecord { attempt, idx, name, kind, status, exit_code, error, started_at, finished_at } = s;
        RunStep { attempt, idx, name, kind, status, exit_code, error, started_at, finished_at }
    }
}

/// `POST /v1/runs/{run_id}/cancel`; the body is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

/// The run's status after a cancel (`cancelled`, `cancel_requested` or the finished status) or a
/// retry (`queued`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StatusReply {
    pub status: String,
}

/// `GET /v1/runs/{run_id}/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPageQuery {
    /// The seq of the last event the client has (0 if not given).
    pub after: Option<i64>,
    /// 1–5000, 500 if not given.
    #[schemars(range(min = 1, max = 5000))]
    pub limit: Option<i64>,
}

/// A page of events; `next_after` is the `after` of the next page.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next_after: i64,
}

/// `GET /v1/runs/{run_id}/events/stream` (a `Last-Event-ID` header wins over `after`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventStreamQuery {
    pub after: Option<i64>,
}

/// A run's artifacts, each with a download URL that expires.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactLink>,
}

/// An artifact and where to download it: presigned by the object store, or signed by the API
/// (a path on the API, `expires_at` in Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactLink {
    pub id: ArtifactId,
    pub attempt: i32,
    pub step: Option<i32>,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    pub url: String,
    pub expires_at: i64,
}

/// `GET /v1/artifacts/{artifact_id}`: the signature of a URL the API signed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedUrlQuery {
    pub expires: i64,
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_run_takes_empty_params_and_refuses_unknown_fields() {
        let run: RunCreate = serde_json::from_value(json!({"template": "t"})).expect("run");
        assert_eq!(run.params, json!({}));
        assert!(serde_json::from_value::<RunCreate>(json!({"template": "t", "colour": "red"})).is_err());
    }
}
