//! The per-run event writer: a bounded queue in front of `append_events`. It batches what the run's
//! steps produce and writes a batch when `batch_max` events wait or `flush_interval` has passed since
//! the first of them: one round trip per batch. Batches are numbered 1, 2, 3 … within the attempt,
//! so a batch sent again after a lost reply is written once. A lost lease stops it and fires
//! `lease_lost`.

use crate::metrics::Metrics;
use runlane_core::Error;
use runlane_core::broker::Broker;
use runlane_core::model::{Lease, NewEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events waiting in the queue before producers wait (back-pressure on the step's output).
const QUEUE_CAPACITY: usize = 8192;

#[derive(Debug)]
enum Command {
    Event(NewEvent),
    /// Write everything queued before this, then answer.
    Flush(oneshot::Sender<Result<(), WriteError>>),
}

/// Why events could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("lease lost: events are no longer accepted for this run")]
    LeaseLost,
    #[error("the event writer has stopped")]
    Stopped,
}

/// A handle producers send events through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventWriter {
    tx: mpsc::Sender<Command>,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub flush_interval: Duration,
    pub batch_max: usize,
}

impl EventWriter {
    /// Starts the writer task for one run.
    pub fn spawn<B: Broker>(
        broker: Arc<B>,
        lease: Lease,
        opts: WriterOptions,
        lease_lost: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> (EventWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(write_loop(broker, lease, opts, rx, lease_lost, metrics));
        (EventWriter { tx }, task)
    }

    /// Queues one event (waits while the queue is full).
    pub async fn send(&self, event: NewEvent) -> Result<(), WriteError> {
        self.tx.send(Command::Event(event)).await.map_err(|_| WriteError::Stopped)
    }

    /// Waits until everything sent before is written.
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Command::Flush(ack)).await.map_err(|_| WriteError::Stopped)?;
        done.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn write_loop<B: Broker>(
    broker: Arc<B>,
    lease: Lease,
    opts: WriterOptions,
    mut rx: mpsc::Receiver<Command>,
    lease_lost: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<NewEvent> = Vec::with_capacity(opts.batch_max);
    let mut acks: Vec<oneshot::Sender<Result<(), WriteError>>> = Vec::new();
    let mut lost = false;
    let mut batch_no = 0;
    loop {
        let Some(first) = rx.recv().await else { break };
        let deadline = Instant::now() + opts.flush_interval;
        let mut next = Some(first);
        // Gather until the batch is full, a flush is asked for, or the deadline passes.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Event(e) => {
                    if !lost {
                        batch.push(e);
                    }
                }
                Command::Flush(ack) => {
                    acks.push(ack);
                    break;
                }
            }
            if batch.len() >= opts.batch_max {
                break;
            }
            next = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => Some(cmd),
                Ok(None) | Err(_) => None,
            };
        }
        if !batch.is_empty() && !lost {
            batch_no += 1;
            lost = !write_batch(&*broker, lease, batch_no, &batch, &lease_lost, &metrics).await;
        }
        batch.clear();
        let answer = if lost { Err(WriteError::LeaseLost) } else { Ok(()) };
        for ack in acks.drain(..) {
            let _ = ack.send(answer.clone());
        }
    }
}

/// Writes one batch, retrying while the database is unreachable. False: the lease is lost.
async fn write_batch<B: Broker>(
    broker: &B,
    lease: Lease,
    batch_no: i32,
    batch: &[NewEvent],
    lease_lost: &CancellationToken,
    metrics: &Metrics,
) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        match broker.append_events(lease, batch_no, batch).await {
            Ok(_) => {
                metrics.events_written.add(batch.len() as u64);
                return true;
            }
            Err(Error::LeaseLost(_)) => {
                lease_lost.cancel();
                return false;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(run_id = %lease.run_id, error = %e, "writing events failed; retrying");
                tokio::select! {
                    _ = lease_lost.cancelled() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                // Not retryable and not a lease problem: a bug or a refused batch. Drop it, say so once.
                tracing::error!(run_id = %lease.run_id, error = %e, events = batch.len(), "events dropped");
                metrics.events_dropped.add(batch.len() as u64);
                return true;
            }
        }
    }
}
