//! `/healthz`, `/readyz` and `/metrics` on a small HTTP port of its own.
//!
//! - `/healthz` (liveness): 200 while the worker's own heartbeat got through within the last
//!   `bound` (its lease); 503 after that — a worker cut off from the queue that long is giving its
//!   runs up, and a supervisor may restart it.
//! - `/readyz` (readiness): 200 while the worker accepts claims: not draining, and the queue
//!   answered its last call. 503 otherwise.

use crate::metrics::{Metrics, uptime_ms};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    bound: Duration,
}

/// Binds the health port (before the worker registers, so a taken port leaves no worker row).
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serves on `listener` until `stop`; liveness fails once no heartbeat got through for `bound`.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, bound: Duration, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { metrics, bound });
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
}

fn json(status: StatusCode, body: serde_json::Value) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn healthz(State(h): State<HealthState>) -> impl IntoResponse {
    let last = h.metrics.last_heartbeat_ok_ms.get();
    let age_ms = (last > 0).then(|| uptime_ms() - last);
    // Zero until the worker registered (it is starting up); the registration counts as a heartbeat.
    let live = age_ms.is_none_or(|age| age <= h.bound.as_millis() as i64);
    let status = if live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({"live": live, "last_heartbeat_age_ms": age_ms, "bound_ms": h.bound.as_millis() as u64}),
    )
}

async fn readyz(State(h): State<HealthState>) -> impl IntoResponse {
    let m = &h.metrics;
    let draining = m.ready.get() != 1;
    let reachable = m.queue_reachable.get() == 1;
    let ready = !draining && reachable;
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "queue_reachable": reachable,
        "slots": m.slots_total.get(),
        "slots_in_use": m.slots_in_use.get(),
        "heartbeat_failures": m.heartbeat_failures.get(),
        "docker": m.docker_available.get() == 1,
    });
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn metrics_text(State(h): State<HealthState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
}
