//! Everything a run task writes about its run goes through its writer, in order: output events
//! (gathered until `batch_max` or `MAX_ITEM_BYTES` of them wait, or `flush_interval` passed since
//! the first), step transitions
//! and the attempt's end. The writer numbers its items 1, 2, 3 … within the attempt and has at most
//! one with the batcher at a time, so a retry after a lost reply is always the last item, answered
//! and written once.
//!
//! Finishing a step does not wait: the finish rides with the next write that does (the next step's
//! start, the end), so the finish is recorded no later than what follows it, in the same commit.

use crate::batcher::Batcher;
use crate::lease::persist;
use crate::metrics::Metrics;
use runlane_core::model::{Lease, NewEvent, Outcome, RunStatus};
use runlane_core::ops::{Applied, Completion, MAX_ITEM_BYTES, RunOps, StepFinish};
use runlane_core::{Error, Result};
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
    /// Write everything sent before this, then answer.
    Flush(oneshot::Sender<Result<(), WriteError>>),
    /// A step's end, written with the next write that waits.
    Finish(StepFinish),
    /// Write everything sent before, then this (a step's start or the attempt's end), then answer.
    Write {
        start: Option<i32>,
        complete: Option<Completion>,
        ack: oneshot::Sender<Result<Applied>>,
    },
}

/// Why events could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("lease lost: events are no longer accepted for this run")]
    LeaseLost,
    #[error("the run's writer has stopped")]
    Stopped,
}

/// A handle the run's producers write through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunWriter {
    tx: mpsc::Sender<Command>,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub flush_interval: Duration,
    pub batch_max: usize,
}

impl RunWriter {
    /// Starts the writer task for one run.
    pub fn spawn(
        batcher: Batcher,
        lease: Lease,
        opts: WriterOptions,
        lease_lost: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> (RunWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let state = Writer { batcher, lease, lease_lost, metrics, op: 0, lost: false };
        let task = tokio::spawn(write_loop(state, opts, rx));
        (RunWriter { tx }, task)
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

    /// Records a step's end with the next write that waits (see the module doc).
    pub async fn finish_step(&self, finish: StepFinish) -> Result<()> {
        self.tx.send(Command::Finish(finish)).await.map_err(|_| writer_stopped())
    }

    /// Records a step's start (with what waits before it) and returns once it committed.
    pub async fn start_step(&self, step: i32) -> Result<Applied> {
        self.write(Some(step), None).await
    }

    /// Ends the attempt (with what waits before it); returns the run's status afterwards.
    pub async fn complete(&self, outcome: Outcome, error: Option<String>) -> Result<RunStatus> {
        let applied = self.write(None, Some(Completion { outcome, result: None, error })).await?;
        applied.status.ok_or_else(|| Error::Schema("the queue answered an ending without the run's status".into()))
    }

    async fn write(&self, start: Option<i32>, complete: Option<Completion>) -> Result<Applied> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Command::Write { start, complete, ack }).await.map_err(|_| writer_stopped())?;
        done.await.map_err(|_| writer_stopped())?
    }
}

fn writer_stopped() -> Error {
    Error::LeaseLost("the run's writer has stopped".into())
}

/// The writer task's state.
struct Writer {
    batcher: Batcher,
    lease: Lease,
    lease_lost: CancellationToken,
    metrics: Arc<Metrics>,
    /// The last item's number.
    op: i32,
    /// The lease is gone: nothing more is written.
    lost: bool,
}

async fn write_loop(mut w: Writer, opts: WriterOptions, mut rx: mpsc::Receiver<Command>) {
    let mut events: Vec<NewEvent> = Vec::with_capacity(opts.batch_max);
    let mut bytes = 0;
    let mut finish: Option<StepFinish> = None;
    let mut acks: Vec<oneshot::Sender<Result<(), WriteError>>> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let deadline = Instant::now() + opts.flush_interval;
        let mut next = Some(first);
        let mut write = None;
        // Gather until the batch is full, a flush or a write is asked for, or the deadline passes.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Event(e) => {
                    bytes += 32 + e.body.as_ref().map_or(0, String::len);
                    events.push(e);
                }
                Command::Finish(f) => finish = Some(f),
                Command::Flush(ack) => {
                    acks.push(ack);
                    break;
                }
                Command::Write { start, complete, ack } => {
                    write = Some((start, complete, ack));
                    break;
                }
            }
            if events.len() >= opts.batch_max || bytes >= MAX_ITEM_BYTES {
                break;
            }
            next = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => Some(cmd),
                Ok(None) | Err(_) => None,
            };
        }
        bytes = 0;
        let (start, complete, ack) = match write {
            Some((start, complete, ack)) => (start, complete, Some(ack)),
            None => (None, None, None),
        };
        let waits = ack.is_some() || !acks.is_empty();
        // Events alone leave on their own cadence; a pending finish waits for the next write.
        let result = if events.is_empty() && start.is_none() && complete.is_none() && (finish.is_none() || !waits) {
            Ok(Applied { last_seq: None, status: None })
        } else {
            let item = RunOps {
                lease: w.lease,
                op: 0,
                events: std::mem::take(&mut events),
                finish: if start.is_some() || complete.is_some() || waits { finish.take() } else { None },
                start,
                complete,
            };
            w.send(item).await
        };
        let flushed = match &result {
            Err(Error::LeaseLost(_)) => Err(WriteError::LeaseLost),
            _ if w.lost => Err(WriteError::LeaseLost),
            _ => Ok(()),
        };
        for a in acks.drain(..) {
            let _ = a.send(flushed.clone());
        }
        if let Some(ack) = ack {
            let _ = ack.send(result);
        }
    }
}

impl Writer {
    /// Sends one item (numbered here), again while the queue is unreachable, until the lease is
    /// given up. Events refused for another reason are dropped and counted (a step's output never
    /// fails its run); a refused transition is the caller's to handle.
    async fn send(&mut self, mut item: RunOps) -> Result<Applied> {
        if self.lost {
            return Err(Error::LeaseLost("lease given up".into()));
        }
        self.op += 1;
        item.op = self.op;
        let n_events = item.events.len() as u64;
        let transition = item.finish.is_some() || item.start.is_some() || item.complete.is_some();
        let batcher = &self.batcher;
        match persist(&self.lease_lost, "writing to the queue", || batcher.submit(item.clone())).await {
            Ok(applied) => {
                self.metrics.events_written.add(n_events);
                Ok(applied)
            }
            Err(Error::LeaseLost(m)) => {
                self.lost = true;
                Err(Error::LeaseLost(m))
            }
            Err(e) => {
                if !transition {
                    tracing::error!(run_id = %self.lease.run_id, error = %e, events = n_events, "events dropped");
                    self.metrics.events_dropped.add(n_events);
                }
                Err(e)
            }
        }
    }
}
