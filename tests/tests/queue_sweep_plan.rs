//! The sweeper stays cheap beside a large backlog of runs due later: with 200,000 of them and the
//! statistics as they were before they arrived, a pass with nothing due reads a few hundred buffers,
//! not every scheduled run, and promoting due runs costs in proportion to the runs promoted.

use runlane_tests::TestDb;

/// Shared buffers one `sweep_at` as of `ahead` from now touched (EXPLAIN (ANALYZE, BUFFERS) of the
/// call: everything it ran), and how many runs it promoted.
async fn sweep_cost(t: &TestDb, ahead: &str) -> (i64, i64) {
    let plan: serde_json::Value =
        sqlx::query_scalar("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT runlane.sweep_at(now() + $1::interval)")
            .bind(ahead)
            .fetch_one(&t.pool)
            .await
            .expect("explain the sweep");
    let top = &plan[0]["Plan"];
    let blocks = |key: &str| top[key].as_i64().unwrap_or_else(|| panic!("no {key} in {top}"));
    let promoted: i64 = sqlx::query_scalar("SELECT count(*) - 200 FROM runlane.runs WHERE status = 'queued'")
        .fetch_one(&t.pool)
        .await
        .expect("queued runs");
    (blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"), promoted)
}

#[tokio::test]
async fn a_sweep_beside_200000_runs_due_later_reads_what_is_due_not_the_backlog() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    sqlx::query("SELECT runlane.enqueue_run('noop', '{}', 'A') FROM generate_series(1, 200)")
        .execute(&t.pool)
        .await
        .expect("200 runs due now");
    // Statistics from here on are stale: analyzed with no scheduled run, never again.
    sqlx::query("ANALYZE runlane.runs").execute(&t.pool).await.expect("analyze");
    sqlx::query("ALTER TABLE runlane.runs SET (autovacuum_enabled = false)").execute(&t.pool).await.expect("alter");
    for _ in 0..2 {
        sqlx::query(
            "SELECT count(*) FROM runlane.enqueue_runs(
                 array_fill('noop'::text, ARRAY[100000]), array_fill('{}'::jsonb, ARRAY[100000]),
                 (SELECT array_agg((ARRAY['A','B','C','D'])[1 + i % 4]) FROM generate_series(1, 100000) i),
                 array_fill(10, ARRAY[100000]),
                 (SELECT array_agg(now() + interval '1 day' + i * interval '1 ms') FROM generate_series(1, 100000) i),
                 array_fill(NULL::text, ARRAY[100000]), array_fill(NULL::uuid, ARRAY[100000]))",
        )
        .execute(&t.pool)
        .await
        .expect("enqueue 100,000 runs due tomorrow");
    }
    sweep_cost(&t, "0 s").await; // the first call loads the catalog

    let (quiet, promoted) = sweep_cost(&t, "0 s").await;
    assert_eq!(promoted, 0);
    let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('runlane.runs') / 8192")
        .fetch_one(&t.pool)
        .await
        .expect("table size");
    // 200,000 scheduled runs fill thousands of pages, and their index about a thousand more.
    assert!(quiet < 2_000, "a pass with nothing due read {quiet} buffers ({pages} pages of runs)");

    // A day on, every one is due: a pass promotes its chunk of 1000 by primary key.
    let (promoting, promoted) = sweep_cost(&t, "2 days").await;
    assert_eq!(promoted, 1_000);
    assert!(promoting < 30 * 1_000, "promoting 1000 runs read {promoting} buffers ({pages} pages of runs)");
    eprintln!("sweep: {quiet} buffers with nothing due, {promoting} promoting 1000 ({pages} pages of runs)");
}
