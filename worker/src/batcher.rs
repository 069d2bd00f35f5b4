//! One batcher per worker: every run task hands it its items (output events, step transitions, the
//! attempt's end) and it sends them to the queue in batches — one `apply_ops` call, one commit and one
//! NOTIFY for many runs, each item fenced by its own lease and answered on its own. A task's
//! `submit` returns once its item committed.
//!
//! Batching is natural rather than timed: a batch leaves as soon as a call slot is free, taking
//! everything that waits, up to `max_items` and what one call may carry (events and bytes: see
//! `runlane_core::ops`); the rest goes in the next. An idle worker's item goes at once; under load,
//! items gather while the calls in flight commit.

use crate::metrics::Metrics;
use runlane_core::broker::Broker;
use runlane_core::ops::{Applied, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_ITEMS, RunOps};
use runlane_core::{Error, Result};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone, Copy)]
pub struct BatcherOptions {
    /// Items in one call, at most (never more than `MAX_BATCH_ITEMS`).
    pub max_items: usize,
    /// Calls in flight at once (each is one transaction; PostgreSQL commits them together).
    pub max_in_flight: usize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        BatcherOptions { max_items: 500, max_in_flight: 2 }
    }
}

#[derive(Debug)]
struct Pending {
    item: RunOps,
    reply: oneshot::Sender<Result<Applied>>,
}

/// A handle run tasks submit through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batcher; it stops when every handle is dropped and the last batch is answered.
    pub fn spawn<B: Broker>(broker: Arc<B>, opts: BatcherOptions, metrics: Arc<Metrics>) -> (Batcher, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(opts.max_items * opts.max_in_flight.max(1) * 4);
        let task = tokio::spawn(batch_loop(broker, opts, rx, metrics));
        (Batcher { tx }, task)
    }

    /// Sends one item and waits until it committed (or was refused). A failed call is
    /// `Error::Unavailable` for each of its items: the caller sends the same item again, which is safe.
    pub async fn submit(&self, item: RunOps) -> Result<Applied> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Pending { item, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Unavailable("the worker's batcher has stopped".into())
}

async fn batch_loop<B: Broker>(
    broker: Arc<B>,
    opts: BatcherOptions,
    mut rx: mpsc::Receiver<Pending>,
    metrics: Arc<Metrics>,
) {
    let mut in_flight = JoinSet::new();
    let mut open = true;
    // An item that did not fit the last batch: it opens the next.
    let mut carried: Option<Pending> = None;
    let max_items = opts.max_items.clamp(1, MAX_BATCH_ITEMS);
    while open || !in_flight.is_empty() || carried.is_some() {
        tokio::select! {
            first = next(&mut carried, &mut rx), if (open || carried.is_some()) && in_flight.len() < opts.max_in_flight.max(1) => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let (mut events, mut bytes) = (first.item.events.len(), first.item.text_bytes());
                let mut batch = vec![first];
                while batch.len() < max_items {
                    let Ok(p) = rx.try_recv() else { break };
                    let (e, b) = (p.item.events.len(), p.item.text_bytes());
                    if events + e > MAX_BATCH_EVENTS || bytes + b > MAX_BATCH_BYTES {
                        carried = Some(p);
                        break;
                    }
                    (events, bytes) = (events + e, bytes + b);
                    batch.push(p);
                }
                in_flight.spawn(send_batch(broker.clone(), batch, metrics.clone()));
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
}

/// The item carried over from the last batch, or the next one to arrive.
async fn next(carried: &mut Option<Pending>, rx: &mut mpsc::Receiver<Pending>) -> Option<Pending> {
    match carried.take() {
        Some(p) => Some(p),
        None => rx.recv().await,
    }
}

/// One call for the batch; every item gets its own answer.
async fn send_batch<B: Broker>(broker: Arc<B>, batch: Vec<Pending>, metrics: Arc<Metrics>) {
    let items: Vec<RunOps> = batch.iter().map(|p| p.item.clone()).collect();
    metrics.batches.inc();
    metrics.batch_items.add(items.len() as u64);
    let started = std::time::Instant::now();
    let answered = broker.apply_ops(&items).await;
    tracing::debug!(items = items.len(), ms = started.elapsed().as_secs_f64() * 1e3, "batch");
    match answered {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome.into_result());
            }
        }
        Ok(outcomes) => {
            let why = format!("the queue answered {} items for a batch of {}", outcomes.len(), batch.len());
            for pending in batch {
                let _ = pending.reply.send(Err(Error::Schema(why.clone())));
            }
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let why = e.to_string();
            for pending in batch {
                let shared =
                    if retryable { Error::Unavailable(why.clone().into()) } else { Error::Schema(why.clone()) };
                let _ = pending.reply.send(Err(shared));
            }
        }
    }
}
