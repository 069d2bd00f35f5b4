//! Every worker call is safe to repeat after a lost reply: the same transition or the same batch
//! applied twice gives the same answer and writes once; and a run never succeeds while one of its
//! steps is unfinished or failed.

use runlane_core::db::{self, NewArtifact};
use runlane_core::model::*;
use runlane_core::ops::{Completion, RunOps, StepFinish};
use runlane_core::{Error, Result};
use runlane_tests::TestDb;
use serde_json::json;

async fn claim_one(t: &TestDb, template: &str) -> (RunId, Lease) {
    let run = t.enqueue(template, Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim");
    (run, claimed[0].lease())
}

async fn event_kinds(t: &TestDb, run: RunId) -> Vec<String> {
    db::read_events(&t.pool, run, 0, 1000).await.expect("events").into_iter().map(|e| e.kind).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test]
async fn step_transitions_event_batches_artifacts_and_completion_replay_without_writing_twice() {
    let t = TestDb::new().await;
    t.apply("two", json!({"steps": [{"name": "a", "kind": "noop"}, {"name": "b", "kind": "noop"}]})).await;
    let (run, lease) = claim_one(&t, "two").await;

    let first = db::start_step(&t.pool, lease, 0).await.expect("start");
    assert_eq!(db::start_step(&t.pool, lease, 0).await.expect("start again"), first, "same answer");

    let lines = [NewEvent::output(0, Stream::Stdout, "one"), NewEvent::output(0, Stream::Stdout, "two")];
    let last = db::append_events(&t.pool, lease, Some(1), &lines).await.expect("append");
    assert_eq!(db::append_events(&t.pool, lease, Some(1), &lines).await.expect("append again"), last);
    let next = db::append_events(&t.pool, lease, Some(2), &lines[..1]).await.expect("next batch");
    assert_eq!(next, last + 1, "the next batch is written");

    let artifact_id = ArtifactId(uuid::Uuid::now_v7());
    let artifact = NewArtifact {
        id: artifact_id,
        step: Some(0),
        name: "report.txt",
        content_type: "text/plain",
        size_bytes: 2,
        sha256: "6b51d431df5d7f141cbececcf79edf3dd861c3b4069f0b11661a3eefacbba918",
        inline_data: Some(b"hi"),
        store_key: None,
    };
    assert_eq!(db::put_artifact(&t.pool, lease, &artifact).await.expect("put"), artifact_id);
    assert_eq!(db::put_artifact(&t.pool, lease, &artifact).await.expect("put again"), artifact_id);
    let other = NewArtifact { id: ArtifactId(uuid::Uuid::now_v7()), step: Some(1), ..artifact.clone() };
    assert!(
        matches!(db::put_artifact(&t.pool, lease, &other).await, Err(Error::Conflict(_))),
        "another artifact of the same name in the same attempt is refused"
    );

    let finished = db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("finish");
    assert_eq!(
        db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("finish again"),
        finished
    );
    assert!(
        matches!(db::finish_step(&t.pool, lease, 0, StepStatus::Failed, Some(1), None).await, Err(Error::Conflict(_))),
        "a different transition of a finished step is a conflict"
    );
    assert!(
        matches!(db::start_step(&t.pool, lease, 0).await, Err(Error::Conflict(_))),
        "a finished step cannot start again in the same attempt"
    );
    db::start_step(&t.pool, lease, 1).await.expect("start b");
    db::finish_step(&t.pool, lease, 1, StepStatus::Succeeded, Some(0), None).await.expect("finish b");

    let done = db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("complete");
    assert_eq!(done, RunStatus::Succeeded);
    let again = db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("complete again");
    assert_eq!(again, RunStatus::Succeeded, "a replayed completion gets the first answer");

    let kinds = event_kinds(&t, run).await;
    assert_eq!(count(&kinds, "step.started"), 2, "{kinds:?}");
    assert_eq!(count(&kinds, "step.finished"), 2, "{kinds:?}");
    assert_eq!(count(&kinds, "step.output"), 3, "{kinds:?}");
    assert_eq!(count(&kinds, "artifact.created"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "run.finished"), 1, "{kinds:?}");
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM runlane.run_steps WHERE run_id = $1")
        .bind(run)
        .fetch_one(&t.pool)
        .await
        .expect("steps");
    assert_eq!(steps, 2);
}

#[tokio::test]
async fn a_replayed_completion_keeps_its_answer_after_the_run_moved_on() {
    let t = TestDb::new().await;
    t.apply("flaky", json!({"max_attempts": 2, "backoff_base_ms": 0, "steps": [{"name": "a", "kind": "noop"}]})).await;
    let (run, lease) = claim_one(&t, "flaky").await;
    let first = db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("boom")).await.expect("complete");
    assert_eq!(first, RunStatus::Queued, "a retry is scheduled");
    let worker = t.register(&[Lane::A], 60_000).await;
    let again = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim");
    assert_eq!(again[0].run_id, run, "the second attempt is claimed");
    let replay = db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("boom")).await.expect("replay");
    assert_eq!(replay, RunStatus::Queued, "the first attempt's replay gets the first answer");
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!((rec.status.as_str(), rec.failed_attempts), ("running", 1), "nothing written twice");
    let other = db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await;
    assert!(matches!(other, Err(Error::LeaseLost(_))), "another outcome on a spent lease: {other:?}");
}

fn expect_conflict<T: std::fmt::Debug>(what: &str, r: Result<T>, needle: &str) {
    match r {
        Err(Error::Conflict(m)) => assert!(m.contains(needle), "{what}: {m}"),
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_run_cannot_succeed_with_a_step_unfinished_failed_or_never_started() {
    let t = TestDb::new().await;
    t.apply(
        "three",
        json!({"steps": [{"name": "a", "kind": "noop"},
                         {"name": "b", "kind": "noop", "continue_on_error": true},
                         {"name": "c", "kind": "noop"}]}),
    )
    .await;
    // The claim starts the first step.
    let (run, lease) = claim_one(&t, "three").await;
    expect_conflict(
        "a running",
        db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await,
        "step 0 'a' is running",
    );
    db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("a succeeded");
    expect_conflict(
        "b never started",
        db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await,
        "step 1 'b' never started",
    );
    assert_eq!(t.status(run).await, "running", "every refusal left the run as it was");
    let (run, lease) = claim_one(&t, "three").await;
    db::finish_step(&t.pool, lease, 0, StepStatus::Failed, Some(1), Some("exit code 1")).await.expect("a failed");
    for i in [1, 2] {
        db::start_step(&t.pool, lease, i).await.expect("start");
        db::finish_step(&t.pool, lease, i, StepStatus::Succeeded, None, None).await.expect("finish");
    }
    expect_conflict(
        "a failed",
        db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await,
        "step 0 'a' failed",
    );
    assert_eq!(t.status(run).await, "running", "every refusal left the run as it was");

    // A failure of a continue_on_error step does not stop the run from succeeding.
    let (run, lease) = claim_one(&t, "three").await;
    for (i, status) in [(0, StepStatus::Succeeded), (1, StepStatus::Failed), (2, StepStatus::Succeeded)] {
        db::start_step(&t.pool, lease, i).await.expect("start");
        db::finish_step(&t.pool, lease, i, status, None, None).await.expect("finish");
    }
    let done = db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("complete");
    assert_eq!(done, RunStatus::Succeeded);
    assert_eq!(t.status(run).await, "succeeded");
}

#[tokio::test]
async fn a_run_cannot_succeed_after_starting_past_a_step_that_never_ran() {
    let t = TestDb::new().await;
    t.apply(
        "three",
        json!({"steps": [{"name": "a", "kind": "noop"}, {"name": "b", "kind": "noop"}, {"name": "c", "kind": "noop"}]}),
    )
    .await;
    // Through the per-run functions: a, then c, skipping b.
    let (run, lease) = claim_one(&t, "three").await;
    db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("a");
    db::start_step(&t.pool, lease, 2).await.expect("c may start: a failed run skips steps too");
    db::finish_step(&t.pool, lease, 2, StepStatus::Succeeded, Some(0), None).await.expect("c");
    expect_conflict(
        "b skipped",
        db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await,
        "step 1 'b' never started",
    );
    assert_eq!(t.status(run).await, "running");
    let failed = db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("b was skipped")).await.expect("fail");
    assert_eq!(failed, RunStatus::Failed);

    // Through one batch item: a's end and c's start together, then c's end with the run's.
    let (run, lease) = claim_one(&t, "three").await;
    let finish = |step| Some(StepFinish { step, status: StepStatus::Succeeded, exit_code: Some(0), error: None });
    let skip = RunOps { lease, op: 1, events: vec![], finish: finish(0), start: Some(2), complete: None };
    let end = RunOps {
        lease,
        op: 2,
        events: vec![],
        finish: finish(2),
        start: None,
        complete: Some(Completion { outcome: Outcome::Succeeded, result: None, error: None }),
    };
    assert_eq!(db::apply_ops(&t.pool, &[skip]).await.expect("batch")[0].code, "ok");
    let answer = db::apply_ops(&t.pool, &[end]).await.expect("batch").remove(0);
    assert_eq!(answer.code, "RL409", "{answer:?}");
    assert!(answer.message.as_deref().is_some_and(|m| m.contains("step 1 'b' never started")), "{answer:?}");
    assert_eq!(t.status(run).await, "running");
}
