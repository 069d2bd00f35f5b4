//! A template's policy through the SQL API: every field's bad value is refused at apply naming the
//! field and the rule, good values are stored with the defaults filled in, and the policy takes
//! effect (the retry's wait, the capabilities a claim needs).

use chrono::{DateTime, Utc};
use runlane_core::model::*;
use runlane_core::{Error, db};
use runlane_tests::TestDb;
use runlane_tests::templates::bad_policies;
use serde_json::{Value, json};

const NOOP: &str = r#"[{"name": "s", "kind": "noop"}]"#;

/// A spec of one no-op step with `fields` added.
fn spec(fields: Value) -> Value {
    let mut spec = json!({"steps": serde_json::from_str::<Value>(NOOP).expect("steps")});
    for (k, v) in fields.as_object().expect("an object of fields") {
        spec[k] = v.clone();
    }
    spec
}

#[tokio::test]
async fn every_policy_field_refuses_a_bad_value_naming_the_field_and_the_rule() {
    let t = TestDb::new().await;
    for (fields, field, problem) in bad_policies() {
        let bad = spec(fields.clone());
        let found = db::template_problems(&t.pool, "bad", &bad).await.expect("template_problems");
        let found: Vec<(&str, &str)> = found.iter().map(|p| (p.field.as_str(), p.problem.as_str())).collect();
        assert_eq!(found, [(field, problem)], "{fields}");
        match db::apply_template(&t.pool, "bad", &bad).await {
            Err(Error::Invalid { message, problems }) => {
                assert_eq!(message, format!("template 'bad': {problem}"));
                assert_eq!(problems, [problem]);
            }
            other => panic!("{fields}: expected Invalid, got {other:?}"),
        }
    }
    // Every problem at once, each named, in the order of the fields.
    let many = spec(json!({"prority": 5, "priority": 500, "backoff_jitter": 2}));
    match db::apply_template(&t.pool, "bad", &many).await {
        Err(Error::Invalid { problems, .. }) => assert_eq!(
            problems,
            [
                "unknown field 'prority' (did you mean 'priority'?)".to_string(),
                "priority must be between -100 and 100, got 500".into(),
                "backoff_jitter must be between 0 and 1, got 2".into(),
            ]
        ),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let named = db::template_problems(&t.pool, "Bad Name", &spec(json!({}))).await.expect("problems");
    assert_eq!(named[0].field, "name");
    assert!(named[0].problem.starts_with("name must be lowercase letters"), "{:?}", named[0]);
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "nothing applied");
}

#[tokio::test]
async fn the_limits_of_every_bound_apply() {
    let t = TestDb::new().await;
    let lowest = json!({"description": "", "lane": "A", "priority": -100, "timeout_ms": 1000, "max_attempts": 1,
                        "backoff_base_ms": 0, "backoff_multiplier": 1, "backoff_max_ms": 0, "backoff_jitter": 0,
                        "max_crashes": 0, "requires": [], "retention_s": 60});
    let highest = json!({"description": "x".repeat(1000), "lane": "D", "priority": 100, "timeout_ms": 2147483647,
                         "max_attempts": 1000, "backoff_base_ms": 604800000, "backoff_multiplier": 10,
                         "backoff_max_ms": 604800000, "backoff_jitter": 1, "max_crashes": 100,
                         "requires": (0..16).map(|i| format!("c{i}")).collect::<Vec<_>>(), "retention_s": 315360000});
    for (name, fields) in [("lowest", lowest), ("highest", highest)] {
        let s = spec(fields);
        assert!(db::template_problems(&t.pool, name, &s).await.expect("problems").is_empty(), "{name}");
        db::apply_template(&t.pool, name, &s).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn good_values_are_stored_and_omitted_ones_take_their_defaults() {
    let t = TestDb::new().await;
    let full = json!({"description": "Rotates the keys", "lane": "B", "priority": 20, "timeout_ms": 600000,
                      "max_attempts": 4, "backoff_base_ms": 2000, "backoff_multiplier": 1.5,
                      "backoff_max_ms": 60000, "backoff_jitter": 0.1, "max_crashes": 2,
                      "requires": ["gpu", "fra1"], "retention_s": 86400,
                      "steps": [{"name": "run", "kind": "docker", "image": "busybox"}]});
    assert_eq!(t.apply("rotate", full.clone()).await, 1);
    let v = db::get_template_version(&t.pool, "rotate", None).await.expect("stored");
    assert_eq!((v.version, v.newest_version, v.description.as_str()), (1, 1, "Rotates the keys"));
    assert_eq!(v.spec, full, "the spec as applied");
    let p = v.policy;
    assert_eq!(
        (p.lane.as_str(), p.priority, p.timeout_ms, p.max_attempts, p.max_crashes, p.retention_s),
        ("B", 20, 600000, 4, 2, Some(86400))
    );
    assert_eq!((p.backoff_base_ms, p.backoff_multiplier, p.backoff_max_ms, p.backoff_jitter), (2000, 1.5, 60000, 0.1));
    assert_eq!(p.requires, ["docker", "fra1", "gpu"], "declared, and docker for the docker step");

    t.apply("bare", spec(json!({}))).await;
    let p = db::get_template_version(&t.pool, "bare", None).await.expect("stored").policy;
    assert_eq!(
        (p.lane.as_str(), p.priority, p.timeout_ms, p.max_attempts, p.max_crashes, p.retention_s),
        ("C", 0, 3600000, 1, 3, None)
    );
    assert_eq!(
        (p.backoff_base_ms, p.backoff_multiplier, p.backoff_max_ms, p.backoff_jitter),
        (1000, 2.0, 3600000, 0.25)
    );
    assert!(p.requires.is_empty());

    // A run of it gets the template's lane, priority, timeout and limits.
    let req = EnqueueRequest { template: "rotate".into(), params: json!({}), ..Default::default() };
    let run = db::enqueue_run(&t.pool, &req).await.expect("enqueue");
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!((rec.lane.as_str(), rec.priority, rec.max_attempts, rec.max_crashes), ("B", 20, 4, 2));
}

#[tokio::test]
async fn applying_the_same_spec_keeps_its_version_and_says_so() {
    let t = TestDb::new().await;
    let first = db::apply_template_reporting(&t.pool, "x", &spec(json!({}))).await.expect("apply");
    assert_eq!((first.version, first.changed), (1, true));
    let same = db::apply_template_reporting(&t.pool, "x", &spec(json!({}))).await.expect("apply");
    assert_eq!((same.version, same.changed), (1, false));
    let next = db::apply_template_reporting(&t.pool, "x", &spec(json!({"max_attempts": 2}))).await.expect("apply");
    assert_eq!((next.version, next.changed), (2, true));
    let old = db::get_template_version(&t.pool, "x", Some(1)).await.expect("version 1");
    assert_eq!((old.version, old.newest_version, old.policy.max_attempts), (1, 2, 1));
    match db::get_template_version(&t.pool, "x", Some(9)).await {
        Err(Error::NotFound(m)) => assert_eq!(m, "template 'x' has no version 9"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Fails the attempt of `lease` and returns how long after the failing transaction's `now()` the
/// retry is due (both read inside that transaction, so no clock but the database's is involved).
async fn fail_and_measure(t: &TestDb, lease: Lease) -> chrono::Duration {
    let mut tx = t.pool.begin().await.expect("begin");
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await.expect("now");
    let status = db::complete_run(&mut *tx, lease, Outcome::Failed, None, Some("boom")).await.expect("complete");
    assert_eq!(status, RunStatus::Scheduled);
    let run_at: DateTime<Utc> = sqlx::query_scalar("SELECT run_at FROM runlane.runs WHERE id = $1")
        .bind(lease.run_id)
        .fetch_one(&mut *tx)
        .await
        .expect("run_at");
    tx.commit().await.expect("commit");
    run_at - now
}

#[tokio::test]
async fn each_retry_waits_the_first_delay_times_the_multiplier_up_to_the_cap() {
    let t = TestDb::new().await;
    t.apply(
        "steep",
        spec(json!({"max_attempts": 5, "backoff_base_ms": 1000, "backoff_multiplier": 3, "backoff_max_ms": 5000,
                    "backoff_jitter": 0})),
    )
    .await;
    let worker = t.register(&[Lane::C], 60_000).await;
    let run = t.enqueue("steep", Lane::C).await;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let lease = db::claim_runs(&t.pool, worker, &[Lane::C], 1, None).await.expect("claim")[0].lease();
        waits.push(fail_and_measure(&t, lease).await.num_milliseconds());
        let due = db::get_run(&t.pool, run).await.expect("run").run_at;
        let sweep = SweepOptions { now: Some(due), worker_timeout_s: Some(3600), ..Default::default() };
        assert_eq!(db::sweep_at(&t.pool, &sweep).await.expect("sweep").promoted, 1);
    }
    assert_eq!(waits, [1000, 3000, 5000, 5000], "1 s × 3^(n−1), at most 5 s");
    let event: Value = sqlx::query_scalar(
        "SELECT data FROM runlane.run_events WHERE run_id = $1 AND kind = 'run.retry_scheduled' ORDER BY seq DESC LIMIT 1",
    )
    .bind(run)
    .fetch_one(&t.pool)
    .await
    .expect("retry event");
    assert_eq!((event["failed_attempts"].as_i64(), event["max_attempts"].as_i64()), (Some(4), Some(5)));
    // apply_ops was replaced to compute this; it keeps the hot path's settings.
    let config: Vec<String> = sqlx::query_scalar("SELECT unnest(proconfig) FROM pg_proc WHERE proname = 'apply_ops'")
        .fetch_all(&t.pool)
        .await
        .expect("proconfig");
    assert!(
        config.contains(&"jit=off".into()) && config.contains(&"plan_cache_mode=force_generic_plan".into()),
        "{config:?}"
    );
}

#[tokio::test]
async fn jitter_adds_at_most_its_share_of_the_wait() {
    let t = TestDb::new().await;
    t.apply("jittery", spec(json!({"max_attempts": 2, "backoff_base_ms": 10000, "backoff_jitter": 0.5}))).await;
    let worker = t.register(&[Lane::C], 60_000).await;
    for _ in 0..20 {
        t.enqueue("jittery", Lane::C).await;
    }
    let mut waits = Vec::new();
    while waits.len() < 20 {
        for claimed in db::claim_runs(&t.pool, worker, &[Lane::C], 8, None).await.expect("claim") {
            waits.push(fail_and_measure(&t, claimed.lease()).await.num_microseconds().expect("µs"));
        }
    }
    for w in &waits {
        assert!((10_000_000..=15_000_000).contains(w), "a wait of {w} µs is outside 10 s + up to 50%");
    }
    waits.sort();
    waits.dedup();
    assert!(waits.len() > 1, "jitter spreads the retries: {waits:?}");
}

#[tokio::test]
async fn a_run_is_claimed_only_by_a_worker_with_every_capability_it_requires() {
    let t = TestDb::new().await;
    t.apply("trained", spec(json!({"requires": ["gpu"], "lane": "A"}))).await;
    let plain = t.register(&[Lane::A], 60_000).await;
    let reg = WorkerRegistration {
        host: "gpu-host".into(),
        lanes: vec![Lane::A],
        slots: 1,
        version: "test".into(),
        capabilities: vec!["fra1".into(), "gpu".into()],
        lease_ms: 60_000,
        kill_grace_ms: 0,
    };
    let gpu = db::register_worker(&t.pool, &reg).await.expect("register");
    let run = t.enqueue("trained", Lane::A).await;
    assert!(
        db::claim_runs(&t.pool, plain, &[Lane::A], 1, None).await.expect("claim").is_empty(),
        "no gpu: not claimed"
    );
    let claimed = db::claim_runs(&t.pool, gpu, &[Lane::A], 1, None).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease().run_id, run);
}

#[tokio::test]
async fn a_viewer_may_validate_but_not_apply() {
    let t = TestDb::new().await;
    let mut conn = t.pool.acquire().await.expect("conn");
    sqlx::query("SET ROLE runlane_viewer").execute(&mut *conn).await.expect("set role");
    let problems = db::template_problems(&mut *conn, "x", &spec(json!({"priority": 500}))).await.expect("viewer asks");
    assert_eq!(problems.len(), 1);
    match db::apply_template(&mut *conn, "x", &spec(json!({}))).await {
        Err(Error::Database(e)) => assert!(e.to_string().contains("permission denied"), "{e}"),
        other => panic!("a viewer applied a template: {other:?}"),
    }
    sqlx::query("RESET ROLE").execute(&mut *conn).await.expect("reset role");
}
