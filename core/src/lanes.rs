//! Pausing a lane and stopping the fleet: what `pause_lane`, `resume_lane` and `stop_fleet` answer,
//! and the history of them (`lane_events`). The same records travel through the executor API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lane's pause state after `pause_lane` or `resume_lane`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct LanePause {
    pub lane: String,
    pub paused: bool,
    /// Since when the lane is paused, by whom and why (None while it is not).
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub pause_reason: Option<String>,
    /// False when the lane already was as asked (nothing was written or recorded).
    pub changed: bool,
}

/// What an emergency stop did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct FleetStop {
    /// The stop's row in the lane history.
    pub event_id: i64,
    /// The lanes it paused; the others were paused already and keep their pause.
    pub paused: Vec<String>,
    /// Running runs whose cancel it requested (runs with a cancel already pending are not counted).
    pub cancel_requested: i32,
}

/// One entry of the lane history: a pause, a resume or a stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct LaneEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `pause`, `resume` or `stop`.
    pub action: String,
    /// None for a stop: it concerns the whole fleet (each lane it paused has its own `pause`).
    pub lane: Option<String>,
    /// Who acted: the database login, or `token:NAME` for a call through the executor API.
    pub actor: String,
    /// The database login that made the call.
    pub db_user: String,
    pub reason: String,
    /// A resume: the pause it ended (`paused_at`, `paused_by`, `pause_reason`). A pause made by a
    /// stop: `fleet_stop`. A stop: `paused`, `cancel_running`, `cancel_requested`.
    pub data: serde_json::Value,
}
