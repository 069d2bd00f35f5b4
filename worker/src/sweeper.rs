//! The sweeper loop every PostgreSQL-connected worker (and the API) runs. Each pass calls
//! `runlane.sweep()`, which takes a transaction advisory lock: one pass runs at a time fleet-wide and
//! the others return "skipped" at once. Leadership is per pass rather than a session lock held for
//! hours, so a leader cut off from the database (whose session would keep such a lock until TCP gave
//! up) never stops the fleet from sweeping. A pass does bounded work; when it says there is more,
//! the next one follows at once. Pruning (finished runs past their retention — their template's, else
//! the fleet's — then the stored bytes of their artifacts) runs on its own, longer interval. What both do follows the fleet's policy, kept
//! in the database.

use crate::metrics::Metrics;
use runlane_core::artifacts::ArtifactStore;
use runlane_core::db;
use runlane_core::settings::SweeperSettings;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pruned artifacts' objects deleted after a prune, at most.
const OBJECT_DELETES_PER_PRUNE: i32 = 1000;

/// Sweeps every `interval_ms` (± 20% jitter, so a fleet does not call in step) and prunes every
/// `prune_interval_ms`, until `stop`.
pub async fn run(
    pool: PgPool,
    store: ArtifactStore,
    settings: SweeperSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(settings.interval_ms);
    let prune_every = Duration::from_millis(settings.prune_interval_ms);
    let mut next_prune = Instant::now() + prune_every.mul_f64(fastrand::f64());
    loop {
        let more = sweep_once(&pool, &metrics, every).await;
        if Instant::now() >= next_prune {
            prune_once(&pool, &store, &metrics, every).await;
            next_prune = Instant::now() + prune_every;
        }
        let pause = if more { Duration::ZERO } else { every.mul_f64(0.8 + 0.4 * fastrand::f64()) };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    metrics.sweeper_leader.set(0);
}

/// One pass; true when it left work for the next one.
async fn sweep_once(pool: &PgPool, metrics: &Metrics, limit: Duration) -> bool {
    // A pass that hangs on a dead connection must not stall the loop.
    match tokio::time::timeout(limit.max(Duration::from_secs(5)), db::sweep(pool)).await {
        Ok(Ok(report)) => {
            metrics.sweeper_leader.set(i64::from(!report.skipped));
            metrics.swept(&report);
            let acted = report.requeued + report.cancelled + report.crash_failed + report.deadline_failed;
            if acted + report.workers_gone > 0 {
                tracing::info!(?report, "swept");
            }
            report.more
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "sweep failed");
            false
        }
        Err(_) => {
            tracing::warn!("sweep timed out");
            false
        }
    }
}

/// Prunes until nothing is left past the retention, then deletes the pruned artifacts' bytes.
async fn prune_once(pool: &PgPool, store: &ArtifactStore, metrics: &Metrics, limit: Duration) {
    loop {
        match tokio::time::timeout(limit.max(Duration::from_secs(30)), db::prune(pool)).await {
            Ok(Ok(report)) => {
                metrics.pruned(&report);
                if report.pruned > 0 {
                    tracing::info!(?report, "pruned");
                }
                if report.skipped || !report.more {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "prune failed");
                return;
            }
            Err(_) => {
                tracing::warn!("prune timed out");
                return;
            }
        }
    }
    match store.delete_doomed(pool, OBJECT_DELETES_PER_PRUNE).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(objects = n, "deleted the stored bytes of pruned artifacts"),
        Err(e) => tracing::warn!(error = %e, "could not list pruned artifacts' objects"),
    }
}
