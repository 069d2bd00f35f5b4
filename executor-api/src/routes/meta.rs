//! Lanes, workers and templates; health, readiness, metrics; this API's OpenAPI document.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use runlane_core::db;
use runlane_core::wire::{LaneList, Live, Ready, TemplateApplied, TemplateList, TemplateSpec, WorkerList};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::time::Duration;

pub async fn lanes(State(st): State<AppState>, _caller: Caller) -> Result<Json<LaneList>, ApiError> {
    Ok(Json(LaneList { lanes: db::lane_stats(&st.pool).await? }))
}

pub async fn workers(State(st): State<AppState>, _reader: Reader) -> Result<Json<WorkerList>, ApiError> {
    let workers = db::list_workers(&st.pool).await?.into_iter().map(Into::into).collect();
    Ok(Json(WorkerList { workers }))
}

pub async fn templates(State(st): State<AppState>, _reader: Reader) -> Result<Json<TemplateList>, ApiError> {
    let templates = db::list_templates(&st.pool).await?.into_iter().map(Into::into).collect();
    Ok(Json(TemplateList { templates }))
}

/// The body is a template spec as JSON (what a templates/*.yaml file holds, without `name`), checked
/// by `apply_template` in SQL like every other way in.
pub async fn apply_template(
    State(st): State<AppState>,
    _operator: Operator,
    Path(name): Path<String>,
    ApiJson(TemplateSpec(spec)): ApiJson<TemplateSpec>,
) -> Result<Json<TemplateApplied>, ApiError> {
    let version = db::apply_template(&st.pool, &name, &spec).await?;
    Ok(Json(TemplateApplied { name, version }))
}

/// Live while the database answered within `api.liveness_bound_ms` (checked every few seconds).
pub async fn healthz(State(st): State<AppState>) -> (StatusCode, Json<Live>) {
    let age = st.db_contact.age();
    let bound = Duration::from_millis(st.settings.liveness_bound_ms);
    let live = age <= bound;
    let status = if live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Live { live, database_age_ms: age.as_millis() as u64, bound_ms: bound.as_millis() as u64 }))
}

/// Ready when the database answers (within the ping interval) and its schema is this binary's.
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Ready>) {
    let limit = Duration::from_millis(st.settings.db_ping_interval_ms);
    let checked = tokio::time::timeout(limit, db::check_schema(&st.pool)).await;
    let unready =
        |reason: String| (StatusCode::SERVICE_UNAVAILABLE, Json(Ready { ready: false, reason: Some(reason) }));
    match checked {
        Ok(Ok(())) => (StatusCode::OK, Json(Ready { ready: true, reason: None })),
        Ok(Err(e)) => unready(e.to_string()),
        Err(_) => unready("the database did not answer in time".into()),
    }
}

pub async fn metrics(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    use std::fmt::Write;
    let mut out = String::new();
    let stats = db::lane_stats(&st.pool).await?;
    for (name, help) in [
        ("runlane_queue_depth", "Runnable queued runs."),
        ("runlane_running", "Running runs."),
        ("runlane_oldest_queued_seconds", "Age of the oldest runnable run."),
        ("runlane_lane_paused", "1 while the lane is paused (it claims nothing)."),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &stats {
            let v = match name {
                "runlane_queue_depth" => s.queued as f64,
                "runlane_running" => s.running as f64,
                "runlane_lane_paused" => f64::from(u8::from(s.paused)),
                _ => s.oldest_queued_s,
            };
            let _ = writeln!(out, "{name}{{lane=\"{}\"}} {v}", s.lane);
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// `/openapi.json`: this API's OpenAPI 3.0 document, built once from the route table (openapi.rs)
/// and kept in the state.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct OpenApiDocument(pub Value);

impl JsonSchema for OpenApiDocument {
    fn schema_name() -> Cow<'static, str> {
        "OpenApi".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "An OpenAPI 3.0 document.", "type": "object"})
    }
}

pub async fn openapi(State(st): State<AppState>) -> Json<OpenApiDocument> {
    Json(OpenApiDocument(st.openapi.as_ref().clone()))
}
