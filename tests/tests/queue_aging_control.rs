//! Who may set a lane's aging, what values it takes, how a change meets enqueues in flight, the oldest
//! queued run of an aging lane, and the settings of the functions 0019 makes again.

use runlane_core::model::Lane;
use runlane_core::{Error, db};
use runlane_tests::TestDb;
use runlane_tests::process::PATIENCE;
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

/// Runs `sql` as `role` on a fresh connection; returns the SQLSTATE of the error, or None on success.
async fn as_role(t: &TestDb, role: &str, sql: &str) -> Option<String> {
    let mut conn = PgConnection::connect(&t.url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {role}"))).execute(&mut conn).await.expect("set role");
    match sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().map(|c| c.into_owned()).unwrap_or_default()),
        Err(e) => panic!("{role}: {sql}: {e}"),
    }
}

#[tokio::test]
async fn only_an_operator_sets_a_lanes_aging_and_every_role_sees_it() {
    let t = TestDb::new().await;
    let set = "SELECT runlane.set_lane_aging('B', 1500)";
    for role in ["runlane_viewer", "runlane_worker"] {
        assert_eq!(as_role(&t, role, set).await.as_deref(), Some("42501"), "{role} may not set aging");
    }
    assert_eq!(as_role(&t, "runlane_operator", set).await, None);
    assert_eq!(as_role(&t, "runlane_api", "SELECT runlane.set_lane_aging('C', 10)").await, None);
    for role in ["runlane_viewer", "runlane_operator", "runlane_worker"] {
        let read = "SELECT 1 / (aging_ms_per_point - 1500) FROM runlane.lane_stats() WHERE lane = 'B'";
        assert_eq!(as_role(&t, role, read).await.as_deref(), Some("22012"), "{role} sees lane B's 1500 ms");
    }
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    let rates: Vec<_> = stats.iter().map(|s| (s.lane.as_str(), s.aging_ms_per_point)).collect();
    assert_eq!(rates, [("A", None), ("B", Some(1500)), ("C", Some(10)), ("D", None)]);
}

#[tokio::test]
async fn a_rate_out_of_range_or_an_unknown_lane_is_refused_naming_it() {
    let t = TestDb::new().await;
    for bad in [-1, 86_400_001] {
        match db::set_lane_aging(&t.pool, Lane::A, Some(bad)).await {
            Err(Error::Invalid { message, .. }) => {
                assert!(message.contains("ms per priority point") && message.contains(&bad.to_string()), "{message}")
            }
            other => panic!("{bad}: expected RL422, got {other:?}"),
        }
    }
    let unknown = sqlx::query("SELECT runlane.set_lane_aging('E', 1000)").execute(&t.pool).await;
    match unknown.map_err(Error::from) {
        Err(Error::Invalid { message, .. }) => assert!(message.contains("unknown lane 'E'"), "{message}"),
        other => panic!("expected RL422, got {other:?}"),
    }
    let day = db::set_lane_aging(&t.pool, Lane::A, Some(86_400_000)).await.expect("one day per point");
    assert_eq!(day.aging_ms_per_point, Some(86_400_000));
    let off = db::set_lane_aging(&t.pool, Lane::A, None).await.expect("off");
    assert_eq!(off.aging_ms_per_point, None);
}

/// Waits until a backend running `like` waits for a lock.
async fn until_waiting(t: &TestDb, like: &str) {
    let start = Instant::now();
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1)",
        )
        .bind(like)
        .fetch_one(&t.pool)
        .await
        .expect("activity");
        if waiting {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "nothing ran {like} waiting for a lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rate_of(t: &TestDb, run: uuid::Uuid) -> Option<i32> {
    sqlx::query_scalar("SELECT aging_ms_per_point FROM runlane.runs WHERE id = $1")
        .bind(run)
        .fetch_one(&t.pool)
        .await
        .expect("rate")
}

#[tokio::test]
async fn a_run_enqueued_while_the_rate_changes_never_keeps_the_old_one() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    // An enqueue still open when the change comes: the change waits for it, then rekeys its run.
    let mut enqueuer = PgConnection::connect(&t.url).await.expect("connect");
    let mut tx = enqueuer.begin().await.expect("begin");
    let early: uuid::Uuid =
        sqlx::query_scalar("SELECT runlane.enqueue_run('noop', '{}', 'A')").fetch_one(&mut *tx).await.expect("enqueue");
    let change = {
        let pool = t.pool.clone();
        tokio::spawn(async move { db::set_lane_aging(&pool, Lane::A, Some(500)).await })
    };
    until_waiting(&t, "%set_lane_aging%").await;
    tx.commit().await.expect("commit the enqueue");
    let done = change.await.expect("change task").expect("set aging");
    assert_eq!(done.rekeyed, 1, "the change saw the enqueue that was in flight");
    assert_eq!(rate_of(&t, early).await, Some(500));

    // A change still open when an enqueue comes: the enqueue waits for it, then reads the new rate.
    let mut changer = PgConnection::connect(&t.url).await.expect("connect");
    let mut tx = changer.begin().await.expect("begin");
    sqlx::query("SELECT runlane.set_lane_aging('A', 700)").execute(&mut *tx).await.expect("change");
    let enqueue = {
        let pool = t.pool.clone();
        tokio::spawn(async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT run_id FROM runlane.enqueue_runs('{noop}', '{\"{}\"}', '{A}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')",
            )
            .fetch_one(&pool)
            .await
        })
    };
    until_waiting(&t, "%enqueue_runs%").await;
    tx.commit().await.expect("commit the change");
    let late = enqueue.await.expect("enqueue task").expect("enqueue");
    assert_eq!(rate_of(&t, late).await, Some(700), "the enqueue read the rate it waited for");

    // An enqueue left open holds the change up for 5 s, then the change gives up and says why.
    let mut tx = enqueuer.begin().await.expect("begin");
    sqlx::query("SELECT runlane.enqueue_run('noop', '{}', 'A')").execute(&mut *tx).await.expect("enqueue");
    match db::set_lane_aging(&t.pool, Lane::A, Some(900)).await {
        Err(Error::Conflict(m)) => assert!(m.contains("lane A is held by another transaction"), "{m}"),
        other => panic!("expected RL409, got {other:?}"),
    }
    tx.rollback().await.expect("rollback");
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    assert_eq!(stats[0].aging_ms_per_point, Some(700), "the refused change changed nothing");
}

/// lane_stats' oldest queued run, whether the lane ages its runs or not, or holds both kinds (only a
/// direct write can make that): the run that has waited longest, wherever it stands in line.
#[tokio::test]
async fn the_oldest_queued_run_is_found_with_and_without_aging() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let ages: Vec<(i32, i64)> =
        (0..60_i32).map(|i| ((i * 37) % 201 - 100, 3600 - i64::from((i * 53) % 3000))).collect();
    for (priority, ago_s) in &ages {
        sqlx::query("SELECT runlane.enqueue_run('noop', '{}', 'A', $1, now() - $2 * interval '1 second')")
            .bind(priority)
            .bind(ago_s)
            .execute(&t.pool)
            .await
            .expect("enqueue");
    }
    let oldest = "SELECT runlane.oldest_queued('A') = (SELECT min(run_at) FROM runlane.runs WHERE lane = 'A')";
    let exact = || async { sqlx::query_scalar::<_, bool>(oldest).fetch_one(&t.pool).await.expect("oldest") };
    assert!(exact().await, "strict priority");
    db::set_lane_aging(&t.pool, Lane::A, Some(1000)).await.expect("aging");
    assert!(exact().await, "aging");
    sqlx::query("UPDATE runlane.runs SET aging_ms_per_point = NULL WHERE lane = 'A' AND priority % 2 = 0")
        .execute(&t.pool)
        .await
        .expect("mixed");
    assert!(exact().await, "both kinds");
    sqlx::query(
        "UPDATE runlane.runs SET aging_ms_per_point = NULL WHERE run_at = (SELECT min(run_at) FROM runlane.runs)",
    )
    .execute(&t.pool)
    .await
    .expect("the oldest strict");
    assert!(exact().await, "both kinds, the oldest strict");
}

/// CREATE OR REPLACE resets a function's settings: the functions 0019 makes again keep theirs.
#[tokio::test]
async fn the_replaced_functions_keep_their_planner_settings() {
    let t = TestDb::new().await;
    for (function, wanted) in [
        ("claim_runs", &["jit=off", "plan_cache_mode=force_generic_plan"][..]),
        ("lane_stats", &["jit=off"][..]),
        ("enqueue_run", &["jit=off"][..]),
        ("enqueue_runs", &["jit=off"][..]),
    ] {
        let config: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(proconfig, '{}') FROM pg_proc WHERE proname = $1 AND pronamespace = 'runlane'::regnamespace",
        )
        .bind(function)
        .fetch_one(&t.pool)
        .await
        .expect("proconfig");
        for w in wanted {
            assert!(config.iter().any(|c| c == w), "{function}: {config:?} lacks {w}");
        }
    }
}
