//! Two fleets on one PostgreSQL cluster: one fleet's credentials are useless against the other's
//! database (roles are cluster-wide, so each database grants CONNECT to its own roles only).

use runlane_core::db;
use runlane_core::model::Lane;
use runlane_tests::TestDb;
use sqlx::{Connection, PgConnection};

/// `url` with another user and database.
fn as_user(url: &str, user: &str, database: &str) -> String {
    let rest = url.split_once('@').map(|(_, r)| r).expect("url has a host");
    let host = rest.rsplit_once('/').map(|(h, _)| h).expect("url has a database");
    format!("postgres://{user}@{host}/{database}")
}

async fn exec(pool: &sqlx::PgPool, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.expect("setup statement");
}

#[tokio::test]
async fn a_worker_login_of_one_fleet_cannot_reach_another_fleets_database() {
    let t = TestDb::new().await;
    let one: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&t.pool).await.expect("db");
    let two = format!("fleet_two_{}", uuid::Uuid::new_v4().simple());
    exec(&t.pool, format!("CREATE DATABASE {two}")).await;
    let two_pool = sqlx::PgPool::connect(&t.url.replace(&format!("/{one}"), &format!("/{two}"))).await.expect("two");
    db::migrate(&two_pool).await.expect("migrate the second fleet");
    t.apply_noop().await;
    db::apply_template(&two_pool, "noop", &serde_json::json!({"steps": [{"name": "s", "kind": "noop"}]}))
        .await
        .expect("apply");
    let secret_run = db::enqueue_run(
        &two_pool,
        &runlane_core::model::EnqueueRequest {
            template: "noop".into(),
            params: serde_json::json!({}),
            lane: Some(Lane::A),
            ..Default::default()
        },
    )
    .await
    .expect("enqueue in fleet two");

    // The owner gives a login the worker role of fleet one, as docs/SQL.md says.
    let role: String =
        sqlx::query_scalar("SELECT runlane.fleet_role('worker')").fetch_one(&t.pool).await.expect("role");
    assert_eq!(role, format!("runlane_worker_{one}"));
    let login = format!("w_{}", uuid::Uuid::new_v4().simple());
    exec(&t.pool, format!("CREATE ROLE {login} LOGIN")).await;
    exec(&t.pool, format!("GRANT {role} TO {login}")).await;

    let mut home = PgConnection::connect(&as_user(&t.url, &login, &one)).await.expect("fleet one lets its worker in");
    let worker: uuid::Uuid = sqlx::query_scalar("SELECT runlane.register_worker('h', '{A}', 1, 'v')")
        .fetch_one(&mut home)
        .await
        .expect("register in fleet one");
    assert!(!worker.is_nil());

    match PgConnection::connect(&as_user(&t.url, &login, &two)).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("42501"), "{e}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("fleet one's worker connected to fleet two's database"),
    }
    assert_eq!(
        db::get_run(&two_pool, secret_run).await.expect("run").status,
        "queued",
        "fleet two's run was not touched"
    );
}
