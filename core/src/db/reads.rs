//! What operators and tailers read.

use crate::error::{Error, Result};
use crate::model::*;
use sqlx::PgExecutor;

pub async fn get_run(ex: impl PgExecutor<'_>, run: RunId) -> Result<RunRecord> {
    sqlx::query_as(
        "SELECT id, template, template_version, lane, priority, status, params, attempt, failed_attempts,
                max_attempts, crash_count, max_crashes, run_at, created_at, claimed_at, finished_at, worker_id,
                cancel_requested_at, session_id, result, error
         FROM runlane.runs WHERE id = $1",
    )
    .bind(run)
    .fetch_optional(ex)
    .await?
    .ok_or_else(|| Error::NotFound(format!("unknown run {run}")))
}

/// Events of a run after `after_seq`, in seq order, at most `limit`.
pub async fn read_events(ex: impl PgExecutor<'_>, run: RunId, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
    Ok(sqlx::query_as(
        "SELECT run_id, seq, attempt, at, kind, step, stream, body, data FROM runlane.run_events
         WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

pub async fn lane_stats(ex: impl PgExecutor<'_>) -> Result<Vec<LaneStats>> {
    Ok(sqlx::query_as("SELECT * FROM runlane.lane_stats()").fetch_all(ex).await?)
}
