//! The sweeper loop every PostgreSQL-connected worker (and the API) runs. Each pass calls
//! `runlane.sweep()`, which takes a transaction advisory lock: one pass runs at a time fleet-wide and
//! the others return "skipped" at once. Leadership is per pass rather than a session lock held for
//! hours, so a leader cut off from the database (whose session would keep such a lock until TCP gave
//! up) never stops the fleet from sweeping. What a pass does follows the fleet's policy, kept in the
//! database. After a pass, the stored bytes of pruned artifacts are deleted from the object store.

use crate::metrics::Metrics;
use runlane_core::artifacts::ArtifactStore;
use runlane_core::db;
use runlane_core::settings::SweeperSettings;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pruned artifacts' objects deleted after a pass, at most.
const OBJECT_DELETES_PER_PASS: i32 = 1000;

/// Sweeps every `interval_ms` (± 20% jitter, so a fleet does not call in step) until `stop`.
pub async fn run(
    pool: PgPool,
    store: ArtifactStore,
    settings: SweeperSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(settings.interval_ms);
    loop {
        // A pass that hangs on a dead connection must not stall the loop.
        match tokio::time::timeout(every.max(Duration::from_secs(5)), db::sweep(&pool)).await {
            Ok(Ok(report)) => {
                metrics.sweeper_leader.set(i64::from(!report.skipped));
                metrics.swept(&report);
                let acted = report.requeued + report.cancelled + report.crash_failed + report.deadline_failed;
                if acted + report.workers_gone > 0 {
                    tracing::info!(?report, "swept");
                }
                if !report.skipped {
                    delete_pruned_objects(&pool, &store).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed"),
            Err(_) => tracing::warn!("sweep timed out"),
        }
        let jitter = every.mul_f64(0.8 + 0.4 * fastrand_unit());
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(jitter) => {}
        }
    }
    metrics.sweeper_leader.set(0);
}

async fn delete_pruned_objects(pool: &PgPool, store: &ArtifactStore) {
    match store.delete_doomed(pool, OBJECT_DELETES_PER_PASS).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(objects = n, "deleted the stored bytes of pruned artifacts"),
        Err(e) => tracing::warn!(error = %e, "could not list pruned artifacts' objects"),
    }
}

/// A number in [0, 1) from the clock's nanoseconds: jitter needs no better randomness.
fn fastrand_unit() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
