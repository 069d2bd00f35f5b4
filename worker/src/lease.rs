//! Holding a lease: the heartbeat that renews it (and hears of cancellation), giving it up by the
//! worker's own clock before the database can let it expire, and retrying queue calls while the
//! database is briefly away — until the lease is given up.
//!
//! The database sets a lease's expiry to `lease_ms` after it commits a renewal, which is after the
//! worker sent it. So the expiry is never earlier than `lease_ms` after the last renewal that got
//! through was *sent*. The worker gives the lease up one heartbeat interval before that point, on a
//! timer of its own: the run's processes are stopping before the lease can expire, and the sweeper
//! waits the worker's kill grace past the expiry before the run may start elsewhere.

use crate::metrics::Metrics;
use runlane_core::Error;
use runlane_core::broker::Broker;
use runlane_core::model::Lease;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a run's lease is kept.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimings {
    pub heartbeat_interval: Duration,
    pub lease: Duration,
}

impl LeaseTimings {
    /// When to give the lease up, given when the last renewal that got through was sent.
    pub fn give_up_at(&self, sent: Instant) -> Instant {
        sent + self.lease.saturating_sub(self.heartbeat_interval)
    }
}

/// What the heartbeat of one run reports to.
#[derive(Debug, Clone)]
pub struct LeaseSignals {
    /// Cancellation was requested (the heartbeat's answer).
    pub cancel: CancellationToken,
    /// The run is no longer ours: refused, or given up.
    pub lease_lost: CancellationToken,
    /// The run task is done with the lease.
    pub done: CancellationToken,
}

/// Renews the lease every heartbeat interval until `done`. `claim_sent`: when the claim that took
/// the lease was sent (the lease's first renewal, in effect).
pub async fn heartbeat_loop<B: Broker>(
    broker: Arc<B>,
    metrics: Arc<Metrics>,
    timings: LeaseTimings,
    lease: Lease,
    claim_sent: Instant,
    signals: LeaseSignals,
) {
    let every = timings.heartbeat_interval;
    let mut give_up_at = timings.give_up_at(claim_sent);
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let give_up = |signals: &LeaseSignals| {
        tracing::warn!("no heartbeat got through in time: giving the run up before its lease can expire");
        signals.lease_lost.cancel();
    };
    loop {
        tokio::select! {
            biased;
            _ = signals.done.cancelled() => return,
            _ = signals.lease_lost.cancelled() => return,
            _ = tokio::time::sleep_until(give_up_at) => return give_up(&signals),
            _ = ticker.tick() => {}
        }
        let sent = Instant::now();
        let reply = tokio::select! {
            biased;
            _ = signals.done.cancelled() => return,
            _ = tokio::time::sleep_until(give_up_at) => return give_up(&signals),
            reply = tokio::time::timeout(every, broker.heartbeat_run(lease)) => reply,
        };
        match reply {
            Ok(Ok(reply)) => {
                give_up_at = give_up_at.max(timings.give_up_at(sent));
                if reply.cancel_requested && !signals.cancel.is_cancelled() {
                    tracing::info!("cancel requested (heartbeat)");
                    signals.cancel.cancel();
                }
            }
            Ok(Err(Error::LeaseLost(_))) => {
                signals.lease_lost.cancel();
                return;
            }
            failed => {
                metrics.heartbeat_failures.inc();
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(error = %why, "heartbeat failed");
            }
        }
    }
}

/// What `persist` needs to know of an error.
pub trait Retryable: std::fmt::Display {
    /// The same call may succeed later (the queue was unreachable).
    fn retryable(&self) -> bool;
    /// The run is no longer this worker's.
    fn lease_lost(&self) -> bool;
    /// The error for "the lease was given up while retrying".
    fn given_up() -> Self;
}

impl Retryable for Error {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
    fn lease_lost(&self) -> bool {
        matches!(self, Error::LeaseLost(_))
    }
    fn given_up() -> Self {
        Error::LeaseLost("lease given up".into())
    }
}

/// Pauses between tries while the queue is unreachable: from 100 ms, doubling up to 2 s, jittered.
pub fn retry_pauses() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Makes a queue call, again while the queue is unreachable, until the lease is given up (a lost
/// lease also gives it up). Every call is safe to repeat: a retry after a lost reply gets the first
/// answer.
pub async fn persist<T, E, F, Fut>(lease_lost: &CancellationToken, what: &str, mut call: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = retry_pauses();
    loop {
        // A call stuck on a dead connection gives way as soon as the lease is given up.
        let result = tokio::select! {
            r = call() => r,
            _ = lease_lost.cancelled() => Err(E::given_up()),
        };
        match result {
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, "{what}: the queue is unreachable; retrying");
                let pause = pauses.next().unwrap_or(Duration::from_secs(2));
                tokio::select! {
                    _ = lease_lost.cancelled() => return Err(E::given_up()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(e) if e.lease_lost() => {
                lease_lost.cancel();
                return Err(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_given_up_a_heartbeat_before_its_earliest_expiry() {
        let t = LeaseTimings { heartbeat_interval: Duration::from_millis(500), lease: Duration::from_millis(2000) };
        let sent = Instant::now();
        assert_eq!(t.give_up_at(sent) - sent, Duration::from_millis(1500));
    }
}
