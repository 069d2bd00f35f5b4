//! `/healthz` (the process answers), `/readyz` (it accepts claims: not draining, the queue
//! reachable) and `/metrics` (Prometheus), on a small HTTP port of its own.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Binds `listen` and serves until `stop`. Returns the bound address (port 0 picks one).
pub async fn serve(listen: &str, metrics: Arc<Metrics>, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    Ok(addr)
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let ready = m.ready.get() == 1;
    let body = serde_json::json!({
        "ready": ready,
        "slots": m.slots_total.get(),
        "slots_in_use": m.slots_in_use.get(),
        "heartbeat_failures": m.heartbeat_failures.get(),
        "docker": m.docker_available.get() == 1,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}
