//! What operators and tailers read.

use crate::error::{Error, Result};
use crate::model::*;
use sqlx::PgExecutor;

/// A run's columns as operators see them: the values of secret params replaced by `***`.
const RUN_COLUMNS: &str = "id, template, template_version, lane, priority, status,
    params || coalesce((SELECT jsonb_object_agg(k, to_jsonb('***'::text)) FROM unnest(secret_params) AS k
                        WHERE params ? k), '{}') AS params,
    attempt, failed_attempts, max_attempts, crash_count, max_crashes, run_at, created_at, claimed_at, finished_at,
    worker_id, cancel_requested_at, session_id, result, error";

pub async fn get_run(ex: impl PgExecutor<'_>, run: RunId) -> Result<RunRecord> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {RUN_COLUMNS} FROM runlane.runs WHERE id = $1")))
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

/// Filters for listing runs; newest first, paged by `before` (a run id from the previous page).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub lane: Option<Lane>,
    pub template: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub before: Option<RunId>,
    pub limit: i64,
}

pub async fn list_runs(ex: impl PgExecutor<'_>, f: &RunFilter) -> Result<Vec<RunRecord>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runlane.runs
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR lane = $2)
               AND ($3::text IS NULL OR template = $3) AND ($4::timestamptz IS NULL OR created_at >= $4)
               AND ($5::uuid IS NULL OR id < $5)
             ORDER BY id DESC LIMIT $6"
    )))
    .bind(&f.status)
    .bind(f.lane.map(Lane::as_str))
    .bind(&f.template)
    .bind(f.since)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(ex)
    .await?)
}

/// A step of one attempt of a run.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct StepRecord {
    pub attempt: i32,
    pub idx: i32,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn run_steps(ex: impl PgExecutor<'_>, run: RunId) -> Result<Vec<StepRecord>> {
    Ok(sqlx::query_as(
        "SELECT attempt, idx, name, kind, status, exit_code, error, started_at, finished_at
         FROM runlane.run_steps WHERE run_id = $1 ORDER BY attempt, idx",
    )
    .bind(run)
    .fetch_all(ex)
    .await?)
}

/// An artifact's record (its bytes are inline or behind `store_key`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArtifactRecord {
    pub id: ArtifactId,
    pub run_id: RunId,
    pub attempt: i32,
    pub step: Option<i32>,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub inline_data: Option<Vec<u8>>,
    pub store_key: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const ARTIFACT_COLUMNS: &str =
    "id, run_id, attempt, step, name, content_type, size_bytes, sha256, inline_data, store_key, created_at";

pub async fn list_artifacts(ex: impl PgExecutor<'_>, run: RunId) -> Result<Vec<ArtifactRecord>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM runlane.artifacts WHERE run_id = $1 ORDER BY attempt, name"
    )))
    .bind(run)
    .fetch_all(ex)
    .await?)
}

pub async fn get_artifact(ex: impl PgExecutor<'_>, id: ArtifactId) -> Result<ArtifactRecord> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ARTIFACT_COLUMNS} FROM runlane.artifacts WHERE id = $1")))
        .bind(id)
        .fetch_optional(ex)
        .await?
        .ok_or_else(|| Error::NotFound(format!("unknown artifact {id}")))
}

/// A worker as `runlane workers` and the API show it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub host: String,
    pub version: String,
    pub lanes: Vec<String>,
    pub slots: i32,
    pub capabilities: Vec<String>,
    pub state: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list_workers(ex: impl PgExecutor<'_>) -> Result<Vec<WorkerRecord>> {
    Ok(sqlx::query_as(
        "SELECT id, host, version, lanes, slots, capabilities, state, started_at, last_seen_at
         FROM runlane.workers ORDER BY state, last_seen_at DESC LIMIT 1000",
    )
    .fetch_all(ex)
    .await?)
}

/// The newest version of each template.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TemplateRecord {
    pub name: String,
    pub version: i32,
    pub description: String,
    pub default_lane: String,
    pub params_schema: serde_json::Value,
    pub steps: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list_templates(ex: impl PgExecutor<'_>) -> Result<Vec<TemplateRecord>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (name) name, version, description, default_lane, params_schema, steps, created_at
         FROM runlane.run_templates ORDER BY name, version DESC",
    )
    .fetch_all(ex)
    .await?)
}
