//! Batches across runs (`apply_ops`, over PostgreSQL and over the executor API): each item is fenced
//! by its own lease and answered on its own, so one stale lease never fails the others; a batch
//! whose arrays do not line up is refused whole.

use runlane_core::broker::Broker;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::ops::{Completion, RunOps, StepFinish};
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_worker::http_broker::HttpBroker;

fn registration(host: &str) -> WorkerRegistration {
    WorkerRegistration {
        host: host.into(),
        lanes: vec![Lane::A],
        slots: 8,
        version: "test".into(),
        capabilities: vec![],
        lease_ms: 60_000,
        kill_grace_ms: 0,
    }
}

/// Output, the step's end and the run's end for one run: what a worker sends for a no-op run.
fn ending(lease: Lease, line: &str) -> RunOps {
    RunOps {
        lease,
        op: 1,
        events: vec![NewEvent::output(0, Stream::Stdout, line)],
        finish: Some(StepFinish { step: 0, status: StepStatus::Succeeded, exit_code: Some(0), error: None }),
        start: None,
        complete: Some(Completion { outcome: Outcome::Succeeded, result: None, error: None }),
    }
}

/// Five runs claimed by one worker; the third is then requeued by the sweeper and claimed by
/// another. The first worker's batch for all five: four commit, the third is refused with RL001
/// and leaves no trace on the run its new holder is running.
async fn one_stale_lease_in_a_batch(t: &TestDb, broker: &impl Broker) {
    t.apply_noop().await;
    for _ in 0..5 {
        t.enqueue("noop", Lane::A).await;
    }
    let first = broker.register_worker(&registration("first")).await.expect("register");
    let claimed = broker.claim_runs(first, &[Lane::A], 5, None).await.expect("claim");
    assert_eq!(claimed.len(), 5);
    let stale = &claimed[2];
    sqlx::query("UPDATE runlane.runs SET lease_expires_at = now() - interval '1 hour' WHERE id = $1")
        .bind(stale.run_id)
        .execute(&t.pool)
        .await
        .expect("expire one lease");
    assert_eq!(db::sweep(&t.pool).await.expect("sweep").requeued, 1);
    let second = broker.register_worker(&registration("second")).await.expect("register");
    let taken = broker.claim_runs(second, &[Lane::A], 1, None).await.expect("claim again");
    assert_eq!(taken[0].run_id, stale.run_id);
    let events_before = db::read_events(&t.pool, stale.run_id, 0, 1000).await.expect("events").len();

    let items: Vec<RunOps> = claimed.iter().map(|c| ending(c.lease(), &format!("from {}", c.run_id))).collect();
    let answers = broker.apply_ops(&items).await.expect("the batch call");
    assert_eq!(answers.len(), 5);
    for (i, (answer, run)) in answers.iter().zip(&claimed).enumerate() {
        assert_eq!(answer.item, i as i32 + 1, "answers come in item order");
        if run.run_id == stale.run_id {
            assert_eq!(answer.code, "RL001", "the stale item is refused: {answer:?}");
            continue;
        }
        assert_eq!((answer.code.as_str(), answer.status.as_deref()), ("ok", Some("succeeded")), "{answer:?}");
        let events = db::read_events(&t.pool, run.run_id, 0, 1000).await.expect("events");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["run.queued", "run.claimed", "step.started", "step.output", "step.finished", "run.finished"],
            "run {} has its whole trail",
            run.run_id
        );
        assert_eq!(events[3].body.as_deref(), Some(format!("from {}", run.run_id).as_str()));
        assert_eq!(answer.last_seq, Some(events[5].seq));
        assert_eq!(t.status(run.run_id).await, "succeeded");
    }
    let rec = db::get_run(&t.pool, stale.run_id).await.expect("run");
    assert_eq!((rec.status.as_str(), rec.attempt), ("running", 2), "the new holder keeps the run");
    let events_after = db::read_events(&t.pool, stale.run_id, 0, 1000).await.expect("events");
    assert_eq!(events_after.len(), events_before, "nothing of the stale item was written");
    let steps = db::run_steps(&t.pool, stale.run_id).await.expect("steps");
    assert!(steps.iter().all(|s| s.attempt == 2 || s.status == "running"), "{steps:?}");
}

#[tokio::test]
async fn one_stale_lease_in_a_batch_is_refused_and_the_others_commit() {
    let t = TestDb::new().await;
    one_stale_lease_in_a_batch(&t, &t.broker()).await;
}

#[tokio::test]
async fn one_stale_lease_in_a_batch_over_the_executor_api_is_refused_and_the_others_commit() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let broker = HttpBroker::new(&api.base, &worker_token).expect("http broker");
    one_stale_lease_in_a_batch(&t, &broker).await;
}

#[tokio::test]
async fn a_batch_whose_arrays_do_not_line_up_is_refused_whole() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    // One run and one lease, but two of everything else: the extra entries would otherwise be items
    // of their own with no run, silently dropped.
    let err = sqlx::query(
        "SELECT * FROM runlane.apply_ops(ARRAY[$1::uuid], ARRAY[$2::uuid], '{NULL,NULL}', '{0,NULL}',
             '{succeeded,NULL}', '{NULL,NULL}', '{NULL,NULL}', '{NULL,NULL}', '{succeeded,NULL}',
             '{NULL,NULL}', '{NULL,NULL}', '{}', '{}', '{}', '{}', '{}', '{}')",
    )
    .bind(run)
    .bind(lease.token)
    .fetch_all(&t.pool)
    .await
    .expect_err("mismatched arrays are refused");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("RL422"), "{err}");
    assert_eq!(t.status(run).await, "running", "nothing of the batch was applied");
    // One event array shorter than the others.
    let err = sqlx::query(
        "SELECT * FROM runlane.apply_ops(ARRAY[$1::uuid], ARRAY[$2::uuid], '{NULL}', '{NULL}', '{NULL}', '{NULL}',
             '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{1,1}', '{step.output,step.output}', '{0,0}',
             '{stdout,stdout}', '{a}', '{NULL,NULL}')",
    )
    .bind(run)
    .bind(lease.token)
    .fetch_all(&t.pool)
    .await
    .expect_err("mismatched event arrays are refused");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("RL422"), "{err}");
}

#[tokio::test]
async fn an_enqueue_batch_whose_arrays_do_not_line_up_is_refused_whole() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    // Two templates and two params, one of everything else.
    let err = sqlx::query(
        "SELECT * FROM runlane.enqueue_runs('{noop,noop}', '{\"{}\",\"{}\"}', '{A}', '{NULL}', '{NULL}', '{NULL}',
             '{NULL}')",
    )
    .fetch_all(&t.pool)
    .await
    .expect_err("mismatched arrays are refused");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("RL422"), "{err}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 0, "nothing was enqueued");
}

/// `runs` runs' items, each with `lines` output lines of `width` bytes, handed to one batcher at
/// once: more than one call may carry, so the batcher splits them; every item commits.
async fn many_chatty_items_through_one_batcher(
    t: &TestDb,
    broker: impl Broker,
    runs: usize,
    lines: usize,
    width: usize,
) {
    use runlane_worker::batcher::{Batcher, BatcherOptions};
    t.apply_noop().await;
    for _ in 0..runs {
        t.enqueue("noop", Lane::A).await;
    }
    let worker = broker.register_worker(&registration("chatty")).await.expect("register");
    let claimed = broker.claim_runs(worker, &[Lane::A], runs as u32, None).await.expect("claim");
    assert_eq!(claimed.len(), runs);
    let metrics = std::sync::Arc::new(runlane_worker::metrics::Metrics::default());
    let (batcher, _) = Batcher::spawn(std::sync::Arc::new(broker), BatcherOptions::default(), metrics);
    let items = claimed.iter().map(|c| RunOps {
        lease: c.lease(),
        op: 1,
        events: (0..lines).map(|i| NewEvent::output(0, Stream::Stdout, format!("{i:0width$}"))).collect(),
        finish: None,
        start: None,
        complete: None,
    });
    let answers = futures_util::future::join_all(items.map(|item| batcher.submit(item))).await;
    for (answer, run) in answers.into_iter().zip(&claimed) {
        answer.unwrap_or_else(|e| panic!("run {}: {e}", run.run_id));
    }
    let ids: Vec<RunId> = claimed.iter().map(|c| c.run_id).collect();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runlane.run_events WHERE kind = 'step.output' AND run_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&t.pool)
            .await
            .expect("count");
    assert_eq!(stored, (runs * lines) as i64);
}

#[tokio::test]
async fn a_batcher_splits_what_one_call_cannot_carry() {
    let t = TestDb::new().await;
    // 60,000 events against 20,000 a call.
    many_chatty_items_through_one_batcher(&t, t.broker(), 60, 1000, 8).await;
}

#[tokio::test]
async fn a_batcher_splits_what_one_request_to_the_executor_api_cannot_carry() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let broker = || HttpBroker::new(&api.base, &worker_token).expect("http broker");
    // 60,000 events against 20,000 a call; then 16 MiB of output against the API's 8 MiB a request.
    many_chatty_items_through_one_batcher(&t, broker(), 60, 1000, 8).await;
    many_chatty_items_through_one_batcher(&t, broker(), 40, 100, 4096).await;
}
