//! The claim stays cheap as the queue grows: with 200,000 runs due later (at a higher priority) and
//! 100,000 finished runs present, and the statistics never refreshed, a claim under a generic plan
//! reads the claim index and about as many buffers as on a clean queue — never the backlog; and so it
//! does with lanes that age their runs.

use runlane_core::model::*;
use runlane_tests::TestDb;

/// What one claim of 10 runs touched, from inside its own transaction.
#[derive(Debug)]
struct ClaimCost {
    /// Shared buffers hit or read (EXPLAIN (ANALYZE, BUFFERS) of the call: everything it ran).
    buffers: i64,
    claim_index_scans: i64,
    runs_seq_scans: i64,
    claimed: i64,
}

async fn claim_cost(t: &TestDb, worker: WorkerId) -> ClaimCost {
    let mut tx = t.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *tx).await.expect("generic plans");
    let plan: serde_json::Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM runlane.claim_runs($1, '{A,B,C,D}', 10)",
    )
    .bind(worker)
    .fetch_one(&mut *tx)
    .await
    .expect("explain the claim");
    let top = &plan[0]["Plan"];
    let blocks = |key: &str| top[key].as_i64().unwrap_or_else(|| panic!("no {key} in {top}"));
    let (claim_index_scans, runs_seq_scans): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_numscans('runlane.runs_claim_idx'::regclass),
                pg_stat_get_xact_numscans('runlane.runs'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("scans");
    tx.commit().await.expect("commit");
    ClaimCost {
        buffers: blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"),
        claim_index_scans,
        runs_seq_scans,
        claimed: top["Actual Rows"].as_i64().expect("rows"),
    }
}

#[tokio::test]
async fn a_claim_reads_the_claim_index_not_the_backlog_under_a_generic_plan_and_stale_statistics() {
    let t = TestDb::new().await;
    // Statistics as they were before any run existed: nothing analyzes the table during the test.
    sqlx::query("ALTER TABLE runlane.runs SET (autovacuum_enabled = false)").execute(&t.pool).await.expect("alter");
    t.apply_noop().await;
    sqlx::query(
        "SELECT runlane.enqueue_run('noop', '{}', (ARRAY['A','B','C','D'])[1 + i % 4]) FROM generate_series(1, 200) i",
    )
    .execute(&t.pool)
    .await
    .expect("enqueue 200 due runs");
    let worker = t.register(&Lane::ALL, 60_000).await;
    claim_cost(&t, worker).await; // the first call loads the catalog
    let clean = claim_cost(&t, worker).await;

    for _ in 0..2 {
        sqlx::query(
            "SELECT count(*) FROM runlane.enqueue_runs(
                 array_fill('noop'::text, ARRAY[100000]), array_fill('{}'::jsonb, ARRAY[100000]),
                 (SELECT array_agg((ARRAY['A','B','C','D'])[1 + i % 4]) FROM generate_series(1, 100000) i),
                 array_fill(10, ARRAY[100000]), array_fill(now() + interval '1 day', ARRAY[100000]),
                 array_fill(NULL::text, ARRAY[100000]), array_fill(NULL::uuid, ARRAY[100000]))",
        )
        .execute(&t.pool)
        .await
        .expect("enqueue 100,000 runs due tomorrow at priority 10");
    }
    sqlx::query(
        "INSERT INTO runlane.runs (template, template_version, lane, status, steps, timeout_ms, attempt, max_attempts,
                                   backoff_base_ms, max_crashes, claimed_at, finished_at)
         SELECT 'noop', 1, (ARRAY['A','B','C','D'])[1 + i % 4], 'succeeded', '[]', 60000, 1, 1, 1000, 3, now(), now()
         FROM generate_series(1, 100000) i",
    )
    .execute(&t.pool)
    .await
    .expect("100,000 finished runs");
    claim_cost(&t, worker).await;
    let aged = claim_cost(&t, worker).await;

    assert_eq!((clean.claimed, aged.claimed), (10, 10), "{clean:?} {aged:?}");
    assert!(aged.claim_index_scans >= 1, "the claim walked its index: {aged:?}");
    assert_eq!(aged.runs_seq_scans, 0, "the claim never scanned the table: {aged:?}");
    // 300,000 rows fill thousands of pages; a claim that read them would show it. The backlog may
    // add a page or two of the indexes the claim updates, nothing in proportion to its size.
    assert!(
        aged.buffers <= clean.buffers + 40,
        "the backlog made the claim read {} buffers, against {} on a clean queue",
        aged.buffers,
        clean.buffers
    );
    let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('runlane.runs') / 8192")
        .fetch_one(&t.pool)
        .await
        .expect("table size");
    assert!(pages > 20 * aged.buffers, "the table ({pages} pages) dwarfs what a claim reads ({aged:?})");
    eprintln!(
        "claim of 10: {} buffers clean, {} with the backlog ({pages} pages of runs)",
        clean.buffers, aged.buffers
    );
}

/// The same with priority aging: lanes A and C age their runs (their claim order is the static key
/// `run_at − priority × rate`), B and D do not; 100,000 runs of every priority wait in the queue
/// itself, over a day of arrivals, besides the 100,000 due later and the 100,000 finished. A claim
/// still walks the head of the claim index, never sorts the backlog.
#[tokio::test]
async fn with_aging_lanes_a_claim_still_walks_the_claim_index_and_never_sorts_the_backlog() {
    let t = TestDb::new().await;
    sqlx::query("ALTER TABLE runlane.runs SET (autovacuum_enabled = false)").execute(&t.pool).await.expect("alter");
    t.apply_noop().await;
    for lane in [Lane::A, Lane::C] {
        runlane_core::db::set_lane_aging(&t.pool, lane, Some(1000)).await.expect("aging");
    }
    sqlx::query(
        "SELECT runlane.enqueue_run('noop', '{}', (ARRAY['A','B','C','D'])[1 + i % 4], i % 201 - 100)
         FROM generate_series(1, 200) i",
    )
    .execute(&t.pool)
    .await
    .expect("enqueue 200 due runs");
    let worker = t.register(&Lane::ALL, 60_000).await;
    claim_cost(&t, worker).await;
    let clean = claim_cost(&t, worker).await;

    sqlx::query(
        "SELECT count(*) FROM runlane.enqueue_runs(
             array_fill('noop'::text, ARRAY[100000]), array_fill('{}'::jsonb, ARRAY[100000]),
             (SELECT array_agg((ARRAY['A','B','C','D'])[1 + i % 4] ORDER BY i) FROM generate_series(1, 100000) i),
             (SELECT array_agg((i * 7919) % 201 - 100 ORDER BY i) FROM generate_series(1, 100000) i),
             (SELECT array_agg(now() - interval '1 day' + i * interval '864 milliseconds' ORDER BY i)
              FROM generate_series(1, 100000) i),
             array_fill(NULL::text, ARRAY[100000]), array_fill(NULL::uuid, ARRAY[100000]))",
    )
    .execute(&t.pool)
    .await
    .expect("100,000 queued runs of every priority, arrived over the last day");
    sqlx::query(
        "SELECT count(*) FROM runlane.enqueue_runs(
             array_fill('noop'::text, ARRAY[100000]), array_fill('{}'::jsonb, ARRAY[100000]),
             (SELECT array_agg((ARRAY['A','B','C','D'])[1 + i % 4]) FROM generate_series(1, 100000) i),
             array_fill(100, ARRAY[100000]), array_fill(now() + interval '1 day', ARRAY[100000]),
             array_fill(NULL::text, ARRAY[100000]), array_fill(NULL::uuid, ARRAY[100000]))",
    )
    .execute(&t.pool)
    .await
    .expect("100,000 runs due tomorrow at priority 100");
    sqlx::query(
        "INSERT INTO runlane.runs (template, template_version, lane, status, steps, timeout_ms, attempt, max_attempts,
                                   backoff_base_ms, max_crashes, claimed_at, finished_at, aging_ms_per_point)
         SELECT 'noop', 1, (ARRAY['A','B','C','D'])[1 + i % 4], 'succeeded', '[]', 60000, 1, 1, 1000, 3, now(), now(),
                CASE WHEN i % 2 = 0 THEN 1000 END
         FROM generate_series(1, 100000) i",
    )
    .execute(&t.pool)
    .await
    .expect("100,000 finished runs");
    claim_cost(&t, worker).await;
    let aged = claim_cost(&t, worker).await;

    assert_eq!((clean.claimed, aged.claimed), (10, 10), "{clean:?} {aged:?}");
    assert!(aged.claim_index_scans >= 1, "the claim walked its index: {aged:?}");
    assert_eq!(aged.runs_seq_scans, 0, "the claim never scanned the table: {aged:?}");
    assert!(
        aged.buffers <= clean.buffers + 40,
        "the backlog made the claim read {} buffers, against {} on a clean queue",
        aged.buffers,
        clean.buffers
    );
    let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('runlane.runs') / 8192")
        .fetch_one(&t.pool)
        .await
        .expect("table size");
    assert!(pages > 20 * aged.buffers, "the table ({pages} pages) dwarfs what a claim reads ({aged:?})");
    eprintln!(
        "claim of 10 with aging lanes: {} buffers clean, {} with the backlog ({pages} pages of runs)",
        clean.buffers, aged.buffers
    );
}
