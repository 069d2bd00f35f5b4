//! The claim: exactly once under concurrency, lane order, priority, run_at, per-lane caps.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_drain_5000_runs_each_claimed_exactly_once() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    sqlx::query(
        "SELECT runlane.enqueue_run('noop', '{}', (ARRAY['A','B','C','D'])[1 + i % 4])
         FROM generate_series(1, 5000) AS i",
    )
    .execute(&t.pool)
    .await
    .expect("enqueue 5000");

    let mut claimers = Vec::new();
    for _ in 0..8 {
        let pool = t.new_pool(1).await;
        let worker = t.register(&Lane::ALL, 15_000).await;
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let runs = db::claim_runs(&pool, worker, &Lane::ALL, 10, None).await.expect("claim");
                if runs.is_empty() {
                    return mine;
                }
                for run in runs {
                    succeed(&pool, run.lease()).await;
                    mine.push(run.run_id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut busy_claimers = 0;
    for c in claimers {
        let mine = c.await.expect("claimer");
        busy_claimers += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 5000, "every run claimed once in total");
    assert_eq!(unique.len(), 5000, "no run claimed twice");
    assert!(busy_claimers > 1, "the work was shared: {busy_claimers} claimers got runs");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs WHERE status = 'queued'").await, 0);
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs WHERE status = 'succeeded' AND attempt = 1").await, 5000);
}

/// Runs the claimed no-op run's one step and completes it as succeeded.
async fn succeed(pool: &sqlx::PgPool, lease: Lease) {
    db::start_step(pool, lease, 0).await.expect("start");
    db::finish_step(pool, lease, 0, StepStatus::Succeeded, None, None).await.expect("finish");
    db::complete_run(pool, lease, Outcome::Succeeded, None, None).await.expect("complete");
}

#[tokio::test]
async fn worker_lane_order_then_priority_then_run_at() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let enqueue = |lane: Lane, priority: i32, delay_s: i64| {
        let req = EnqueueRequest {
            template: "noop".into(),
            params: serde_json::json!({}),
            lane: Some(lane),
            priority: Some(priority),
            run_at: Some(chrono::Utc::now() + chrono::Duration::seconds(delay_s)),
            ..Default::default()
        };
        let pool = t.pool.clone();
        async move { db::enqueue_run(&pool, &req).await.expect("enqueue") }
    };
    let a_low = enqueue(Lane::A, 0, 0).await;
    let b_mid = enqueue(Lane::B, 0, 0).await;
    let a_high = enqueue(Lane::A, 50, 0).await;
    let b_high = enqueue(Lane::B, 10, 0).await;
    let b_low = enqueue(Lane::B, -5, 0).await;
    let b_later = enqueue(Lane::B, 100, 3600).await;

    let worker = t.register(&[Lane::B, Lane::A], 15_000).await;
    let mut order = Vec::new();
    loop {
        let runs = db::claim_runs(&t.pool, worker, &[Lane::B, Lane::A], 1, None).await.expect("claim");
        let Some(run) = runs.into_iter().next() else { break };
        order.push(run.run_id);
    }
    assert_eq!(order, vec![b_high, b_mid, b_low, a_high, a_low], "lane B first, then by priority");
    assert!(!order.contains(&b_later), "a future run_at is not claimed");
    assert_eq!(t.status(b_later).await, "scheduled", "it waits out of the claim's way");
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    let b = stats.iter().find(|s| s.lane == "B").expect("lane B");
    assert_eq!((b.queued, b.scheduled, b.running), (0, 1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lane_cap_holds_with_four_claimers() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    db::set_lane_cap(&t.pool, Lane::A, Some(1)).await.expect("cap lane A");
    for _ in 0..40 {
        t.enqueue("noop", Lane::A).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (pool, done, max_seen) = (t.new_pool(1).await, done.clone(), max_seen.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::SeqCst) {
                let running: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM runlane.runs WHERE lane = 'A' AND status = 'running'")
                        .fetch_one(&pool)
                        .await
                        .expect("sample");
                max_seen.fetch_max(running, Ordering::SeqCst);
                samples += 1;
            }
            samples
        })
    };
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let pool = t.new_pool(1).await;
        let worker = t.register(&[Lane::A], 15_000).await;
        claimers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut empty_rounds = 0;
            while empty_rounds < 200 {
                let runs = db::claim_runs(&pool, worker, &[Lane::A], 4, None).await.expect("claim");
                assert!(runs.len() <= 1, "a claim under cap 1 returned {} runs", runs.len());
                let Some(run) = runs.into_iter().next() else {
                    empty_rounds += 1;
                    tokio::task::yield_now().await;
                    continue;
                };
                empty_rounds = 0;
                tokio::time::sleep(std::time::Duration::from_millis(3)).await; // the run "works"
                succeed(&pool, run.lease()).await;
                got += 1;
            }
            got
        }));
    }
    let mut total = 0;
    for c in claimers {
        total += c.await.expect("claimer");
    }
    done.store(true, Ordering::SeqCst);
    let samples = monitor.await.expect("monitor");
    assert_eq!(total, 40, "every run ran");
    assert!(samples > 10, "the monitor sampled throughout ({samples} samples)");
    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "never more than one running in lane A");
}

/// What lane_stats reports against a count of the runs themselves.
async fn assert_counts_true(t: &TestDb, when: &str) {
    let truth: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT l.name,
                (SELECT count(*) FROM runlane.runs r WHERE r.lane = l.name AND r.status = 'queued'),
                (SELECT count(*) FROM runlane.runs r WHERE r.lane = l.name AND r.status = 'scheduled'),
                (SELECT count(*) FROM runlane.runs r WHERE r.lane = l.name AND r.status = 'running')
         FROM runlane.lanes l ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .expect("truth");
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    let reported: Vec<(String, i64, i64, i64)> =
        stats.into_iter().map(|s| (s.lane, s.queued, s.scheduled, s.running)).collect();
    assert_eq!(reported, truth, "{when}");
}

#[tokio::test]
async fn lane_stats_counts_match_the_runs_after_every_kind_of_move() {
    let t = TestDb::new().await;
    t.apply(
        "retrying",
        serde_json::json!({"max_attempts": 3, "backoff_base_ms": 60000, "max_crashes": 1,
                                            "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let worker = t.register(&Lane::ALL, 1_000).await;
    for lane in Lane::ALL {
        t.enqueue("retrying", lane).await;
    }
    let later = EnqueueRequest {
        template: "retrying".into(),
        params: serde_json::json!({}),
        lane: Some(Lane::B),
        run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    let batch = vec![later.clone(), EnqueueRequest { run_at: None, ..later.clone() }];
    db::enqueue_runs(&t.pool, &batch).await.expect("enqueue runs");
    assert_counts_true(&t, "after enqueues").await;

    let claimed = db::claim_runs(&t.pool, worker, &Lane::ALL, 3, None).await.expect("claim");
    assert_counts_true(&t, "after a claim").await;
    db::complete_run(&t.pool, claimed[0].lease(), Outcome::Failed, None, Some("boom")).await.expect("retry");
    db::finish_step(&t.pool, claimed[1].lease(), 0, StepStatus::Succeeded, None, None).await.expect("finish");
    db::complete_run(&t.pool, claimed[1].lease(), Outcome::Succeeded, None, None).await.expect("succeed");
    assert_counts_true(&t, "after endings").await;

    let queued: RunId = sqlx::query_scalar("SELECT id FROM runlane.runs WHERE status = 'queued' LIMIT 1")
        .fetch_one(&t.pool)
        .await
        .expect("a queued run");
    db::cancel_run(&t.pool, queued, None).await.expect("cancel");
    db::retry_run(&t.pool, queued).await.expect("retry");
    assert_counts_true(&t, "after a cancel and a retry").await;

    let hours = SweepOptions {
        now: Some(chrono::Utc::now() + chrono::Duration::hours(2)),
        worker_timeout_s: Some(86_400),
        ..Default::default()
    };
    let report = db::sweep_at(&t.pool, &hours).await.expect("sweep");
    assert!(report.requeued + report.crash_failed >= 1 && report.promoted >= 2, "{report:?}");
    assert_counts_true(&t, "after a sweep (requeued, promoted, folded)").await;
    let folded = t.count("SELECT count(*) FROM runlane.lane_counts").await;
    assert!(folded <= 12, "one row per lane and status after folding, got {folded}");
}
