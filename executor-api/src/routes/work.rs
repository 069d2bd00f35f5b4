//! What workers call over HTTP (worker tokens): register, heartbeat, claim, a run's lease renewal,
//! batches of runs' writes (`/v1/ops`: events, step transitions, endings), artifacts, and a stream
//! of wake-up and cancel notices. Every call about a run carries its lease; a stale one is 409
//! `lease_lost` (in a batch: that item's answer).

use crate::auth::{Caller, Worker};
use crate::error::{ApiError, ApiJson};
use crate::routes::runs::parse_lane;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::MAX_CLAIM;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::MAX_BATCH_ITEMS;
use runlane_core::wire::*;
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

/// The caller's token may use every one of these lanes.
fn check_lanes(caller: &Caller, lanes: &[Lane]) -> Result<(), ApiError> {
    lanes.iter().try_for_each(|lane| caller.may_use_lane(*lane))
}

pub async fn register(
    State(st): State<AppState>,
    Worker(caller): Worker,
    ApiJson(reg): ApiJson<WorkerRegistration>,
) -> Result<(StatusCode, Json<WorkerRegistered>), ApiError> {
    check_lanes(&caller, &reg.lanes)?;
    let worker_id = db::register_worker(&st.pool, &reg).await?;
    Ok((StatusCode::CREATED, Json(WorkerRegistered { worker_id })))
}

pub async fn worker_heartbeat(
    State(st): State<AppState>,
    Worker(caller): Worker,
    Path(worker): Path<WorkerId>,
    ApiJson(b): ApiJson<WorkerHeartbeat>,
) -> Result<StatusCode, ApiError> {
    check_lanes(&caller, b.update.lanes.as_deref().unwrap_or_default())?;
    db::worker_heartbeat(&st.pool, worker, b.state, &b.update).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn claim(
    State(st): State<AppState>,
    Worker(caller): Worker,
    ApiJson(b): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimedRuns>, ApiError> {
    check_lanes(&caller, &b.lanes)?;
    if b.limit > MAX_CLAIM {
        return Err(ApiError::invalid(format!("limit must be at most {MAX_CLAIM}")));
    }
    let runs = db::claim_runs(&st.pool, b.worker_id, &b.lanes, b.limit, b.session_id).await?;
    Ok(Json(ClaimedRuns { runs }))
}

pub async fn run_heartbeat(
    State(st): State<AppState>,
    _worker: Worker,
    Path(run): Path<RunId>,
    ApiJson(b): ApiJson<RunHeartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    Ok(Json(db::heartbeat_run(&st.pool, Lease { run_id: run, token: b.lease }).await?))
}

/// Many runs' items in one call and one commit; each answered on its own, in order.
pub async fn apply_ops(
    State(st): State<AppState>,
    _worker: Worker,
    ApiJson(b): ApiJson<OpsBatch<'static>>,
) -> Result<Json<OpsAnswers>, ApiError> {
    if b.items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(format!("a batch holds at most {MAX_BATCH_ITEMS} items")));
    }
    let outcomes = db::apply_ops(&st.pool, &b.items).await?;
    Ok(Json(OpsAnswers { outcomes }))
}

/// The body is the artifact's bytes; the API stores them inline or in its object store by size,
/// after checking the lease and the name (nothing is stored for a refused upload).
pub async fn upload_artifact(
    State(st): State<AppState>,
    _worker: Worker,
    Path((run, name)): Path<(RunId, String)>,
    Query(q): Query<ArtifactUploadQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<ArtifactCreated>), ApiError> {
    let lease = Lease { run_id: run, token: q.lease };
    let content_type = q.content_type.unwrap_or_else(|| "application/octet-stream".into());
    let upload = ArtifactBytes {
        id: q.id.unwrap_or_else(|| ArtifactId(Uuid::now_v7())),
        step: q.step,
        name: &name,
        content_type: &content_type,
        bytes: body.to_vec(),
    };
    let artifact_id = st.artifacts.save(&st.pool, lease, &upload).await.map_err(|e| match e {
        ArtifactError::Queue { source, .. } => ApiError::from(source),
        ArtifactError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        other => {
            tracing::error!(error = %other, "artifact upload failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
        }
    })?;
    Ok((StatusCode::CREATED, Json(ArtifactCreated { artifact_id })))
}

pub async fn running_attempts(
    State(st): State<AppState>,
    _worker: Worker,
    ApiJson(b): ApiJson<RunIds>,
) -> Result<Json<RunningAttempts>, ApiError> {
    let live = db::running_attempts(&st.pool, &b.run_ids).await?;
    let running = live.into_iter().map(|(run_id, attempt)| RunningAttempt { run_id, attempt }).collect();
    Ok(Json(RunningAttempts { running }))
}

pub async fn fleet(State(st): State<AppState>, _worker: Worker) -> Result<Json<Fleet>, ApiError> {
    Ok(Json(Fleet { fleet_id: db::fleet_id(&st.pool).await? }))
}

/// SSE: `lane` events (data: the lane) when a run becomes runnable, `cancel` events (data: the run).
pub async fn notices(
    State(st): State<AppState>,
    Worker(caller): Worker,
    Query(q): Query<NoticesQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let lanes = q.lanes.split(',').filter(|s| !s.trim().is_empty()).map(parse_lane).collect::<Result<Vec<_>, _>>()?;
    check_lanes(&caller, &lanes)?;
    let rx = st.hub.subscribe();
    let stream = futures_util::stream::unfold((rx, lanes), |(mut rx, lanes)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(Notice::LaneReady(l)) if lanes.contains(&l) => SseEvent::default().event("lane").data(l.as_str()),
                Ok(Notice::Cancel(run)) => SseEvent::default().event("cancel").data(run.to_string()),
                Ok(Notice::Resumed) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    SseEvent::default().event("resumed").data("")
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, lanes)));
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(st.settings.sse_keepalive_ms)).text("keep-alive")))
}
