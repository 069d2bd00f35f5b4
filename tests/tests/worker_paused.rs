//! The worker's timing, step by step on tokio's paused clock against a recording broker: the
//! batcher sends at once when idle and gathers while a call is in flight; a run's writer waits its
//! flush interval for events and sends a step's end with the next start; a lease is renewed while
//! renewals get through and given up exactly one heartbeat interval before it could expire when
//! they do not.

use runlane_core::model::*;
use runlane_core::ops::{Applied, RunOps, StepFinish};
use runlane_tests::recording::{RecordingBroker, Renewals, lease};
use runlane_worker::batcher::{Batcher, BatcherOptions};
use runlane_worker::lease::{LeaseSignals, LeaseTimings, heartbeat_loop};
use runlane_worker::metrics::Metrics;
use runlane_worker::run_writer::{RunWriter, WriterOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lets every task that can run do so (the paused clock does not move while any can).
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn events_only(lease: Lease, lines: usize) -> RunOps {
    let events = (0..lines).map(|i| NewEvent::output(0, Stream::Stdout, format!("line {i}"))).collect();
    RunOps { lease, op: 1, events, finish: None, start: None, complete: None }
}

fn batcher(broker: &Arc<RecordingBroker>, max_in_flight: usize) -> Batcher {
    let opts = BatcherOptions { max_items: 500, max_in_flight };
    Batcher::spawn(broker.clone(), opts, Arc::new(Metrics::default())).0
}

#[tokio::test(start_paused = true)]
async fn the_batcher_sends_at_once_when_idle_and_gathers_while_its_call_is_in_flight() {
    let broker = Arc::new(RecordingBroker::holding_ops());
    let batcher = batcher(&broker, 1);
    let submit = |item: RunOps| {
        let b = batcher.clone();
        tokio::spawn(async move { b.submit(item).await })
    };
    let first = submit(events_only(lease(), 1));
    settle().await;
    assert_eq!(broker.batches().len(), 1, "an idle batcher sends the first item at once");

    let rest: Vec<_> = (0..3).map(|_| submit(events_only(lease(), 2))).collect();
    settle().await;
    assert_eq!(broker.batches().len(), 1, "the others wait for the one call slot");
    broker.let_through(1);
    first.await.expect("task").expect("the first item applied");
    settle().await;
    let batches = broker.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].len(), 3, "everything that waited leaves in one call");
    broker.let_through(1);
    for r in rest {
        let applied = r.await.expect("task").expect("applied");
        assert!(applied.last_seq.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_runs_writer_waits_its_flush_interval_and_sends_a_steps_end_with_the_next_start() {
    let broker = Arc::new(RecordingBroker::new());
    let opts = WriterOptions { flush_interval: Duration::from_millis(25), batch_max: 5000 };
    let metrics = Arc::new(Metrics::default());
    let run = lease();
    let (writer, _task) = RunWriter::spawn(batcher(&broker, 2), run, opts, CancellationToken::new(), metrics);
    for i in 0..3 {
        writer.send(NewEvent::output(0, Stream::Stdout, format!("line {i}"))).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(24)).await;
    assert!(broker.batches().is_empty(), "events wait for the flush interval");
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    let batches = broker.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0][0].op, batches[0][0].events.len(), batches[0][0].finish.is_some()), (1, 3, false));

    let end = StepFinish { step: 0, status: StepStatus::Succeeded, exit_code: Some(0), error: None };
    writer.finish_step(end.clone()).await.expect("finish");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broker.batches().len(), 1, "a step's end alone does not leave");
    let started: Applied = writer.start_step(1).await.expect("start");
    let batches = broker.batches();
    assert_eq!(batches.len(), 2);
    let item = &batches[1][0];
    assert_eq!((item.op, item.finish.as_ref(), item.start), (2, Some(&end), Some(1)), "{item:?}");
    assert_eq!(started.last_seq, Some(2 + 3 + 2), "seqs follow the run's writes");
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_of_events_leaves_without_waiting() {
    let broker = Arc::new(RecordingBroker::new());
    let opts = WriterOptions { flush_interval: Duration::from_secs(60), batch_max: 10 };
    let (writer, _task) =
        RunWriter::spawn(batcher(&broker, 2), lease(), opts, CancellationToken::new(), Arc::new(Metrics::default()));
    let start = Instant::now();
    for i in 0..10 {
        writer.send(NewEvent::output(0, Stream::Stdout, format!("line {i}"))).await.expect("send");
    }
    settle().await;
    assert_eq!(broker.batches().len(), 1);
    assert_eq!(broker.batches()[0][0].events.len(), 10);
    assert_eq!(Instant::now(), start, "no time passed");
}

fn signals() -> LeaseSignals {
    LeaseSignals {
        cancel: CancellationToken::new(),
        lease_lost: CancellationToken::new(),
        done: CancellationToken::new(),
    }
}

const TIMINGS: LeaseTimings =
    LeaseTimings { heartbeat_interval: Duration::from_secs(5), lease: Duration::from_secs(15) };

/// Keeps a lease through `broker` from now; returns the signals and when it started.
fn keep_lease(broker: &Arc<RecordingBroker>) -> (LeaseSignals, Instant, tokio::task::JoinHandle<()>) {
    let s = signals();
    let start = Instant::now();
    let task =
        tokio::spawn(heartbeat_loop(broker.clone(), Arc::new(Metrics::default()), TIMINGS, lease(), start, s.clone()));
    (s, start, task)
}

#[tokio::test(start_paused = true)]
async fn renewals_that_get_through_keep_the_lease_and_carry_a_cancel() {
    let broker = Arc::new(RecordingBroker::new());
    let (s, _start, task) = keep_lease(&broker);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!s.lease_lost.is_cancelled(), "kept for a minute, four leases long");
    assert_eq!(broker.renewals(), 12, "one renewal per interval");
    assert!(!s.cancel.is_cancelled());
    broker.set_renewals(Renewals::Answer { cancel_requested: true });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(s.cancel.is_cancelled(), "a renewal's answer carries the cancel");
    assert!(!s.lease_lost.is_cancelled());
    s.done.cancel();
    task.await.expect("the heartbeat ends with the run");
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_renewals_hang_or_fail_is_given_up_one_interval_before_it_could_expire() {
    for mode in [Renewals::Hang, Renewals::Fail] {
        let broker = Arc::new(RecordingBroker::new());
        let (s, start, task) = keep_lease(&broker);
        tokio::time::sleep(Duration::from_secs(12)).await;
        broker.set_renewals(mode);
        s.lease_lost.cancelled().await;
        // The renewal sent at 10 s got through: the lease cannot expire before 25 s; given up at 20 s.
        assert_eq!(Instant::now() - start, Duration::from_secs(20), "{mode:?}");
        task.await.expect("the heartbeat ends");
        assert_eq!(broker.renewals(), 3, "{mode:?}: renewals at 5, 10 and 15 s (the last one hangs or fails)");
    }
}
