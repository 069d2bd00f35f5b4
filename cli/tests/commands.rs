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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_enqueues_every_line_or_none_and_names_the_refused_line() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    t.apply(
        "counted",
        serde_json::json!({"params": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
                           "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let file = std::env::temp_dir().join(format!("runlane-batch-{}.jsonl", uuid::Uuid::new_v4().simple()));
    let enqueue = |text: &str| {
        std::fs::write(&file, text).expect("batch file");
        let out = Command::new(BIN)
            .args(["enqueue", "--json", "--batch"])
            .arg(&file)
            .env("DATABASE_URL", &t.url)
            .output()
            .expect("runlane enqueue --batch");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = "{\"template\": \"noop\", \"lane\": \"B\"}\n{\"template\": \"noop\", \"idempotency_key\": \"k1\"}\n\n\
                {\"template\": \"counted\", \"params\": {\"n\": 1}, \"priority\": 5}\n";
    let (ok, stdout, stderr) = enqueue(good);
    assert!(ok, "{stderr}");
    let printed: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let lines: Vec<i64> = printed.iter().map(|p| p["line"].as_i64().expect("line")).collect();
    assert_eq!(lines, [1, 2, 4], "one run per non-blank line, by line number");
    let first: runlane_core::model::RunId = serde_json::from_value(printed[0]["run_id"].clone()).expect("run id");
    assert_eq!(db::get_run(&t.pool, first).await.expect("run").lane, "B");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 3);

    let (ok, stdout, _) = enqueue(good);
    assert!(ok);
    let again: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(again[1]["run_id"], printed[1]["run_id"], "the idempotency key gives the same run");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 5);

    for (bad, named) in [
        ("{\"template\": \"noop\"}\n{\"template\": \"nope\"}\n", "line 2: unknown template"),
        ("{\"template\": \"counted\", \"params\": {\"n\": \"x\"}}\n", "line 1: invalid params"),
        ("{\"template\": \"noop\"}\n{\"template\": \"noop\", \"lane\": \"E\"}\n", "line 2: unknown variant `E`"),
    ] {
        let (ok, _, stderr) = enqueue(bad);
        assert!(!ok, "{bad} was accepted");
        assert!(stderr.contains(named) && stderr.contains("nothing was enqueued"), "{stderr}");
        assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 5, "nothing of {bad} was enqueued");
    }
    let _ = std::fs::remove_file(&file);
}
