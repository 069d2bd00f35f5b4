//! The executor API's JSON, once: the body and query of every route, and every answer.
//!
//! The API's handlers take and return these structs, the worker's `HttpBroker` sends and reads
//! them, and `/openapi.json` derives its component schemas from them (`schemars`, as each struct
//! deserializes). So a field renamed here changes all three at once, and a drift is a compile error.
//!
//! Records of [`model`](crate::model) and [`ops`](crate::ops) that already are the JSON of a route
//! travel as they are: `WorkerRegistration`, `WorkerUpdate`, `ClaimedRun`, `HeartbeatReply`,
//! `RunOps`, `OpOutcome`, `Event`, `RunRecord`, `LaneStats`, `ScheduleRecord`, and of
//! [`lanes`](crate::lanes) `LanePause`, `FleetStop`, `LaneEvent`. The structs here wrap them
//! (`{"runs": […]}`), or say what the routes take that the queue's calls do not (lane names as
//! operators type them, a params default).
//!
//! # Layout
//! - [`runs`]: what operators send and read about runs: runs, their events and artifacts.
//! - [`work`]: what workers send and read: registration, claims, leases, batches, uploads.
//! - [`meta`]: workers, lanes and templates as operators list them; pausing lanes, stopping the
//!   fleet; health.
//! - [`schedules`]: schedules added, listed, shown with their next slots, paused.

mod meta;
mod runs;
mod schedules;
mod work;

pub use meta::*;
pub use runs::*;
pub use schedules::*;
pub use work::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error's body, whatever the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorReply {
    pub error: ErrorDetail,
}

/// What went wrong: `code` is stable (docs/API.md lists them), `message` is for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// Every violation, for `invalid` (a list of messages); otherwise null.
    #[serde(default)]
    pub details: Value,
}
