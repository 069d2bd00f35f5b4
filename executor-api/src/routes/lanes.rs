//! Lanes paused and resumed, the fleet stopped, and the history of those. Each change is recorded
//! under the token's name (`token:NAME`), by the same SQL functions `runlane lanes` calls. And a
//! lane's priority aging.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::routes::runs::parse_lane;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use runlane_core::db;
use runlane_core::lanes::{FleetStop, LaneAging, LanePause};
use runlane_core::wire::{FleetStopRequest, LaneAgingChange, LaneChange, LaneHistory, LaneHistoryQuery};

pub async fn pause(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(lane): Path<String>,
    ApiJson(body): ApiJson<LaneChange>,
) -> Result<Json<LanePause>, ApiError> {
    let lane = parse_lane(&lane)?;
    caller.may_use_lane(lane)?;
    Ok(Json(db::pause_lane(&st.pool, lane, &body.reason, Some(caller.token_id)).await?))
}

pub async fn resume(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(lane): Path<String>,
    ApiJson(body): ApiJson<LaneChange>,
) -> Result<Json<LanePause>, ApiError> {
    let lane = parse_lane(&lane)?;
    caller.may_use_lane(lane)?;
    Ok(Json(db::resume_lane(&st.pool, lane, &body.reason, Some(caller.token_id)).await?))
}

/// Sets the lane's priority aging (0: none); its runs take the rate at once.
pub async fn aging(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(lane): Path<String>,
    ApiJson(body): ApiJson<LaneAgingChange>,
) -> Result<Json<LaneAging>, ApiError> {
    let lane = parse_lane(&lane)?;
    caller.may_use_lane(lane)?;
    Ok(Json(db::set_lane_aging(&st.pool, lane, Some(body.ms_per_point)).await?))
}

/// The emergency stop concerns every lane: a token limited to some lanes may not make it.
pub async fn stop(
    State(st): State<AppState>,
    Operator(caller): Operator,
    ApiJson(body): ApiJson<FleetStopRequest>,
) -> Result<Json<FleetStop>, ApiError> {
    every_lane(&caller)?;
    Ok(Json(db::stop_fleet(&st.pool, &body.reason, body.cancel_running, Some(caller.token_id)).await?))
}

fn every_lane(caller: &Caller) -> Result<(), ApiError> {
    match caller.lanes {
        Some(_) => Err(ApiError::forbidden("stopping the fleet needs a token for every lane")),
        None => Ok(()),
    }
}

pub async fn history(
    State(st): State<AppState>,
    _reader: Reader,
    Query(q): Query<LaneHistoryQuery>,
) -> Result<Json<LaneHistory>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 500"));
    }
    let lane = q.lane.as_deref().map(parse_lane).transpose()?;
    Ok(Json(LaneHistory { events: db::lane_events(&st.pool, lane, limit).await? }))
}
