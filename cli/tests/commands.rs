//! Commands a new user types first: `runlane migrate` configured like every other command, and the
//! README's `runlane demo --once` from a directory only its owner may enter.

use runlane_core::db;
use runlane_tests::TestDb;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

async fn fresh_database(t: &TestDb) -> String {
    let name = format!("unmigrated_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&t.pool).await.expect("create");
    let current: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&t.pool).await.expect("db");
    t.url.replace(&format!("/{current}"), &format!("/{name}"))
}

async fn schema_version(url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    db::database_schema_version(&pool).await.expect("version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_takes_the_database_url_from_the_environment_settings_or_a_config_file() {
    let t = TestDb::new().await;
    let by_env = fresh_database(&t).await;
    let out = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("RUNLANE__DATABASE__URL", &by_env)
        .output()
        .expect("runlane migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(schema_version(&by_env).await, db::schema_version());

    let by_file = fresh_database(&t).await;
    let config = std::env::temp_dir().join(format!("runlane-migrate-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&config, format!("[database]\nurl = \"{by_file}\"\n")).expect("config");
    let out = Command::new(BIN)
        .args(["migrate", "--json", "--config"])
        .arg(&config)
        .env_remove("DATABASE_URL")
        .output()
        .expect("runlane migrate");
    let _ = std::fs::remove_file(&config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["to_version"], db::schema_version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_from_a_directory_only_its_owner_may_enter() {
    // As root, PostgreSQL runs as the postgres OS user, which cannot enter this directory (a root
    // user's home directory is the same).
    let home = std::env::temp_dir().join(format!("runlane-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).expect("dir");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--once", "--templates"])
        .arg(&templates)
        .current_dir(&home)
        .env_remove("DATABASE_URL")
        .env("RUNLANE_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("runlane demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&home);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("summary:"), "{stdout}");
    if runlane_core::local_pg::running_as_root().expect("uid") {
        assert!(
            stdout.contains("cannot enter") && stdout.contains("removed when it stops"),
            "says what it did: {stdout}"
        );
    }
}
