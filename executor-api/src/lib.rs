//! # runlane-executor-api
//!
//! The HTTP face of the queue, over the same SQL functions as everything else: operators create,
//! list, cancel and retry runs and follow their events (JSON pages or SSE); workers without
//! database credentials claim and run through it; artifacts download by signed URL.
//!
//! # Layout
//! - [`routes`]: the route table (one place builds the router and the OpenAPI document; each
//!   route names the types of its query, body and answer) and one module per route group.
//! - [`auth`]: bearer tokens (stored hashed) with a role and optional lanes.
//! - [`error`]: the one error shape and status mapping.
//! - [`hub`]: one LISTEN connection fanned out to every SSE client.
//! - [`signing`]: HMAC-signed, expiring artifact URLs.
//! - [`limit`]: per-caller rate limit.
//! - [`openapi`]: the OpenAPI document, built from the route table with schemas derived from
//!   core's `wire` types; the state keeps it for `/openapi.json`.

pub mod auth;
pub mod error;
pub mod hub;
pub mod limit;
pub mod openapi;
pub mod routes;
pub mod signing;
pub mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use runlane_core::artifacts::{ArtifactStore, MAX_ARTIFACT_BYTES};
use runlane_core::settings::Settings;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Builds the shared state: the notification hub (listening until `stop`), the artifact store, the
/// URL signer.
pub async fn state(settings: &Settings, pool: PgPool, stop: CancellationToken) -> Result<AppState, String> {
    let hub = hub::Hub::start(&pool, stop.clone()).await.map_err(|e| format!("listening for notifications: {e}"))?;
    let db_contact = Arc::new(state::DbContact::new());
    let ping_every = std::time::Duration::from_millis(settings.api.db_ping_interval_ms);
    tokio::spawn(db_contact.clone().watch(pool.clone(), ping_every, stop));
    let artifacts = ArtifactStore::from_settings(&settings.artifacts)?;
    let signer = match &settings.api.signing_key {
        Some(key) => signing::Signer::new(key.expose_secret().as_bytes()),
        None => signing::Signer::random(),
    };
    Ok(AppState {
        pool,
        hub,
        artifacts,
        signer,
        limiter: Arc::new(limit::Limits::new(&settings.api)),
        settings: Arc::new(settings.api.clone()),
        db_contact,
        openapi: Arc::new(openapi::document()),
    })
}

/// The whole API as a router (tests drive it without a socket, or serve it on port 0).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes::table() {
        let handler = if route.path == "/v1/runs/{run_id}/artifacts/{name}" {
            route.handler.layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES as usize))
        } else {
            route.handler
        };
        router = router.route(route.path, handler);
    }
    let cors = if state.settings.cors_origins.is_empty() {
        CorsLayer::new()
    } else {
        let origins = state.settings.cors_origins.iter().filter_map(|o| o.parse().ok()).collect::<Vec<_>>();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any)
    };
    router
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(state.limiter.clone(), limit::rate_limit))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves on `listen` until `stop`; returns the bound address (port 0 picks one).
pub async fn serve(
    state: AppState,
    listen: &str,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    Ok((addr, task))
}
