//! Runs: create, list, show, cancel, retry.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runlane_core::db::{self, RunFilter};
use runlane_core::dry_run::dry_run;
use runlane_core::model::{EnqueueRequest, Lane, RunId};
use runlane_core::wire::{
    CancelRequest, RunCreate, RunCreateQuery, RunCreated, RunDetail, RunList, RunListQuery, StatusReply,
};

/// Parses a lane, as the API's 422.
pub fn parse_lane(s: &str) -> Result<Lane, ApiError> {
    s.parse::<Lane>().map_err(ApiError::invalid)
}

/// Enqueues a run (201), or with `dry_run=true` answers what would be enqueued (200), checked the
/// same way and writing nothing.
pub async fn create(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Query(q): Query<RunCreateQuery>,
    ApiJson(body): ApiJson<RunCreate>,
) -> Result<Response, ApiError> {
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
    if q.dry_run == Some(true) {
        return Ok(Json(dry_run(&st.pool, &req).await?).into_response());
    }
    let run_id = db::enqueue_run(&st.pool, &req).await?;
    Ok((StatusCode::CREATED, Json(RunCreated { run_id })).into_response())
}

const STATUSES: [&str; 6] = ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"];

pub async fn list(
    State(st): State<AppState>,
    _reader: Reader,
    Query(q): Query<RunListQuery>,
) -> Result<Json<RunList>, ApiError> {
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
    let next_before = (runs.len() as i64 == limit).then(|| runs.last().map(|r| r.id)).flatten();
    Ok(Json(RunList { runs, next_before }))
}

pub async fn show(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
) -> Result<Json<RunDetail>, ApiError> {
    let record = db::get_run(&st.pool, run).await?;
    let steps = db::run_steps(&st.pool, run).await?;
    Ok(Json(RunDetail { run: record, steps: steps.into_iter().map(Into::into).collect() }))
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
) -> Result<Json<StatusReply>, ApiError> {
    // The body is optional: none, or {"reason": "…"}.
    let body: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
            _ => ApiError::bad_request(format!("malformed JSON: {e}")),
        })?
    };
    check_run_lane(&st, &caller, run).await?;
    let status = db::cancel_run(&st.pool, run, body.reason.as_deref()).await?;
    Ok(Json(StatusReply { status }))
}

pub async fn retry(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(run): Path<RunId>,
) -> Result<Json<StatusReply>, ApiError> {
    check_run_lane(&st, &caller, run).await?;
    db::retry_run(&st.pool, run).await?;
    Ok(Json(StatusReply { status: "queued".into() }))
}
