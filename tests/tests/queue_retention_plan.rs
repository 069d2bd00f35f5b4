//! Pruning finds expired runs per template version (runs_expiry_idx): a template kept for an hour
//! beside 200,000 finished runs that other templates keep longer (a day-old run of a template on the
//! fleet's week, a ten-day-old one of a template kept for a month) costs about what it costs alone —
//! neither the prune nor its preview walks the runs they keep.

use runlane_tests::TestDb;
use runlane_tests::retention::apply_kept;

/// What one call answers and touches, each from inside a transaction that is rolled back.
#[derive(Debug)]
struct Cost {
    /// Shared buffers hit or read by the call (EXPLAIN (ANALYZE, BUFFERS): everything it ran).
    buffers: i64,
    expiry_index_scans: i64,
    runs_seq_scans: i64,
    answer: serde_json::Value,
}

async fn cost(t: &TestDb, call: &'static str) -> Cost {
    let mut tx = t.pool.begin().await.expect("begin");
    let answer: serde_json::Value =
        sqlx::query_scalar(sqlx::AssertSqlSafe(call)).fetch_one(&mut *tx).await.expect("call");
    tx.rollback().await.expect("rollback");
    let mut tx = t.pool.begin().await.expect("begin");
    let plan: serde_json::Value =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {call}")))
            .fetch_one(&mut *tx)
            .await
            .expect("explain");
    let top = &plan[0]["Plan"];
    let blocks = |key: &str| top[key].as_i64().unwrap_or_else(|| panic!("no {key} in {top}"));
    let (expiry_index_scans, runs_seq_scans): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_numscans('runlane.runs_expiry_idx'::regclass),
                pg_stat_get_xact_numscans('runlane.runs'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("scans");
    tx.rollback().await.expect("rollback");
    Cost {
        buffers: blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"),
        expiry_index_scans,
        runs_seq_scans,
        answer,
    }
}

/// `n` finished runs of `template` (version 1), finished `age` ago, with no events: the owner's insert.
async fn finished_runs(t: &TestDb, template: &str, n: i64, age: &str) {
    sqlx::query(
        "INSERT INTO runlane.runs (template, template_version, lane, status, steps, timeout_ms, attempt, max_attempts,
                                   backoff_base_ms, max_crashes, claimed_at, finished_at)
         SELECT $1, 1, 'A', 'succeeded', '[]', 60000, 1, 1, 1000, 3, now() - $3::interval, now() - $3::interval
         FROM generate_series(1, $2) i",
    )
    .bind(template)
    .bind(n)
    .bind(age)
    .execute(&t.pool)
    .await
    .expect("finished runs");
}

#[tokio::test]
async fn pruning_reads_each_templates_expired_runs_not_the_runs_others_keep() {
    let t = TestDb::new().await;
    apply_kept(&t, "hourly", Some(3_600)).await;
    apply_kept(&t, "plain", None).await;
    apply_kept(&t, "monthly", Some(30 * 86_400)).await;
    finished_runs(&t, "hourly", 20, "2 hours").await;
    let prune = "SELECT runlane.prune_at(now())";
    let preview = "SELECT runlane.prune_preview()";
    cost(&t, prune).await; // the first calls load the catalog
    cost(&t, preview).await;
    let clean = (cost(&t, prune).await, cost(&t, preview).await);

    finished_runs(&t, "plain", 100_000, "1 day").await;
    finished_runs(&t, "monthly", 100_000, "10 days").await;
    sqlx::query("ANALYZE runlane.runs").execute(&t.pool).await.expect("analyze");
    // ANALYZE invalidated both functions' cached plans: plan each again before measuring.
    cost(&t, prune).await;
    cost(&t, preview).await;
    let kept = (cost(&t, prune).await, cost(&t, preview).await);

    assert_eq!(kept.0.answer["pruned"], 20, "{:?}", kept.0);
    assert_eq!(kept.1.answer["runs"], 20, "{:?}", kept.1);
    for (what, clean, kept) in [("prune", &clean.0, &kept.0), ("preview", &clean.1, &kept.1)] {
        assert!(kept.expiry_index_scans >= 1, "{what} probed the expiry index: {kept:?}");
        assert_eq!(kept.runs_seq_scans, 0, "{what} never scanned the table: {kept:?}");
        // 200,000 kept runs fill thousands of pages; a call that walked them would show it. The margin
        // covers catalog and index pages that differ from call to call on a busy machine.
        assert!(
            kept.buffers <= clean.buffers + 200,
            "{what} read {} buffers beside the kept runs, {} without them",
            kept.buffers,
            clean.buffers
        );
        eprintln!("{what}: {} buffers alone, {} beside 200,000 kept runs", clean.buffers, kept.buffers);
    }
}
