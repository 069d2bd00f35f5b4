//! Lanes, workers and templates; health, readiness, metrics.

use crate::auth::{Caller, Operator, Reader};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use runlane_core::db;
use serde_json::{Value, json};
use std::time::Duration;

pub async fn lanes(State(st): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"lanes": db::lane_stats(&st.pool).await?})))
}

pub async fn workers(State(st): State<AppState>, _reader: Reader) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"workers": db::list_workers(&st.pool).await?})))
}

pub async fn templates(State(st): State<AppState>, _reader: Reader) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"templates": db::list_templates(&st.pool).await?})))
}

/// The body is a template spec as JSON (what a templates/*.yaml file holds, without `name`), checked
/// by `apply_template` in SQL like every other way in.
pub async fn apply_template(
    State(st): State<AppState>,
    _operator: Operator,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let version = db::apply_template(&st.pool, &name, &spec).await?;
    Ok(Json(json!({"name": name, "version": version})))
}

/// Live while the database answered within `api.liveness_bound_ms` (checked every few seconds).
pub async fn healthz(State(st): State<AppState>) -> impl IntoResponse {
    let age = st.db_contact.age();
    let bound = Duration::from_millis(st.settings.liveness_bound_ms);
    let live = age <= bound;
    let status = if live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(json!({"live": live, "database_age_ms": age.as_millis() as u64, "bound_ms": bound.as_millis() as u64})),
    )
}

/// Ready when the database answers (within the ping interval) and its schema is this binary's.
pub async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let limit = Duration::from_millis(st.settings.db_ping_interval_ms);
    let checked = tokio::time::timeout(limit, db::check_schema(&st.pool)).await;
    match checked {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"ready": true}))),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": e.to_string()}))),
        Err(_) => {
            let reason = "the database did not answer in time";
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": reason})))
        }
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
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &stats {
            let v = match name {
                "runlane_queue_depth" => s.queued as f64,
                "runlane_running" => s.running as f64,
                _ => s.oldest_queued_s,
            };
            let _ = writeln!(out, "{name}{{lane=\"{}\"}} {v}", s.lane);
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
