//! Holding a lease: the heartbeat that renews it (and hears of cancellation), giving it up by the
//! worker's own clock when no heartbeat gets through, and retrying queue calls while the database
//! is briefly away — until the lease is given up.

use crate::run_task::Shared;
use runlane_core::broker::Broker;
use runlane_core::model::Lease;
use runlane_core::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Renews the lease every heartbeat interval. A refused renewal — or none reaching the queue for a
/// whole lease — means the run is no longer ours: `lease_lost` fires and the run is aborted.
pub async fn heartbeat_loop<B: Broker>(
    shared: Arc<Shared<B>>,
    lease: Lease,
    cancel: CancellationToken,
    lease_lost: CancellationToken,
    done: CancellationToken,
) {
    let every = Duration::from_millis(shared.settings.heartbeat_interval_ms);
    let lease_for = Duration::from_millis(shared.settings.lease_ms);
    let mut last_ok = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = lease_lost.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match tokio::time::timeout(every, shared.broker.heartbeat_run(lease)).await {
            Ok(Ok(reply)) => {
                last_ok = Instant::now();
                if reply.cancel_requested && !cancel.is_cancelled() {
                    tracing::info!("cancel requested (heartbeat)");
                    cancel.cancel();
                }
            }
            Ok(Err(Error::LeaseLost(_))) => {
                lease_lost.cancel();
                return;
            }
            failed => {
                shared.metrics.heartbeat_failures.inc();
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(error = %why, "heartbeat failed");
                if last_ok.elapsed() >= lease_for {
                    tracing::warn!("no heartbeat reached the queue for a whole lease: giving the run up");
                    lease_lost.cancel();
                    return;
                }
            }
        }
    }
}

/// Retries a queue call while the database is unreachable, until the lease is given up.
pub async fn persist<T, F, Fut>(lease_lost: &CancellationToken, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        // A call stuck on a dead connection gives way as soon as the lease is given up.
        let result = tokio::select! {
            r = call() => r,
            _ = lease_lost.cancelled() => Err(Error::LeaseLost("lease given up".into())),
        };
        match result {
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "queue unreachable; retrying");
                tokio::select! {
                    _ = lease_lost.cancelled() => return Err(Error::LeaseLost("lease given up while the queue was unreachable".into())),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(Error::LeaseLost(m)) => {
                lease_lost.cancel();
                return Err(Error::LeaseLost(m));
            }
            other => return other,
        }
    }
}

/// Cancels `to` when `from` is cancelled, until `done`.
pub async fn link(from: CancellationToken, to: CancellationToken, done: CancellationToken) {
    tokio::select! {
        _ = from.cancelled() => to.cancel(),
        _ = done.cancelled() => {}
    }
}
