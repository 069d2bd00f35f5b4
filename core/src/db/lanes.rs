//! Pausing and resuming lanes, the emergency stop, the lane history, and a lane's priority aging.
//!
//! `token` is the executor API's token a call is made for (recorded as `token:NAME`); everyone else
//! passes None and is recorded as their database login. Only the API's role may pass one.

use crate::error::Result;
use crate::lanes::{FleetStop, LaneAging, LaneEvent, LanePause};
use crate::model::Lane;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Pauses a lane: nothing more of it is claimed; its running runs go on.
pub async fn pause_lane(ex: impl PgExecutor<'_>, lane: Lane, reason: &str, token: Option<Uuid>) -> Result<LanePause> {
    Ok(sqlx::query_as("SELECT * FROM runlane.pause_lane($1, $2, $3)")
        .bind(lane.as_str())
        .bind(reason)
        .bind(token)
        .fetch_one(ex)
        .await?)
}

/// Resumes a lane and wakes its workers.
pub async fn resume_lane(ex: impl PgExecutor<'_>, lane: Lane, reason: &str, token: Option<Uuid>) -> Result<LanePause> {
    Ok(sqlx::query_as("SELECT * FROM runlane.resume_lane($1, $2, $3)")
        .bind(lane.as_str())
        .bind(reason)
        .bind(token)
        .fetch_one(ex)
        .await?)
}

/// Pauses every lane and, with `cancel_running`, requests the cancel of every running run.
pub async fn stop_fleet(
    ex: impl PgExecutor<'_>,
    reason: &str,
    cancel_running: bool,
    token: Option<Uuid>,
) -> Result<FleetStop> {
    Ok(sqlx::query_as("SELECT * FROM runlane.stop_fleet($1, $2, $3)")
        .bind(reason)
        .bind(cancel_running)
        .bind(token)
        .fetch_one(ex)
        .await?)
}

/// Sets a lane's priority aging: one point every `ms_per_point` milliseconds (None: strict priority),
/// given at once to the lane's scheduled, queued and running runs.
pub async fn set_lane_aging(ex: impl PgExecutor<'_>, lane: Lane, ms_per_point: Option<i32>) -> Result<LaneAging> {
    Ok(sqlx::query_as("SELECT * FROM runlane.set_lane_aging($1, $2)")
        .bind(lane.as_str())
        .bind(ms_per_point)
        .fetch_one(ex)
        .await?)
}

/// The lane history, newest first, at most `limit` entries; with a lane, that lane's entries and
/// the fleet's stops.
pub async fn lane_events(ex: impl PgExecutor<'_>, lane: Option<Lane>, limit: i64) -> Result<Vec<LaneEvent>> {
    Ok(sqlx::query_as(
        "SELECT id, at, action, lane, actor, db_user, reason, data FROM runlane.lane_events
         WHERE $1::text IS NULL OR lane = $1 OR lane IS NULL
         ORDER BY id DESC LIMIT $2",
    )
    .bind(lane.map(Lane::as_str))
    .bind(limit)
    .fetch_all(ex)
    .await?)
}
