//! Pausing a lane and stopping the fleet: what `pause_lane`, `resume_lane` and `stop_fleet` answer,
//! and the history of them (`lane_events`); a lane's priority aging (`set_lane_aging`). The same
//! records travel through the executor API.

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

/// A lane's priority aging after `set_lane_aging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct LaneAging {
    pub lane: String,
    /// A waiting run gains one priority point every this many milliseconds; None: no aging (strict
    /// priority, then first come).
    pub aging_ms_per_point: Option<i32>,
    /// The lane's scheduled, queued and running runs that took the new rate.
    pub rekeyed: i64,
}

/// The lowest and highest priority a run may have.
pub const PRIORITY_RANGE: (i32, i32) = (-100, 100);

/// How long after a run became claimable others of `higher` priority may still go before it, in a
/// lane aging one point every `ms_per_point`: `(higher − lower) × ms_per_point`. A run of priority
/// `lower` that became claimable at t goes before every run of priority `higher` that became
/// claimable after t plus this. The lane's bound is the widest one, from −100 to 100.
pub fn overtake_window_ms(ms_per_point: i32, lower: i32, higher: i32) -> i64 {
    (i64::from(higher) - i64::from(lower)).max(0) * i64::from(ms_per_point)
}

/// The lane's aging bound: how long after a priority −100 run became claimable priority-100 runs
/// may still go before it.
pub fn aging_bound_ms(ms_per_point: i32) -> i64 {
    overtake_window_ms(ms_per_point, PRIORITY_RANGE.0, PRIORITY_RANGE.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_spans_the_whole_priority_range() {
        assert_eq!(aging_bound_ms(1000), 200_000);
        assert_eq!(overtake_window_ms(500, 0, 10), 5000);
        assert_eq!(overtake_window_ms(500, 10, 0), 0, "a lower priority never overtakes");
        assert_eq!(aging_bound_ms(86_400_000), 17_280_000_000, "no overflow at a day per point");
    }
}
