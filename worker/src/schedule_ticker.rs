//! The schedule ticker every PostgreSQL-connected worker (and the API) runs beside its sweeper. Each
//! tick calls `runlane.tick_schedules()`, which takes a transaction advisory lock: one tick runs at a
//! time fleet-wide, the others return "skipped" at once, and a leader cut off from the database
//! holds nothing once its transaction is gone. A tick enqueues every due slot it finds (each once:
//! the run's idempotency key is the schedule and the slot) and says how long until the next one is
//! due, by the database's clock; the ticker sleeps that long, so slots are enqueued on time, but never
//! longer than the sweeper interval, so a schedule added meanwhile is seen within it.

use crate::metrics::Metrics;
use runlane_core::db::{self, TickReport};
use runlane_core::settings::SweeperSettings;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// After a tick another process held, wait at least this long: its slots are being enqueued, and
/// until it commits they still look due.
const AFTER_SKIPPED: Duration = Duration::from_millis(100);

/// The longest a tick may take before the ticker gives it up and tries again.
const TICK_TIMEOUT: Duration = Duration::from_secs(30);

/// Ticks until `stop`.
pub async fn run(pool: PgPool, settings: SweeperSettings, metrics: Arc<Metrics>, stop: CancellationToken) {
    let longest = Duration::from_millis(settings.interval_ms);
    loop {
        let pause = match tick_once(&pool, &metrics, longest).await {
            Some(report) => pause_after(&report, longest),
            None => longest,
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long to sleep after a tick: until the next slot is due, within [0, longest].
pub fn pause_after(report: &TickReport, longest: Duration) -> Duration {
    if report.more {
        return Duration::ZERO;
    }
    let until_due = report.wait_ms.map_or(longest, Duration::from_millis).min(longest);
    if report.skipped { until_due.max(AFTER_SKIPPED).min(longest) } else { until_due }
}

/// One tick; None when it failed (logged).
async fn tick_once(pool: &PgPool, metrics: &Metrics, limit: Duration) -> Option<TickReport> {
    // A tick that hangs on a dead connection must not stall the loop; one catching up on many
    // schedules after a long outage takes a while (each slot found costs microseconds).
    match tokio::time::timeout(limit.max(TICK_TIMEOUT), db::tick_schedules(pool)).await {
        Ok(Ok(report)) => {
            metrics.ticked(&report);
            if report.caught_up > 0 {
                tracing::info!(runs = report.caught_up, missed = report.missed, "caught up on missed schedule slots");
            }
            for f in &report.failed {
                tracing::warn!(schedule = %f.schedule, slot = %f.slot, error = %f.error, "a schedule's slot was refused");
            }
            Some(report)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "schedule tick failed");
            None
        }
        Err(_) => {
            tracing::warn!("schedule tick timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_secs(1);

    fn report(skipped: bool, more: bool, wait_ms: Option<u64>) -> TickReport {
        TickReport { skipped, more, wait_ms, ..Default::default() }
    }

    #[test]
    fn sleeps_until_the_next_slot_within_the_interval() {
        assert_eq!(pause_after(&report(false, false, Some(250)), LONGEST), Duration::from_millis(250));
        assert_eq!(pause_after(&report(false, false, Some(60_000)), LONGEST), LONGEST);
        assert_eq!(pause_after(&report(false, false, None), LONGEST), LONGEST, "no schedule enabled");
        assert_eq!(pause_after(&report(false, true, Some(0)), LONGEST), Duration::ZERO, "more is due");
    }

    #[test]
    fn a_skipped_tick_does_not_spin_on_slots_another_process_is_enqueueing() {
        assert_eq!(pause_after(&report(true, false, Some(0)), LONGEST), AFTER_SKIPPED);
        assert_eq!(pause_after(&report(true, false, Some(700)), LONGEST), Duration::from_millis(700));
        assert_eq!(pause_after(&report(true, false, Some(0)), Duration::from_millis(50)), Duration::from_millis(50));
    }
}
