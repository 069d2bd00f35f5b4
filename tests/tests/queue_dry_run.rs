//! Dry runs: a run checked as the enqueue checks it and shown as it would run (params with their
//! defaults, steps rendered, secrets masked), with nothing written; a run the enqueue would refuse
//! is refused with the enqueue's own error. Through SQL (`core::dry_run`) and the API
//! (`POST /v1/runs?dry_run=true`); `runlane enqueue --dry-run` is in cli/tests/enqueue_params.rs.

use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::dry_run::dry_run;
use runlane_core::model::*;
use runlane_core::wire::RunDryRun;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-pa55";

/// A backup runbook with a secret, a default, and a step of every kind that takes params.
async fn backup_template(t: &TestDb) {
    t.apply(
        "backup",
        json!({"lane": "B", "priority": 5, "timeout_ms": 600000, "max_attempts": 3,
               "params": {"type": "object", "required": ["database", "password"], "properties": {
                   "database": {"type": "string", "pattern": "^[a-z_]+$"},
                   "password": {"type": "string", "secret": true},
                   "keep_days": {"type": "integer", "minimum": 1, "default": 7}}},
               "steps": [
                   {"name": "dump", "kind": "shell",
                    "command": "PGPASSWORD=${{ params.password }} pg_dump ${{ params.database }} --keep ${{ params.keep_days }}"},
                   {"name": "upload", "kind": "docker", "image": "uploader:1",
                    "command": ["upload", "${{ params.database }}", "--token", "${{ params.password }}"]},
                   {"name": "report", "kind": "http", "method": "POST", "url": "http://hooks.internal/done?db=${{ params.database }}",
                    "body": {"database": "${{ params.database }}", "days": "${{ params.keep_days }}"}, "always": true}]}),
    )
    .await;
}

fn backup(params: Value) -> EnqueueRequest {
    EnqueueRequest { template: "backup".into(), params, ..Default::default() }
}

/// Rows of every table an enqueue writes to.
async fn written(t: &TestDb) -> i64 {
    t.count(
        "SELECT (SELECT count(*) FROM runlane.runs) + (SELECT count(*) FROM runlane.run_events)
              + (SELECT count(*) FROM runlane.lane_counts) + (SELECT count(*) FROM runlane.run_steps)",
    )
    .await
}

fn check_shown(shown: &RunDryRun) {
    assert_eq!((shown.template.as_str(), shown.template_version), ("backup", 1));
    assert_eq!((shown.lane.as_str(), shown.priority, shown.status.as_str()), ("B", 5, "queued"));
    assert_eq!((shown.timeout_ms, shown.max_attempts), (600000, 3));
    assert_eq!(shown.requires, ["docker"], "a docker step needs a worker with docker");
    assert_eq!(shown.params, json!({"database": "orders", "password": "***", "keep_days": 7}));
    assert_eq!(shown.secret_params, ["password"]);
    assert_eq!(shown.existing_run_id, None);
    let names: Vec<&str> = shown.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dump", "upload", "report"]);
    assert_eq!(shown.steps[0].spec["command"], "PGPASSWORD='***' pg_dump 'orders' --keep '7'");
    assert_eq!(shown.steps[1].spec["command"], json!(["upload", "orders", "--token", "***"]));
    assert_eq!(shown.steps[2].spec["url"], "http://hooks.internal/done?db=orders");
    assert_eq!(shown.steps[2].spec["body"], json!({"database": "orders", "days": "7"}));
    assert_eq!(shown.steps[2].spec["always"], true);
    assert!(shown.steps.iter().all(|s| s.problem.is_none()));
    let text = serde_json::to_string(shown).expect("json");
    assert!(!text.contains(SECRET), "the secret appears nowhere: {text}");
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_shows_the_rendered_steps_with_secrets_masked() {
    let t = TestDb::new().await;
    backup_template(&t).await;
    let before = written(&t).await;
    let shown = dry_run(&t.pool, &backup(json!({"database": "orders", "password": SECRET}))).await.expect("dry run");
    check_shown(&shown);

    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let req = EnqueueRequest {
        run_at: Some(later),
        lane: Some(Lane::D),
        ..backup(json!({"database": "orders", "password": "p"}))
    };
    let shown = dry_run(&t.pool, &req).await.expect("dry run");
    assert_eq!((shown.status.as_str(), shown.lane.as_str()), ("scheduled", "D"));
    assert_eq!(shown.run_at.timestamp_micros(), later.timestamp_micros());
    assert_eq!(written(&t).await, before, "a dry run writes nothing");

    // A key that names a run: the enqueue would return that run, and the dry run shows it.
    let keyed = EnqueueRequest {
        idempotency_key: Some("nightly".into()),
        ..backup(json!({"database": "orders", "password": SECRET}))
    };
    let run = db::enqueue_run(&t.pool, &keyed).await.expect("enqueue");
    let again = EnqueueRequest {
        idempotency_key: Some("nightly".into()),
        ..backup(json!({"database": "other", "password": "x"}))
    };
    let shown = dry_run(&t.pool, &again).await.expect("dry run");
    assert_eq!(shown.existing_run_id, Some(run));
    assert_eq!(shown.params["database"], "orders", "the existing run, not the request");
    assert_eq!(shown.params["password"], "***");
    assert_eq!(shown.steps[0].spec["command"], "PGPASSWORD='***' pg_dump 'orders' --keep '7'");
}

#[tokio::test]
async fn a_dry_run_the_enqueue_would_refuse_gets_the_enqueues_own_error() {
    let t = TestDb::new().await;
    backup_template(&t).await;
    let good = json!({"database": "orders", "password": "p"});
    let refused = [
        backup(json!({"database": "Orders!", "password": "p", "keep_days": 0})),
        backup(json!(["not", "an", "object"])),
        EnqueueRequest { template: "backpu".into(), ..backup(good.clone()) },
        EnqueueRequest { priority: Some(101), ..backup(good.clone()) },
        EnqueueRequest { session_id: Some(SessionId(uuid::Uuid::nil())), ..backup(good.clone()) },
        backup(json!({"database": "orders", "password": "x".repeat(300 * 1024)})),
    ];
    let before = written(&t).await;
    for req in &refused {
        let enqueued = db::enqueue_run(&t.pool, req).await.expect_err("the enqueue refuses it");
        let dry = dry_run(&t.pool, req).await.expect_err("so does the dry run");
        assert_eq!(format!("{dry:?}"), format!("{enqueued:?}"), "the same error, variant and message");
    }
    assert_eq!(written(&t).await, before);
}

#[tokio::test]
async fn the_api_answers_a_dry_run_with_what_would_be_enqueued_and_writes_nothing() {
    let t = TestDb::new().await;
    backup_template(&t).await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let client = reqwest::Client::new();
    let post =
        |path: &'static str, token: &str, body: Value| client.post(api.url(path)).bearer_auth(token).json(&body).send();
    let before = written(&t).await;
    let good = json!({"template": "backup", "params": {"database": "orders", "password": SECRET}});
    let resp = post("/v1/runs?dry_run=true", &op, good.clone()).await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    check_shown(&resp.json::<RunDryRun>().await.expect("a RunDryRun"));

    let bad = json!({"template": "backup", "params": {"database": "orders", "password": "p", "keep_days": 0}});
    let refused = post("/v1/runs", &op, bad.clone()).await.expect("request");
    let dry_refused = post("/v1/runs?dry_run=true", &op, bad).await.expect("request");
    assert_eq!(
        (refused.status(), dry_refused.status()),
        (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::UNPROCESSABLE_ENTITY)
    );
    let (a, b): (Value, Value) = (refused.json().await.expect("json"), dry_refused.json().await.expect("json"));
    assert_eq!(a, b, "the same error body");
    assert!(a["error"]["message"].as_str().is_some_and(|m| m.contains("param 'keep_days' must be at least 1, got 0")));

    let denied = post("/v1/runs?dry_run=true", &viewer, good.clone()).await.expect("request");
    assert_eq!(denied.status(), StatusCode::FORBIDDEN, "a dry run needs the rights of the enqueue");
    let unknown = post("/v1/runs?dry_run=maybe", &op, good.clone()).await.expect("request");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(written(&t).await, before, "no dry run wrote anything");

    let created = post("/v1/runs?dry_run=false", &op, good).await.expect("request");
    assert_eq!(created.status(), StatusCode::CREATED, "dry_run=false enqueues");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 1);
}

#[tokio::test]
async fn viewers_may_dry_run_in_sql_and_still_may_not_enqueue() {
    let t = TestDb::new().await;
    backup_template(&t).await;
    let call = |role: &'static str, f: &'static str| {
        let pool = t.pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("tx");
            sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}"))).execute(&mut *tx).await.expect("role");
            let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT runlane.{f}('backup', '{{\"database\": \"orders\", \"password\": \"p\"}}')"
            )))
            .execute(&mut *tx)
            .await;
            tx.rollback().await.expect("rollback");
            r.map(|_| ()).map_err(|e| e.to_string())
        }
    };
    call("runlane_viewer", "dry_run_enqueue").await.expect("a viewer may dry-run");
    call("runlane_operator", "dry_run_enqueue").await.expect("an operator may dry-run");
    let err = call("runlane_viewer", "enqueue_run").await.expect_err("a viewer may not enqueue");
    assert!(err.contains("permission denied"), "{err}");
    let err = call("runlane_worker", "dry_run_enqueue").await.expect_err("a worker may not dry-run");
    assert!(err.contains("permission denied"), "{err}");
}
