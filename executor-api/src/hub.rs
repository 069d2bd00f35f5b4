//! One LISTEN connection for the whole API, fanned out to every SSE client through a broadcast
//! channel: event pointers (`run_id:seq`), lane wake-ups and cancel requests.

use runlane_core::broker::{CANCEL_CHANNEL, EVENTS_CHANNEL, lane_channel};
use runlane_core::model::{Lane, RunId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubNotice {
    Event {
        run: RunId,
        seq: i64,
    },
    LaneReady(Lane),
    Cancel(RunId),
    /// The listener reconnected: anything may have been missed; readers re-read.
    Resumed,
}

#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<HubNotice>,
}

impl Hub {
    /// Starts listening until `stop` (the listener holds a pool connection: a pool closes only
    /// after it is back). Slow subscribers lag (and re-read), they never block the hub.
    pub async fn start(pool: &PgPool, stop: CancellationToken) -> Result<Hub, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        let mut channels: Vec<String> = Lane::ALL.iter().map(|l| lane_channel(*l)).collect();
        channels.push(CANCEL_CHANNEL.into());
        channels.push(EVENTS_CHANNEL.into());
        listener.listen_all(channels.iter().map(String::as_str)).await?;
        let (tx, _) = broadcast::channel(4096);
        tokio::spawn(pump(listener, tx.clone(), stop));
        Ok(Hub { tx })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HubNotice> {
        self.tx.subscribe()
    }
}

async fn pump(mut listener: PgListener, tx: broadcast::Sender<HubNotice>, stop: CancellationToken) {
    let mut broken = false;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.try_recv() => r,
        };
        match received {
            Ok(Some(n)) => {
                if broken {
                    broken = false;
                    let _ = tx.send(HubNotice::Resumed);
                }
                if let Some(notice) = parse(n.channel(), n.payload()) {
                    let _ = tx.send(notice);
                }
            }
            Ok(None) => broken = true,
            Err(e) => {
                if !broken {
                    tracing::warn!(error = %e, "notification listener lost its connection; reconnecting");
                }
                broken = true;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

fn parse(channel: &str, payload: &str) -> Option<HubNotice> {
    if channel == EVENTS_CHANNEL {
        let (run, seq) = payload.split_once(':')?;
        return Some(HubNotice::Event { run: run.parse().ok()?, seq: seq.parse().ok()? });
    }
    if channel == CANCEL_CHANNEL {
        return payload.parse().ok().map(HubNotice::Cancel);
    }
    channel.strip_prefix("runlane_lane_").and_then(|l| l.parse().ok()).map(HubNotice::LaneReady)
}
