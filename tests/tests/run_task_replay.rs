//! A run task whose replies get lost: every write it retries is recorded once and the run ends as
//! it should; a step the queue refuses to record never ends in success.

use runlane_core::broker::PgBroker;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::settings::WorkerSettings;
use runlane_tests::TestDb;
use runlane_tests::lossy::LossyBroker;
use runlane_worker::batcher::{Batcher, BatcherOptions};
use runlane_worker::executors::{http::HttpExecutor, noop::NoopExecutor, shell::ShellExecutor};
use runlane_worker::metrics::Metrics;
use runlane_worker::run_task::{self, Executors, RunEnd, RunSignals, Shared};
use serde_json::json;
use std::sync::{Arc, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Claims the one queued run of `template` and runs it to its end through `broker`; returns how
/// many replies the broker lost.
async fn run_through(t: &TestDb, template: &str, broker: LossyBroker<PgBroker>) -> (RunId, RunEnd, u32) {
    let run = t.enqueue(template, Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let work_dir = std::env::temp_dir().join(format!("runlane-replay-{}", uuid::Uuid::new_v4().simple()));
    let settings = WorkerSettings { work_dir: work_dir.clone(), lease_ms: 60_000, ..Default::default() };
    let broker = Arc::new(broker);
    let metrics = Arc::new(Metrics::default());
    let (batcher, _task) = Batcher::spawn(broker.clone(), BatcherOptions::default(), metrics.clone());
    let shared = Arc::new(Shared {
        broker,
        batcher,
        worker_id: RwLock::new(worker),
        settings,
        metrics,
        executors: Executors {
            shell: ShellExecutor,
            http: HttpExecutor::new().expect("http client"),
            noop: NoopExecutor,
            docker: None,
        },
        secret_env_values: Vec::new(),
    });
    let sent = Instant::now();
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim").remove(0);
    let signals = RunSignals { cancel: CancellationToken::new(), interrupt: CancellationToken::new() };
    let end = run_task::execute(shared.clone(), claimed, signals, sent).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let lost = *shared.broker.lost.lock().expect("lost");
    (run, end, lost)
}

async fn apply_two_steps(t: &TestDb) {
    t.apply(
        "two",
        json!({"steps": [
            {"name": "write", "kind": "shell", "command": "echo hello; echo report > \"$RUNLANE_ARTIFACTS/r.txt\""},
            {"name": "after", "kind": "noop"}
        ]}),
    )
    .await;
}

async fn count(t: &TestDb, run: RunId, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).bind(run).fetch_one(&t.pool).await.expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lost_reply_is_retried_and_recorded_once() {
    let t = TestDb::new().await;
    apply_two_steps(&t).await;
    let broker = LossyBroker::new(t.broker(), true, false);
    let (run, end, lost) = run_through(&t, "two", broker).await;
    assert!(lost >= 3, "replies lost: {lost} (the step starts, the end and the artifact at least)");
    assert_eq!(end, RunEnd::Completed(RunStatus::Succeeded));
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!(rec.status, "succeeded");
    let kinds: Vec<String> =
        db::read_events(&t.pool, run, 0, 100).await.expect("events").into_iter().map(|e| e.kind).collect();
    for (kind, n) in [("step.started", 2), ("step.finished", 2), ("artifact.created", 1), ("run.finished", 1)] {
        assert_eq!(kinds.iter().filter(|k| *k == kind).count(), n, "{kind}: {kinds:?}");
    }
    let hello = count(&t, run, "SELECT count(*) FROM runlane.run_events WHERE run_id = $1 AND body = 'hello'").await;
    assert_eq!(hello, 1, "the output batch was written once");
    let succeeded =
        count(&t, run, "SELECT count(*) FROM runlane.run_steps WHERE run_id = $1 AND status = 'succeeded'").await;
    assert_eq!(succeeded, 2);
    assert_eq!(count(&t, run, "SELECT count(*) FROM runlane.artifacts WHERE run_id = $1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_queue_refuses_to_record_fails_the_run() {
    let t = TestDb::new().await;
    apply_two_steps(&t).await;
    let (run, end, _) = run_through(&t, "two", LossyBroker::new(t.broker(), false, true)).await;
    assert_eq!(end, RunEnd::Completed(RunStatus::Failed));
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!(rec.status, "failed");
    let error = rec.error.unwrap_or_default();
    assert!(error.contains("could not record the end of step 'write'"), "{error}");
}
