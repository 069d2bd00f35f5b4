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
use runlane_core::ops::{MAX_BATCH_ITEMS, RunOps};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

fn lanes_of(caller: &Caller, names: &[String]) -> Result<Vec<Lane>, ApiError> {
    let lanes = names.iter().map(|l| parse_lane(l)).collect::<Result<Vec<_>, _>>()?;
    for lane in &lanes {
        caller.may_use_lane(*lane)?;
    }
    Ok(lanes)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    host: String,
    lanes: Vec<String>,
    slots: u32,
    version: String,
    #[serde(default)]
    capabilities: Vec<String>,
    lease_ms: u32,
    #[serde(default)]
    kill_grace_ms: u32,
}

pub async fn register(
    State(st): State<AppState>,
    Worker(caller): Worker,
    ApiJson(b): ApiJson<Register>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let reg = WorkerRegistration {
        host: b.host,
        lanes: lanes_of(&caller, &b.lanes)?,
        slots: b.slots,
        version: b.version,
        capabilities: b.capabilities,
        lease_ms: b.lease_ms,
        kill_grace_ms: b.kill_grace_ms,
    };
    let id = db::register_worker(&st.pool, &reg).await?;
    Ok((StatusCode::CREATED, Json(json!({"worker_id": id}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerBeat {
    state: WorkerState,
    lanes: Option<Vec<String>>,
    slots: Option<u32>,
    capabilities: Option<Vec<String>>,
}

pub async fn worker_heartbeat(
    State(st): State<AppState>,
    Worker(caller): Worker,
    Path(worker): Path<WorkerId>,
    ApiJson(b): ApiJson<WorkerBeat>,
) -> Result<StatusCode, ApiError> {
    let lanes = b.lanes.as_deref().map(|l| lanes_of(&caller, l)).transpose()?;
    let update = WorkerUpdate { lanes, slots: b.slots, capabilities: b.capabilities };
    db::worker_heartbeat(&st.pool, worker, b.state, &update).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    worker_id: WorkerId,
    lanes: Vec<String>,
    limit: u32,
    session_id: Option<SessionId>,
}

pub async fn claim(
    State(st): State<AppState>,
    Worker(caller): Worker,
    ApiJson(b): ApiJson<Claim>,
) -> Result<Json<Value>, ApiError> {
    let lanes = lanes_of(&caller, &b.lanes)?;
    if b.limit > MAX_CLAIM {
        return Err(ApiError::invalid(format!("limit must be at most {MAX_CLAIM}")));
    }
    let runs = db::claim_runs(&st.pool, b.worker_id, &lanes, b.limit, b.session_id).await?;
    Ok(Json(json!({"runs": runs})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    lease: Uuid,
}

pub async fn run_heartbeat(
    State(st): State<AppState>,
    _worker: Worker,
    Path(run): Path<RunId>,
    ApiJson(b): ApiJson<LeaseBody>,
) -> Result<Json<Value>, ApiError> {
    let reply = db::heartbeat_run(&st.pool, Lease { run_id: run, token: b.lease }).await?;
    Ok(Json(json!({"cancel_requested": reply.cancel_requested})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsBatch {
    items: Vec<RunOps>,
}

/// Many runs' items in one call and one commit; each answered on its own, in order.
pub async fn apply_ops(
    State(st): State<AppState>,
    _worker: Worker,
    ApiJson(b): ApiJson<OpsBatch>,
) -> Result<Json<Value>, ApiError> {
    if b.items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(format!("a batch holds at most {MAX_BATCH_ITEMS} items")));
    }
    let outcomes = db::apply_ops(&st.pool, &b.items).await?;
    Ok(Json(json!({"outcomes": outcomes})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    lease: Uuid,
    /// The worker's id for the artifact, so a retried upload is recorded once.
    id: Option<ArtifactId>,
    step: Option<i32>,
    content_type: Option<String>,
}

/// The body is the artifact's bytes; the API stores them inline or in its object store by size,
/// after checking the lease and the name (nothing is stored for a refused upload).
pub async fn upload_artifact(
    State(st): State<AppState>,
    _worker: Worker,
    Path((run, name)): Path<(RunId, String)>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let lease = Lease { run_id: run, token: q.lease };
    let content_type = q.content_type.unwrap_or_else(|| "application/octet-stream".into());
    let upload = ArtifactBytes {
        id: q.id.unwrap_or_else(|| ArtifactId(Uuid::now_v7())),
        step: q.step,
        name: &name,
        content_type: &content_type,
        bytes: body.to_vec(),
    };
    let id = st.artifacts.save(&st.pool, lease, &upload).await.map_err(|e| match e {
        ArtifactError::Queue { source, .. } => ApiError::from(source),
        ArtifactError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        other => {
            tracing::error!(error = %other, "artifact upload failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
        }
    })?;
    Ok((StatusCode::CREATED, Json(json!({"artifact_id": id}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIds {
    run_ids: Vec<RunId>,
}

pub async fn running_attempts(
    State(st): State<AppState>,
    _worker: Worker,
    ApiJson(b): ApiJson<RunIds>,
) -> Result<Json<Value>, ApiError> {
    let live = db::running_attempts(&st.pool, &b.run_ids).await?;
    let list: Vec<Value> = live.into_iter().map(|(run, attempt)| json!({"run_id": run, "attempt": attempt})).collect();
    Ok(Json(json!({"running": list})))
}

pub async fn fleet(State(st): State<AppState>, _worker: Worker) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"fleet_id": db::fleet_id(&st.pool).await?})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeQuery {
    lanes: String,
}

/// SSE: `lane` events (data: the lane) when a run becomes runnable, `cancel` events (data: the run).
pub async fn notices(
    State(st): State<AppState>,
    Worker(caller): Worker,
    Query(q): Query<NoticeQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let names: Vec<String> = q.lanes.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let lanes = lanes_of(&caller, &names)?;
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
