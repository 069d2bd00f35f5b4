//! Least-privilege roles, and the migrator's guarantees.

use runlane_core::{Error, db};
use runlane_tests::TestDb;
use sqlx::{Connection, PgConnection};

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

const DENIED: Option<&str> = Some("42501");

#[tokio::test]
async fn each_role_can_do_its_job_and_nothing_more() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", runlane_core::model::Lane::D).await;
    let enqueue = "SELECT runlane.enqueue_run('noop', '{}', 'A')";
    let read = "SELECT count(*) FROM runlane.runs";
    let register = "SELECT runlane.register_worker('h', '{A}', 1, 'v')";
    let claim = "SELECT * FROM runlane.claim_runs(runlane.register_worker('h', '{A}', 1, 'v'), '{A}', 1)";
    let cancel = &format!("SELECT runlane.cancel_run('{run}')");

    // worker: claims, but cannot enqueue or read tables
    assert_eq!(as_role(&t, "runlane_worker", enqueue).await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_worker", read).await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_worker", "SELECT * FROM runlane.run_events").await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_worker", claim).await, None);
    // viewer: reads, cannot cancel or enqueue
    assert_eq!(as_role(&t, "runlane_viewer", read).await, None);
    assert_eq!(
        as_role(&t, "runlane_viewer", "SELECT params FROM runlane.runs").await.as_deref(),
        DENIED,
        "params may hold secrets"
    );
    assert_eq!(as_role(&t, "runlane_operator", "SELECT params FROM runlane.runs").await, None);
    assert_eq!(as_role(&t, "runlane_viewer", cancel).await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_viewer", enqueue).await.as_deref(), DENIED);
    // operator: enqueues and cancels, cannot claim or register a worker
    assert_eq!(as_role(&t, "runlane_operator", enqueue).await, None);
    assert_eq!(as_role(&t, "runlane_operator", register).await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_operator", claim).await.as_deref(), DENIED);
    assert_eq!(as_role(&t, "runlane_operator", cancel).await, None);
    // nobody but the owner reads tokens
    assert_eq!(as_role(&t, "runlane_operator", "SELECT * FROM runlane.api_tokens").await.as_deref(), DENIED);
    // direct writes are refused even where reads are allowed
    assert_eq!(
        as_role(&t, "runlane_operator", "UPDATE runlane.runs SET status = 'succeeded'").await.as_deref(),
        DENIED
    );
    assert_eq!(t.status(run).await, "cancelled", "the operator's cancel took effect");
}

#[tokio::test]
async fn migrate_is_idempotent_and_refuses_a_newer_schema() {
    let t = TestDb::new().await;
    let want = db::schema_version();
    assert_eq!(db::migrate(&t.pool).await.expect("again"), (want, want));
    db::check_schema(&t.pool).await.expect("schema current");
    sqlx::query(
        "INSERT INTO runlane.schema_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&t.pool)
    .await
    .expect("fake a newer schema");
    match db::migrate(&t.pool).await {
        Err(Error::Schema(m)) => assert!(m.contains("9999") && m.contains("newer"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(db::check_schema(&t.pool).await, Err(Error::Schema(_))));
}

#[tokio::test]
async fn only_the_owner_moves_the_sweepers_clock_or_retention() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let finished = t.enqueue("noop", runlane_core::model::Lane::D).await;
    db::cancel_run(&t.pool, finished, None).await.expect("cancel");
    let live = t.enqueue("noop", runlane_core::model::Lane::A).await;
    let worker = t.register(&[runlane_core::model::Lane::A], 60_000).await;
    db::claim_runs(&t.pool, worker, &[runlane_core::model::Lane::A], 1, None).await.expect("claim");

    for role in ["runlane_worker", "runlane_operator", "runlane_api"] {
        for sql in [
            "SELECT runlane.sweep(now() + interval '1 day', '0')",
            "SELECT runlane.sweep_at(now() + interval '1 day')",
            "SELECT runlane.prune_at(now() + interval '1 day', '0')",
            "SELECT runlane.set_sweep_policy('0', NULL, NULL)",
        ] {
            assert!(as_role(&t, role, sql).await.is_some(), "{role} may not run {sql}");
        }
        assert_eq!(as_role(&t, role, "SELECT runlane.sweep()").await, None, "{role} sweeps by the fleet's policy");
        assert_eq!(as_role(&t, role, "SELECT runlane.prune()").await, None, "{role} prunes by the fleet's policy");
    }
    assert_eq!(t.status(live).await, "running", "nobody requeued the live run");
    assert_eq!(t.status(finished).await, "cancelled", "nobody pruned the history");
}

/// PostgreSQL lets PUBLIC execute every new function until a REVOKE takes it back (a per-schema
/// default privilege cannot), so each migration must revoke its own functions.
#[tokio::test]
async fn no_function_is_left_executable_by_public() {
    let t = TestDb::new().await;
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'runlane'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')
         ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .expect("functions");
    assert_eq!(open, ["runlane.fleet_role(text)"], "only fleet_role is meant for every login");
}
