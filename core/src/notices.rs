//! LISTEN / NOTIFY, in one place: the channels, what their payloads mean, and a listener that
//! reconnects by itself. The worker (lane wake-ups, cancels), the API's hub (everything) and
//! `runlane tail` (event pointers) all listen through here.
//!
//! Notifications are wake-ups, never the data: a consumer reads rows after a notice, and polls as
//! well, since notices can be missed (a reconnect says so with [`Notice::Resumed`]). A listener
//! that stops reading cannot fill PostgreSQL's notification queue: [`listen`] keeps draining the
//! connection into a bounded channel and drops what a slow consumer has no room for (it re-reads
//! on its poll). (PostgreSQL's queue holds 8 GB by default; were it ever full, NOTIFY would fail the
//! committing transaction rather than wait.)

use crate::model::{Lane, RunId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;

/// A run became runnable in a lane: `runlane_lane_a` … `runlane_lane_d` (empty payload).
pub fn lane_channel(lane: Lane) -> String {
    format!("runlane_lane_{}", lane.as_str().to_ascii_lowercase())
}

/// A cancel was requested: the payload is the run id.
pub const CANCEL_CHANNEL: &str = "runlane_cancel";

/// Runs have new events: the payload is `run_id:last_seq` pointers, comma-separated, or `*` when a
/// batch's pointers did not fit (every follower re-reads).
pub const EVENTS_CHANNEL: &str = "runlane_events";

/// Which runs have new events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPointers {
    /// These runs, up to these seqs.
    Runs(Vec<(RunId, i64)>),
    /// Some runs (too many to name): every follower re-reads.
    All,
}

impl EventPointers {
    /// Whether a follower of `run` that has read up to `after` has something new to read.
    pub fn concerns(&self, run: RunId, after: i64) -> bool {
        match self {
            EventPointers::All => true,
            EventPointers::Runs(runs) => runs.iter().any(|(r, seq)| *r == run && *seq > after),
        }
    }
}

/// A wake-up from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A run became runnable in this lane.
    LaneReady(Lane),
    /// Cancellation was requested for this run.
    Cancel(RunId),
    /// Runs have new events.
    Events(EventPointers),
    /// The listener was interrupted and is back: anything may have been missed.
    Resumed,
}

/// What a notification on `channel` with `payload` means (None: not a channel of ours, or garbled).
pub fn parse(channel: &str, payload: &str) -> Option<Notice> {
    if channel == EVENTS_CHANNEL {
        if payload == "*" {
            return Some(Notice::Events(EventPointers::All));
        }
        let runs = payload
            .split(',')
            .map(|p| {
                let (run, seq) = p.split_once(':')?;
                Some((run.parse().ok()?, seq.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        return Some(Notice::Events(EventPointers::Runs(runs)));
    }
    if channel == CANCEL_CHANNEL {
        return payload.parse().ok().map(Notice::Cancel);
    }
    channel.strip_prefix("runlane_lane_").and_then(|l| l.parse().ok()).map(Notice::LaneReady)
}

/// Listens on `channels` until the receiver is dropped; reconnects after a failure and then sends
/// `Resumed`. At most `capacity` notices wait; past that they are dropped (see the module doc).
pub async fn listen(pool: &PgPool, channels: &[String], capacity: usize) -> sqlx::Result<mpsc::Receiver<Notice>> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().map(String::as_str)).await?;
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(pump(listener, tx));
    Ok(rx)
}

async fn pump(mut listener: PgListener, tx: mpsc::Sender<Notice>) {
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return,
            r = listener.try_recv() => r,
        };
        let notice = match received {
            Ok(Some(n)) => match parse(n.channel(), n.payload()) {
                Some(notice) => notice,
                None => continue,
            },
            // The connection was lost (Ok(None)) or could not be used: connect and LISTEN again now,
            // so the consumer hears `Resumed` as soon as notices flow again.
            Ok(None) | Err(_) => {
                if reconnect(&mut listener, &tx).await.is_err() {
                    return;
                }
                Notice::Resumed
            }
        };
        if offer(&tx, notice).is_err() {
            return;
        }
    }
}

/// Connects the listener again (sqlx re-issues its LISTENs with the connection), pausing between
/// tries. Err: the consumer went away meanwhile.
async fn reconnect(listener: &mut PgListener, tx: &mpsc::Sender<Notice>) -> Result<(), ()> {
    tracing::warn!("notification connection lost; reconnecting");
    loop {
        tokio::select! {
            _ = tx.closed() => return Err(()),
            r = sqlx::query("SELECT 1").execute(&mut *listener) => if r.is_ok() { return Ok(()) },
        }
        tokio::select! {
            _ = tx.closed() => return Err(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Sends without waiting; a full channel drops the notice (the consumer polls). Err: no consumer.
fn offer(tx: &mpsc::Sender<Notice>, notice: Notice) -> Result<(), ()> {
    match tx.try_send(notice) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_notices() {
        let a: RunId = "01a205d0-0000-7000-8000-000000000001".parse().expect("id");
        let b: RunId = "01a205d0-0000-7000-8000-000000000002".parse().expect("id");
        let events = parse(EVENTS_CHANNEL, &format!("{a}:7,{b}:3")).expect("events");
        let Notice::Events(pointers) = events else { panic!("not events") };
        assert!(pointers.concerns(a, 6) && !pointers.concerns(a, 7) && pointers.concerns(b, 0));
        assert_eq!(parse(EVENTS_CHANNEL, "*"), Some(Notice::Events(EventPointers::All)));
        assert_eq!(parse(EVENTS_CHANNEL, "garbage"), None);
        assert_eq!(parse(CANCEL_CHANNEL, &a.to_string()), Some(Notice::Cancel(a)));
        assert_eq!(parse(&lane_channel(Lane::C), ""), Some(Notice::LaneReady(Lane::C)));
        assert_eq!(parse("other", ""), None);
    }
}
