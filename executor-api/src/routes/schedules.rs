//! Schedules: add, list, show (with next slots), pause, resume, remove. Operators change them,
//! viewers read them; a token limited to lanes manages only schedules of its lanes.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::routes::runs::parse_lane;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use runlane_core::db::{self, NewSchedule};
use runlane_core::wire::{ScheduleCreate, ScheduleDetail, ScheduleList, SchedulePause};

/// How many next slots a schedule is shown with.
const NEXT_SLOTS: i32 = 5;

pub async fn create(
    State(st): State<AppState>,
    Operator(caller): Operator,
    ApiJson(body): ApiJson<ScheduleCreate>,
) -> Result<(StatusCode, Json<ScheduleDetail>), ApiError> {
    let lane = body.lane.as_deref().map(parse_lane).transpose()?;
    if let Some(lane) = lane {
        caller.may_use_lane(lane)?;
    } else if caller.lanes.is_some() {
        return Err(ApiError::invalid("this token is limited to some lanes: name the lane"));
    }
    let new = NewSchedule {
        name: body.name,
        template: body.template,
        cron: body.cron,
        time_zone: body.time_zone,
        params: body.params,
        lane,
        priority: body.priority,
    };
    db::add_schedule(&st.pool, &new).await?;
    Ok((StatusCode::CREATED, Json(detail(&st, &new.name).await?)))
}

pub async fn list(State(st): State<AppState>, _reader: Reader) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList { schedules: db::list_schedules(&st.pool).await? }))
}

pub async fn show(
    State(st): State<AppState>,
    _reader: Reader,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    Ok(Json(detail(&st, &name).await?))
}

pub async fn pause(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ScheduleDetail>, ApiError> {
    // The body is optional: none, or {"reason": "…"}.
    let body: SchedulePause = if body.iter().all(u8::is_ascii_whitespace) {
        SchedulePause::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
            _ => ApiError::bad_request(format!("malformed JSON: {e}")),
        })?
    };
    check_lane(&st, &caller, &name).await?;
    db::pause_schedule(&st.pool, &name, body.reason.as_deref()).await?;
    Ok(Json(detail(&st, &name).await?))
}

pub async fn resume(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    check_lane(&st, &caller, &name).await?;
    db::resume_schedule(&st.pool, &name).await?;
    Ok(Json(detail(&st, &name).await?))
}

pub async fn remove(
    State(st): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_lane(&st, &caller, &name).await?;
    db::remove_schedule(&st.pool, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn detail(st: &AppState, name: &str) -> Result<ScheduleDetail, ApiError> {
    let schedule = db::get_schedule(&st.pool, name).await?;
    let next_slots = db::schedule_slots(&st.pool, name, NEXT_SLOTS).await?;
    Ok(ScheduleDetail { schedule, next_slots })
}

/// A token limited to lanes changes only schedules that name one of its lanes.
async fn check_lane(st: &AppState, caller: &Caller, name: &str) -> Result<(), ApiError> {
    if caller.lanes.is_none() {
        return Ok(());
    }
    match db::get_schedule(&st.pool, name).await?.lane {
        Some(lane) => caller.may_use_lane(parse_lane(&lane)?),
        None => Err(ApiError::forbidden(format!(
            "this token is limited to some lanes, and schedule '{name}' uses its template's default lane"
        ))),
    }
}
