//! What every request handler shares.

use crate::hub::Hub;
use crate::limit::Limits;
use crate::signing::Signer;
use runlane_core::artifacts::ArtifactStore;
use runlane_core::settings::ApiSettings;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Notifications from PostgreSQL, fanned out to SSE clients.
    pub hub: Hub,
    /// Large artifacts uploaded by HTTP workers, and their downloads.
    pub artifacts: ArtifactStore,
    pub signer: Signer,
    pub limiter: Arc<Limits>,
    pub settings: Arc<ApiSettings>,
    /// When the database last answered (liveness).
    pub db_contact: Arc<DbContact>,
    /// `/openapi.json`, built once from the route table (openapi.rs).
    pub openapi: Arc<serde_json::Value>,
}

/// When the database last answered this process: pinged every few seconds by [`DbContact::watch`].
#[derive(Debug)]
pub struct DbContact {
    started: Instant,
    /// Milliseconds after `started`.
    last_ok_ms: AtomicU64,
}

impl DbContact {
    /// Starts as "just answered" (the process has just connected).
    pub fn new() -> Self {
        DbContact { started: Instant::now(), last_ok_ms: AtomicU64::new(0) }
    }

    pub fn ok(&self) {
        self.last_ok_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the database last answered.
    pub fn age(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ok_ms.load(Ordering::Relaxed)))
    }

    /// Pings the database every `every` (each ping bounded by it too) until `stop`.
    pub async fn watch(self: Arc<Self>, pool: PgPool, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            let ping = runlane_core::db::ping(&pool);
            if let Ok(Ok(_)) = tokio::time::timeout(every, ping).await {
                self.ok();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

impl Default for DbContact {
    fn default() -> Self {
        DbContact::new()
    }
}
