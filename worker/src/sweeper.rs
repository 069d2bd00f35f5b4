//! The sweeper loop every PostgreSQL-connected worker runs. Each pass calls `runlane.sweep`, which
//! takes a transaction advisory lock: one pass runs at a time fleet-wide and the others return
//! "skipped" at once. Leadership is per pass rather than a session lock held for hours, so a leader
//! cut off from the database (whose session would keep such a lock until TCP gave up) never
//! stops the fleet from sweeping.

use crate::metrics::Metrics;
use runlane_core::db;
use runlane_core::model::SweepOptions;
use runlane_core::settings::SweeperSettings;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sweeps every `interval_ms` (± 20% jitter, so a fleet does not call in step) until `stop`.
pub async fn run(pool: PgPool, settings: SweeperSettings, metrics: Arc<Metrics>, stop: CancellationToken) {
    let every = Duration::from_millis(settings.interval_ms);
    let opts = SweepOptions {
        now: None,
        retention_s: settings.retention_s,
        worker_timeout_s: settings.worker_timeout_s,
        deadline_slack_s: settings.deadline_slack_s,
        prune_limit: 10_000,
    };
    loop {
        // A pass that hangs on a dead connection must not stall the loop.
        match tokio::time::timeout(every.max(Duration::from_secs(5)), db::sweep(&pool, &opts)).await {
            Ok(Ok(report)) => {
                metrics.sweeper_leader.set(i64::from(!report.skipped));
                metrics.swept(&report);
                if report.requeued + report.crash_failed + report.deadline_failed + report.workers_gone > 0 {
                    tracing::info!(?report, "swept");
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

/// A number in [0, 1) from the clock's nanoseconds: jitter needs no better randomness.
fn fastrand_unit() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
