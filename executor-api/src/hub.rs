//! One LISTEN connection for the whole API, fanned out to every SSE client through a broadcast
//! channel: event pointers, lane wake-ups and cancel requests (see `runlane_core::notices`).

use runlane_core::model::Lane;
use runlane_core::notices::{self, CANCEL_CHANNEL, EVENTS_CHANNEL, Notice, lane_channel};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Notice>,
}

impl Hub {
    /// Starts listening until `stop` (the listener holds a pool connection: a pool closes only
    /// after it is back). Slow subscribers lag (and re-read), they never block the hub.
    pub async fn start(pool: &PgPool, stop: CancellationToken) -> Result<Hub, sqlx::Error> {
        let mut channels: Vec<String> = Lane::ALL.iter().map(|l| lane_channel(*l)).collect();
        channels.push(CANCEL_CHANNEL.into());
        channels.push(EVENTS_CHANNEL.into());
        let mut rx = notices::listen(pool, &channels, 4096).await?;
        let (tx, _) = broadcast::channel(4096);
        let fan_out = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    notice = rx.recv() => match notice {
                        Some(n) => { let _ = fan_out.send(n); }
                        None => return,
                    },
                }
            }
        });
        Ok(Hub { tx })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}
