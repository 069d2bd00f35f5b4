//! What every request handler shares.

use crate::hub::Hub;
use crate::limit::RateLimiter;
use crate::signing::Signer;
use runlane_core::artifacts::ArtifactStore;
use runlane_core::settings::ApiSettings;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Notifications from PostgreSQL, fanned out to SSE clients.
    pub hub: Hub,
    /// Large artifacts uploaded by HTTP workers, and their downloads.
    pub artifacts: ArtifactStore,
    pub signer: Signer,
    pub limiter: Arc<RateLimiter>,
    pub settings: Arc<ApiSettings>,
}
