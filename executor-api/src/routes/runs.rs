//! Runs: create, list, show, cancel, retry.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use runlane_core::db::{self, RunFilter};
use runlane_core::model::{EnqueueRequest, Lane, RunId, SessionId};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    template: String,
    #[serde(default = "empty_object")]
    params: Value,
    lane: Option<String>,
    priority: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    idempotency_key: Option<String>,
    session_id: Option<SessionId>,
}

fn empty_object() -> Value {
    json!({})
}

/// Parses a lane, as the API's 422.
pub fn parse_lane(s: &str) -> Result<Lane, ApiError> {
    s.parse::<Lane>().map_err(ApiError::invalid)
}

pub async fn create(
    State(st): State<AppState>,
    Operator(caller): Operator,
    ApiJson(body): ApiJson<CreateRun>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let lane = body.lane.as_deref().map(parse_lane).transpose()?;
    if let Some(lane) = lane {
        caller.may_use_lane(lane)?;
    } else if caller.lanes.is_some() {
        return Err(ApiError::invalid("this token is limited to some lanes: name the lane"));
    }
    let req = EnqueueRequest {
        template: body.template,
        params: body.params,
        lane,
        priority: body.priority,
        run_at: body.run_at,
        idempotency_key: body.idempotency_key,
        session_id: body.session_id,
    };
    let run = db::enqueue_run(&st.pool, &req).await?;
    Ok((StatusCode::CREATED, Json(json!({"run_id": run}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    lane: Option<String>,
    template: Option<String>,
    since: Option<DateTime<Utc>>,
    before: Option<RunId>,
    limit: Option<i64>,
}

const STATUSES: [&str; 6] = ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"];

pub async fn list(
    State(st): State<AppState>,
    _reader: Reader,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(format!("unknown status '{s}' ({})", STATUSES.join(", "))));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 500"));
    }
    let filter = RunFilter {
        status: q.status,
        lane: q.lane.as_deref().map(parse_lane).transpose()?,
        template: q.template,
        since: q.since,
        before: q.before,
        limit,
    };
    let runs = db::list_runs(&st.pool, &filter).await?;
    let next = (runs.len() as i64 == limit).then(|| runs.last().map(|r| r.id)).flatten();
    Ok(Json(json!({"runs": runs, "next_before": next})))
}

pub async fn show(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
) -> Result<Json<Value>, ApiError> {
    let record = db::get_run(&st.pool, run).await?;
    let steps = db::run_steps(&st.pool, run).await?;
    let mut value = serde_json::to_value(record).map_err(|e| ApiError::bad_request(e.to_string()))?;
    value["steps"] = json!(steps);
    Ok(Json(value))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    reason: Option<String>,
}

/// The run's lane, checked against the caller's token.
async fn check_run_lane(st: &AppState, caller: &Caller, run: RunId) -> Result<(), ApiError> {
    if caller.lanes.is_some() {
        let lane = db::get_run(&st.pool, run).await?.lane;
        caller.may_use_lane(parse_lane(&lane)?)?;
    }
    Ok(())
}

pub async fn cancel(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(run): Path<RunId>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: none, or {"reason": "…"}.
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
            _ => ApiError::bad_request(format!("malformed JSON: {e}")),
        })?
    };
    check_run_lane(&st, &caller, run).await?;
    let reason = body.reason;
    let status = db::cancel_run(&st.pool, run, reason.as_deref()).await?;
    Ok(Json(json!({"status": status})))
}

pub async fn retry(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(run): Path<RunId>,
) -> Result<Json<Value>, ApiError> {
    check_run_lane(&st, &caller, run).await?;
    db::retry_run(&st.pool, run).await?;
    Ok(Json(json!({"status": "queued"})))
}
