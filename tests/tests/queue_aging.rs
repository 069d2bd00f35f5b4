//! Fair waiting: in a lane that ages its runs, a priority −100 run is overtaken only by the runs of a
//! flood of priority-100 runs that became claimable within the lane's aging bound after it; in a lane
//! without aging it waits for the whole flood (strict priority). Time is simulated with `run_at`
//! values set in the past, never with the clock.

use chrono::{DateTime, Duration, Utc};
use runlane_core::db;
use runlane_core::lanes::aging_bound_ms;
use runlane_core::model::*;
use runlane_tests::TestDb;
use std::collections::HashSet;

/// One priority point a second.
const MS_PER_POINT: i32 = 1000;

/// A time two hours ago, by the database's clock: the start of the simulated span.
async fn two_hours_ago(t: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT date_trunc('second', now()) - interval '2 hours'").fetch_one(&t.pool).await.expect("now")
}

async fn enqueue_at(t: &TestDb, lane: Lane, priority: i32, run_at: DateTime<Utc>) -> RunId {
    let req = EnqueueRequest {
        template: "noop".into(),
        params: serde_json::json!({}),
        lane: Some(lane),
        priority: Some(priority),
        run_at: Some(run_at),
        ..Default::default()
    };
    db::enqueue_run(&t.pool, &req).await.expect("enqueue")
}

/// `n` priority-100 runs into each of `lanes` in one call, the i-th (0-based) claimable since
/// `from + i × step_ms` (all in the past: queued at once).
async fn flood(t: &TestDb, lanes: &[Lane], from: DateTime<Utc>, n: i32, step_ms: i32) {
    let lanes: Vec<&str> = lanes.iter().map(|l| l.as_str()).collect();
    let made: i64 = sqlx::query_scalar(
        "WITH f AS (SELECT l, i FROM unnest($1::text[]) AS l CROSS JOIN generate_series(0, $3 - 1) AS i)
         SELECT count(*) FROM runlane.enqueue_runs(
             (SELECT array_agg('noop'::text) FROM f), (SELECT array_agg('{}'::jsonb) FROM f),
             (SELECT array_agg(l ORDER BY l, i) FROM f), (SELECT array_agg(100) FROM f),
             (SELECT array_agg($2 + i * $4 * interval '1 millisecond' ORDER BY l, i) FROM f),
             (SELECT array_agg(NULL::text) FROM f), (SELECT array_agg(NULL::uuid) FROM f))",
    )
    .bind(&lanes)
    .bind(from)
    .bind(n)
    .bind(step_ms)
    .fetch_one(&t.pool)
    .await
    .expect("flood");
    assert_eq!(made, i64::from(n) * lanes.len() as i64);
}

/// Claims `n` runs of `lane` in calls of at most 100; returns their ids.
async fn claim_n(t: &TestDb, worker: WorkerId, lane: Lane, mut n: usize) -> HashSet<RunId> {
    let mut got = HashSet::new();
    while n > 0 {
        let want = n.min(100);
        let runs = db::claim_runs(&t.pool, worker, &[lane], want as u32, None).await.expect("claim");
        assert_eq!(runs.len(), want, "the lane had {want} more runs to give");
        got.extend(runs.iter().map(|r| r.run_id));
        n -= want;
    }
    got
}

async fn claim_one(t: &TestDb, worker: WorkerId, lane: Lane) -> Option<RunId> {
    let runs = db::claim_runs(&t.pool, worker, &[lane], 1, None).await.expect("claim");
    runs.first().map(|r| r.run_id)
}

#[tokio::test]
async fn a_priority_minus_100_run_is_overtaken_only_by_the_flood_of_its_lanes_aging_bound() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let aging = db::set_lane_aging(&t.pool, Lane::B, Some(MS_PER_POINT)).await.expect("age lane B");
    assert_eq!((aging.aging_ms_per_point, aging.rekeyed), (Some(MS_PER_POINT), 0));
    let t0 = two_hours_ago(&t).await;
    // A low-priority run in each lane, then 10,000 priority-100 runs each, arriving one every 100 ms
    // after it (a span of 1000 s).
    let low_b = enqueue_at(&t, Lane::B, -100, t0).await;
    let low_c = enqueue_at(&t, Lane::C, -100, t0).await;
    flood(&t, &[Lane::B, Lane::C], t0 + Duration::milliseconds(100), 10_000, 100).await;
    let oldest: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT runlane.oldest_queued('B')").fetch_one(&t.pool).await.expect("oldest");
    assert_eq!(oldest, Some(t0), "lane_stats' oldest queued run of an aging lane is the low one, not the head");

    // Lane B ages one point a second: the bound is 200 s. The flood runs that arrived less than
    // 200 s after the low run go first (arrived at 0.1 s … 199.9 s: 1999 of them), none after.
    let bound = Duration::milliseconds(aging_bound_ms(MS_PER_POINT));
    assert_eq!(bound, Duration::seconds(200));
    let ahead = (0..10_000).filter(|i| Duration::milliseconds(100 + 100 * i) < bound).count();
    assert_eq!(ahead, 1999);
    let b = t.register(&[Lane::B], 60_000).await;
    let first = claim_n(&t, b, Lane::B, ahead).await;
    assert!(!first.contains(&low_b), "the low run went before the flood it had waited for");
    let (late, early): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE run_at >= $1), count(*) FILTER (WHERE run_at < $1)
         FROM runlane.runs WHERE lane = 'B' AND status = 'running'",
    )
    .bind(t0 + bound)
    .fetch_one(&t.pool)
    .await
    .expect("claimed so far");
    assert_eq!((late, early), (0, ahead as i64), "only runs that arrived within the bound went first");
    assert_eq!(claim_one(&t, b, Lane::B).await, Some(low_b), "then the low run, ahead of 8001 priority-100 runs");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs WHERE lane = 'B' AND status = 'queued'").await, 8001);

    // Lane C has no aging: strict priority, the low run waits for the whole flood.
    let c = t.register(&[Lane::C], 60_000).await;
    let all = claim_n(&t, c, Lane::C, 10_000).await;
    assert!(!all.contains(&low_c), "without aging, priority 100 always goes first");
    assert_eq!(claim_one(&t, c, Lane::C).await, Some(low_c), "the low run comes last");
}

/// The flood keeps coming while the lane is worked: each simulated second, ten priority-100 runs
/// arrive and the lane's worker claims five. Without aging the low run never starts; with one point
/// a second it starts once the runs that arrived within the 200 s bound after it are done: 2000 runs
/// at five a second, at second 400.
#[tokio::test]
async fn under_a_steady_flood_the_low_run_starts_when_the_bound_says_and_never_without_aging() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    db::set_lane_aging(&t.pool, Lane::B, Some(MS_PER_POINT)).await.expect("age lane B");
    let t0 = two_hours_ago(&t).await;
    let low_b = enqueue_at(&t, Lane::B, -100, t0).await;
    let low_c = enqueue_at(&t, Lane::C, -100, t0).await;
    let (b, c) = (t.register(&[Lane::B], 60_000).await, t.register(&[Lane::C], 60_000).await);
    let (arrivals, claims) = (10, 5);
    let expected_start = aging_bound_ms(MS_PER_POINT) / 1000 * arrivals / claims;
    assert_eq!(expected_start, 400);

    let mut low_b_started = None;
    for second in 0..1000_i64 {
        // Arrivals at second + 0.0, 0.1, … 0.9 s after t0.
        flood(&t, &[Lane::B, Lane::C], t0 + Duration::seconds(second), arrivals as i32, 100).await;
        if low_b_started.is_none() {
            let runs = db::claim_runs(&t.pool, b, &[Lane::B], claims as u32, None).await.expect("claim B");
            assert_eq!(runs.len(), claims as usize);
            if runs.iter().any(|r| r.run_id == low_b) {
                low_b_started = Some(second);
            }
        }
        let runs = db::claim_runs(&t.pool, c, &[Lane::C], claims as u32, None).await.expect("claim C");
        assert!(runs.iter().all(|r| r.run_id != low_c), "second {second}: strict priority let the low run in");
    }
    assert_eq!(low_b_started, Some(expected_start), "the aging lane started the low run at the bound");
    assert_eq!(t.status(low_c).await, "queued", "without aging the low run still waits after 10,000 arrivals");
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    let (sb, sc) = (&stats[1], &stats[2]);
    assert_eq!((sb.lane.as_str(), sb.aging_ms_per_point), ("B", Some(MS_PER_POINT)));
    assert_eq!((sc.lane.as_str(), sc.aging_ms_per_point), ("C", None));
}
