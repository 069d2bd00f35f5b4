//! Every way a run becomes claimable puts it in its aging lane's line by its own wait: enqueue (one
//! or many), the sweeper's promotion of a due run, a requeue after an expired lease, a retry, an
//! interrupted hand-back, a failed attempt retried at once or after a backoff. And a change of a
//! lane's rate reaches the runs already in it.

use chrono::{DateTime, Duration, Utc};
use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;

const MS_PER_POINT: i32 = 1000;

async fn db_now(t: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&t.pool).await.expect("now")
}

fn request(template: &str, lane: Lane, priority: i32, run_at: DateTime<Utc>) -> EnqueueRequest {
    EnqueueRequest {
        template: template.into(),
        params: serde_json::json!({}),
        lane: Some(lane),
        priority: Some(priority),
        run_at: Some(run_at),
        ..Default::default()
    }
}

async fn enqueue_at(t: &TestDb, template: &str, lane: Lane, priority: i32, run_at: DateTime<Utc>) -> RunId {
    db::enqueue_run(&t.pool, &request(template, lane, priority, run_at)).await.expect("enqueue")
}

/// Sweeps as of `now`, never marking the test's workers gone.
async fn sweep_as_of(t: &TestDb, now: DateTime<Utc>) -> SweepReport {
    let opts = SweepOptions { now: Some(now), worker_timeout_s: Some(3600 * 24 * 365), ..Default::default() };
    db::sweep_at(&t.pool, &opts).await.expect("sweep")
}

async fn claim_lease(t: &TestDb, worker: WorkerId, run: RunId) -> Lease {
    let runs = db::claim_runs(&t.pool, worker, &[Lane::B], 1, None).await.expect("claim");
    assert_eq!(runs.first().map(|r| r.run_id), Some(run), "the lane held only this run");
    runs[0].lease()
}

/// Checks that `run` (queued, or scheduled and due at its run_at) stands in lane B's line by its own
/// run_at and priority at the lane's rate: a priority −100 run that has waited 50 s longer than the
/// run's priority is worth goes before it, one that has waited 50 s less goes after it. (Strict
/// priority would put the run first; first-come order, or a key from an older run_at, too.) `since`:
/// the run must count its wait from no earlier than this.
async fn assert_in_line(t: &TestDb, worker: WorkerId, path: &str, run: RunId, since: Option<DateTime<Utc>>) {
    let (status, run_at, priority, rate): (String, DateTime<Utc>, i32, Option<i32>) =
        sqlx::query_as("SELECT status, run_at, priority, aging_ms_per_point FROM runlane.runs WHERE id = $1")
            .bind(run)
            .fetch_one(&t.pool)
            .await
            .expect("run");
    assert!(status == "queued" || status == "scheduled", "{path}: {status}");
    assert_eq!(rate, Some(MS_PER_POINT), "{path}: the run carries its lane's rate");
    if let Some(since) = since {
        assert!(run_at >= since, "{path}: the wait restarts when the run is queued again ({run_at} < {since})");
    }
    let worth = Duration::milliseconds(i64::from(priority + 100) * i64::from(MS_PER_POINT));
    let older = enqueue_at(t, "noop", Lane::B, -100, run_at - worth - Duration::seconds(50)).await;
    let younger = enqueue_at(t, "noop", Lane::B, -100, run_at - worth + Duration::seconds(50)).await;
    if status == "scheduled" || run_at > db_now(t).await {
        assert!(sweep_as_of(t, run_at).await.promoted >= 1, "{path}: promoted when due");
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let runs = db::claim_runs(&t.pool, worker, &[Lane::B], 1, None).await.expect("claim");
        let r = runs.first().unwrap_or_else(|| panic!("{path}: the lane ran dry after {order:?}"));
        order.push(r.run_id);
        db::complete_run(&t.pool, r.lease(), Outcome::Cancelled, None, Some("checked")).await.expect("end");
    }
    assert_eq!(order, [older, run, younger], "{path}: the run stands in line by its own wait");
    assert!(db::claim_runs(&t.pool, worker, &[Lane::B], 1, None).await.expect("claim").is_empty());
}

#[tokio::test]
async fn every_way_into_the_queue_puts_the_run_in_line_by_its_own_wait() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let steps = serde_json::json!([{"name": "s", "kind": "noop"}]);
    t.apply("again-now", serde_json::json!({"max_attempts": 2, "backoff_base_ms": 0, "steps": steps})).await;
    t.apply("again-later", serde_json::json!({"max_attempts": 2, "backoff_base_ms": 60000, "steps": steps})).await;
    db::set_lane_aging(&t.pool, Lane::B, Some(MS_PER_POINT)).await.expect("age lane B");
    let w = t.register(&[Lane::B], 60_000).await;

    let run = enqueue_at(&t, "noop", Lane::B, 0, db_now(&t).await).await;
    assert_in_line(&t, w, "enqueue_run", run, None).await;

    let req = request("noop", Lane::B, 30, db_now(&t).await - Duration::seconds(5));
    let run = db::enqueue_runs(&t.pool, &[req]).await.expect("enqueue_runs")[0];
    assert_in_line(&t, w, "enqueue_runs", run, None).await;

    let run = enqueue_at(&t, "noop", Lane::B, 0, db_now(&t).await + Duration::hours(1)).await;
    assert_eq!(t.status(run).await, "scheduled");
    assert_in_line(&t, w, "promotion of a scheduled run", run, None).await;

    let run = enqueue_at(&t, "noop", Lane::B, 0, db_now(&t).await - Duration::hours(1)).await;
    claim_lease(&t, w, run).await;
    let before = db_now(&t).await;
    assert_eq!(sweep_as_of(&t, before + Duration::hours(1)).await.requeued, 1);
    assert_in_line(&t, w, "requeue after an expired lease", run, Some(before)).await;

    let run = enqueue_at(&t, "noop", Lane::B, 0, db_now(&t).await - Duration::hours(1)).await;
    db::cancel_run(&t.pool, run, None).await.expect("cancel");
    let before = db_now(&t).await;
    db::retry_run(&t.pool, run).await.expect("retry");
    assert_in_line(&t, w, "retry_run", run, Some(before)).await;

    let run = enqueue_at(&t, "noop", Lane::B, 0, db_now(&t).await - Duration::hours(1)).await;
    let lease = claim_lease(&t, w, run).await;
    let before = db_now(&t).await;
    let status = db::complete_run(&t.pool, lease, Outcome::Interrupted, None, None).await.expect("hand back");
    assert_eq!(status, RunStatus::Queued);
    assert_in_line(&t, w, "interrupted hand-back", run, Some(before)).await;

    let run = enqueue_at(&t, "again-now", Lane::B, 0, db_now(&t).await - Duration::hours(1)).await;
    let lease = claim_lease(&t, w, run).await;
    let before = db_now(&t).await;
    let status = db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("boom")).await.expect("fail");
    assert_eq!(status, RunStatus::Queued);
    assert_in_line(&t, w, "failed, retried without backoff", run, Some(before)).await;

    let run = enqueue_at(&t, "again-later", Lane::B, 0, db_now(&t).await - Duration::hours(1)).await;
    let lease = claim_lease(&t, w, run).await;
    let before = db_now(&t).await;
    let status = db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("boom")).await.expect("fail");
    assert_eq!(status, RunStatus::Scheduled);
    assert_in_line(&t, w, "failed, promoted after its backoff", run, Some(before)).await;
}

/// The rate of a lane, on each of its runs that has not finished.
async fn rates(t: &TestDb, lane: Lane) -> Vec<(String, Option<i32>, i64)> {
    sqlx::query_as(
        "SELECT status, aging_ms_per_point, count(*) FROM runlane.runs
         WHERE lane = $1 AND status IN ('scheduled', 'queued', 'running') GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(lane.as_str())
    .fetch_all(&t.pool)
    .await
    .expect("rates")
}

#[tokio::test]
async fn a_new_rate_reaches_the_runs_already_in_the_lane_and_off_means_strict_priority() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let w = t.register(&[Lane::D], 60_000).await;
    let t0: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('second', now()) - interval '1 hour'")
        .fetch_one(&t.pool)
        .await
        .expect("t0");
    let running = enqueue_at(&t, "noop", Lane::D, 0, t0 - Duration::hours(1)).await;
    let lease = db::claim_runs(&t.pool, w, &[Lane::D], 1, None).await.expect("claim")[0].lease();
    assert_eq!(lease.run_id, running);
    enqueue_at(&t, "noop", Lane::D, 0, t0 + Duration::hours(2)).await; // scheduled
    let low = enqueue_at(&t, "noop", Lane::D, -100, t0).await;
    let flood: Vec<_> = (1..=300).map(|i| request("noop", Lane::D, 100, t0 + Duration::seconds(i))).collect();
    db::enqueue_runs(&t.pool, &flood).await.expect("flood");

    // Turned on while 301 runs wait, one is scheduled and one runs: all of them take the rate.
    let on = db::set_lane_aging(&t.pool, Lane::D, Some(MS_PER_POINT)).await.expect("age lane D");
    assert_eq!((on.lane.as_str(), on.aging_ms_per_point, on.rekeyed), ("D", Some(MS_PER_POINT), 303));
    let all_on = vec![
        ("queued".to_string(), Some(MS_PER_POINT), 301),
        ("running".to_string(), Some(MS_PER_POINT), 1),
        ("scheduled".to_string(), Some(MS_PER_POINT), 1),
    ];
    assert_eq!(rates(&t, Lane::D).await, all_on);
    let again = db::set_lane_aging(&t.pool, Lane::D, Some(MS_PER_POINT)).await.expect("same rate");
    assert_eq!(again.rekeyed, 0, "runs already at the rate are left alone");
    // The flood runs that arrived within 200 s after the low run (at 1 … 199 s) go first; then it.
    let mut first = Vec::new();
    for _ in 0..2 {
        let runs = db::claim_runs(&t.pool, w, &[Lane::D], 100, None).await.expect("claim");
        first.extend(runs.into_iter().map(|r| r.run_id));
    }
    let next = db::claim_runs(&t.pool, w, &[Lane::D], 1, None).await.expect("claim");
    let position = first.iter().chain(next.iter().map(|r| &r.run_id)).position(|r| *r == low);
    assert_eq!(position, Some(199), "the low run came right after the 199 runs of its bound");

    // The running run took the rate: handed back now, it queues with it.
    db::complete_run(&t.pool, lease, Outcome::Interrupted, None, None).await.expect("hand back");
    let rate: Option<i32> = sqlx::query_scalar("SELECT aging_ms_per_point FROM runlane.runs WHERE id = $1")
        .bind(running)
        .fetch_one(&t.pool)
        .await
        .expect("rate");
    assert_eq!(rate, Some(MS_PER_POINT));

    // Off (0 means off): strict priority again for everything in the lane.
    let low2 = enqueue_at(&t, "noop", Lane::D, -100, t0 - Duration::hours(5)).await;
    let off = db::set_lane_aging(&t.pool, Lane::D, Some(0)).await.expect("aging off");
    assert_eq!(off.aging_ms_per_point, None);
    let waiting = rates(&t, Lane::D).await;
    assert!(waiting.iter().all(|(_, rate, _)| rate.is_none()), "{waiting:?}");
    assert_eq!(off.rekeyed, waiting.iter().map(|(_, _, n)| n).sum::<i64>());
    let queued = t.count("SELECT count(*) FROM runlane.runs WHERE lane = 'D' AND status = 'queued'").await;
    let mut order = Vec::new();
    while let Some(r) = db::claim_runs(&t.pool, w, &[Lane::D], 1, None).await.expect("claim").pop() {
        order.push(r.run_id);
    }
    assert_eq!(order.len() as i64, queued);
    assert_eq!(order.last(), Some(&low2), "the oldest run, at priority -100, goes last without aging");
    assert_eq!(order[order.len() - 2], running, "then the priority-0 run, after every priority-100 one");
}
