//! The queue's vocabulary: ids, lanes, statuses, and the records that cross the Broker seam.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[derive(schemars::JsonSchema)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        #[schemars(inline)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A run's id (uuid v7, time-ordered).
    RunId
);
id_type!(
    /// A worker process's id: fresh at every process start.
    WorkerId
);
id_type!(
    /// An operator's group of runs (a demo, a benchmark, a deploy train).
    SessionId
);
id_type!(
    /// A stored artifact's id.
    ArtifactId
);

/// One of the four lanes. Stored as its letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Lane {
    A,
    B,
    C,
    D,
}

impl Lane {
    /// Every lane, in name order.
    pub const ALL: [Lane; 4] = [Lane::A, Lane::B, Lane::C, Lane::D];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::A => "A",
            Lane::B => "B",
            Lane::C => "C",
            Lane::D => "D",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "A" => Ok(Lane::A),
            "B" => Ok(Lane::B),
            "C" => Ok(Lane::C),
            "D" => Ok(Lane::D),
            _ => Err(format!("unknown lane '{s}' (lanes: A, B, C, D)")),
        }
    }
}

/// Where a run is in its life cycle. Stored as snake_case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Due later (a `run_at` ahead, a retry's backoff): out of the claim's way until the sweeper
    /// promotes it.
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Scheduled => "scheduled",
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Succeeded, failed or cancelled: nothing will happen to the run unless it is retried.
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduled" => Ok(RunStatus::Scheduled),
            "queued" => Ok(RunStatus::Queued),
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            "cancelled" => Ok(RunStatus::Cancelled),
            other => Err(format!("unknown run status '{other}'")),
        }
    }
}

/// How a worker ends its attempt at a run (`complete_run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Queued again after a backoff while attempts remain, else failed.
    Failed,
    Cancelled,
    /// Handed back by a draining worker: queued at once, no attempt used.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// How a step ended (`finish_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Cancelled => "cancelled",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// A worker's state as recorded in `workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Active,
    Draining,
    Gone,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
            WorkerState::Gone => "gone",
        }
    }
}

/// The claim token on a running run: every write about the run carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lease {
    pub run_id: RunId,
    pub token: Uuid,
}

/// A run as handed to the worker that claimed it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ClaimedRun {
    pub run_id: RunId,
    pub lease: Uuid,
    pub lease_expires_at: DateTime<Utc>,
    pub lane: String,
    pub attempt: i32,
    pub template: String,
    pub template_version: i32,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub params: serde_json::Value,
    pub secret_params: Vec<String>,
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub steps: serde_json::Value,
    pub timeout_ms: i32,
    pub session_id: Option<SessionId>,
}

impl ClaimedRun {
    pub fn lease(&self) -> Lease {
        Lease { run_id: self.run_id, token: self.lease }
    }
}

/// The answer to a run heartbeat whose lease still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatReply {
    pub cancel_requested: bool,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// An event a lease holder appends (`append_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewEvent {
    #[schemars(regex(pattern = r"^[a-z]+(\.[a-z_]+)+$"))]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl NewEvent {
    /// A `step.output` line.
    pub fn output(step: i32, stream: Stream, line: impl Into<String>) -> Self {
        NewEvent {
            kind: "step.output".into(),
            step: Some(step),
            stream: Some(stream),
            body: Some(line.into()),
            data: None,
        }
    }
}

/// A stored event, as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct Event {
    pub run_id: RunId,
    pub seq: i64,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<i32>,
    pub stream: Option<String>,
    pub body: Option<String>,
    pub data: Option<serde_json::Value>,
}

/// What a worker tells the queue about itself at start.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    pub host: String,
    pub lanes: Vec<Lane>,
    #[schemars(range(min = 1))]
    pub slots: u32,
    pub version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[schemars(range(min = 100))]
    pub lease_ms: u32,
    /// How long the worker may take, after giving a lease up, to stop the run's processes: the
    /// sweeper waits this long past the lease's expiry before the run may start elsewhere.
    #[serde(default)]
    pub kill_grace_ms: u32,
}

/// What changed about a worker since it registered (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes: Option<Vec<Lane>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub slots: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
}

/// A request to run a template.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnqueueRequest {
    pub template: String,
    pub params: serde_json::Value,
    pub lane: Option<Lane>,
    pub priority: Option<i32>,
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    pub session_id: Option<SessionId>,
}

/// What an enqueue would do (`dry_run_enqueue`): the run as it would be stored, nothing written.
/// `core::dry_run` renders its steps.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnqueuePreview {
    /// The run the idempotency key already names (the enqueue would return it); the other fields
    /// then describe that run.
    pub existing_run: Option<RunId>,
    pub template: String,
    pub version: i32,
    pub lane: String,
    pub priority: i32,
    /// `queued`, or `scheduled` when due later (an existing run: its own status).
    pub status: String,
    pub run_at: DateTime<Utc>,
    /// Defaults filled in, secret values as `***`.
    pub params: serde_json::Value,
    pub secret_params: Vec<String>,
    pub requires: Vec<String>,
    pub timeout_ms: i32,
    pub max_attempts: i32,
    /// As frozen into the run, placeholders unfilled.
    pub steps: serde_json::Value,
}

/// A sweeper pass as of another time, or with another policy: the owner's (and tests') call. Every
/// `None` takes the fleet's own (`now()`, and the policy set by `set_sweep_policy`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepOptions {
    pub now: Option<DateTime<Utc>>,
    pub worker_timeout_s: Option<u64>,
    pub deadline_slack_s: Option<u64>,
}

/// A prune as of another time, or with another retention or limit: the owner's (and tests') call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneOptions {
    pub now: Option<DateTime<Utc>>,
    pub retention_s: Option<u64>,
    pub limit: Option<u32>,
}

/// The fleet's sweeper policy (`sweep_policy()`), set by the database owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SweepPolicy {
    pub retention_s: i64,
    pub worker_timeout_s: i64,
    pub deadline_slack_s: i64,
    pub prune_limit: i32,
}

/// A change to the sweeper policy (`set_sweep_policy`); `None` keeps a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepPolicyChange {
    pub retention_s: Option<u64>,
    pub worker_timeout_s: Option<u64>,
    pub deadline_slack_s: Option<u64>,
    pub prune_limit: Option<u32>,
}

impl SweepPolicyChange {
    pub fn is_empty(&self) -> bool {
        *self == SweepPolicyChange::default()
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Another sweeper held the lock; nothing was done.
    pub skipped: bool,
    #[serde(default)]
    pub requeued: u64,
    /// Expired leases of runs whose cancel was pending: ended cancelled, not requeued.
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub crash_failed: u64,
    #[serde(default)]
    pub deadline_failed: u64,
    /// Scheduled runs that became due and joined the queue.
    #[serde(default)]
    pub promoted: u64,
    #[serde(default)]
    pub workers_gone: u64,
    /// Some kind of work had more than one pass takes: sweep again at once.
    #[serde(default)]
    pub more: bool,
}

/// What one prune did (or, summed with [`PruneReport::add`], a series of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Another pruner held the lock; nothing was done.
    pub skipped: bool,
    /// Finished runs deleted (each past its template's retention, or the fleet's).
    #[serde(default)]
    pub pruned: u64,
    /// The pruned runs' events, steps and artifacts (rows).
    #[serde(default)]
    pub events_pruned: u64,
    #[serde(default)]
    pub steps_pruned: u64,
    #[serde(default)]
    pub artifacts_pruned: u64,
    /// Objects of pruned artifacts handed over for deletion from the object store (and their bytes):
    /// the next prune round of a process holding the store deletes them.
    #[serde(default)]
    pub stored_objects: u64,
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default)]
    pub workers_pruned: u64,
    #[serde(default)]
    pub sessions_pruned: u64,
    /// More runs are past the retention than one prune takes.
    #[serde(default)]
    pub more: bool,
}

impl PruneReport {
    /// Adds what another call deleted; `skipped` and `more` become the other call's.
    pub fn add(&mut self, other: &PruneReport) {
        self.skipped = other.skipped;
        self.more = other.more;
        self.pruned += other.pruned;
        self.events_pruned += other.events_pruned;
        self.steps_pruned += other.steps_pruned;
        self.artifacts_pruned += other.artifacts_pruned;
        self.stored_objects += other.stored_objects;
        self.stored_bytes += other.stored_bytes;
        self.workers_pruned += other.workers_pruned;
        self.sessions_pruned += other.sessions_pruned;
    }
}

/// A run as operators see it (`runlane show`, the API).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub template: String,
    pub template_version: i32,
    pub lane: String,
    pub priority: i32,
    #[schemars(with = "RunStatus")]
    pub status: String,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub params: serde_json::Value,
    pub attempt: i32,
    pub failed_attempts: i32,
    pub max_attempts: i32,
    pub crash_count: i32,
    pub max_crashes: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker_id: Option<WorkerId>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub session_id: Option<SessionId>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// One lane's figures (`lane_stats`).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct LaneStats {
    pub lane: String,
    pub queued: i64,
    pub scheduled: i64,
    pub running: i64,
    pub max_running: Option<i32>,
    pub oldest_queued_s: f64,
    /// A paused lane claims nothing; since when, by whom and why (None while it is not paused).
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub pause_reason: Option<String>,
    /// A waiting run gains one priority point every this many milliseconds (None: no aging, strict
    /// priority). See `lanes::aging_bound_ms`.
    pub aging_ms_per_point: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_parse_case_insensitively_and_reject_others() {
        assert_eq!("b".parse::<Lane>(), Ok(Lane::B));
        assert_eq!(" D ".parse::<Lane>(), Ok(Lane::D));
        assert_eq!("E".parse::<Lane>(), Err("unknown lane 'E' (lanes: A, B, C, D)".to_string()));
    }

    #[test]
    fn run_status_round_trips_through_text() {
        for s in [
            RunStatus::Scheduled,
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
        }
        assert!(RunStatus::Cancelled.is_final());
        assert!(!RunStatus::Running.is_final());
    }

    #[test]
    fn output_events_serialize_without_empty_fields() {
        let e = NewEvent::output(2, Stream::Stderr, "boom");
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json, serde_json::json!({"kind": "step.output", "step": 2, "stream": "stderr", "body": "boom"}));
    }
}
