//! What the SQL API refuses from hostile or careless callers: oversized params, templates with steps
//! that cannot run, artifact names that try to leave their run, events only runlane may write.

use runlane_core::db::{self, NewArtifact};
use runlane_core::model::*;
use runlane_core::ops::RunOps;
use runlane_core::steps::parse_steps;
use runlane_core::{Error, Result};
use runlane_tests::TestDb;
use serde_json::{Value, json};

fn expect_invalid<T: std::fmt::Debug>(what: &str, r: Result<T>, needle: &str) {
    match r {
        Err(Error::Invalid { message, .. }) => {
            assert!(message.contains(needle), "{what}: '{message}' lacks '{needle}'")
        }
        other => panic!("{what}: expected Invalid naming '{needle}', got {other:?}"),
    }
}

async fn enqueue(t: &TestDb, template: &str, params: Value) -> Result<RunId> {
    db::enqueue_run(&t.pool, &EnqueueRequest { template: template.into(), params, ..Default::default() }).await
}

#[tokio::test]
async fn params_are_bounded_in_total_and_per_value() {
    let t = TestDb::new().await;
    t.apply("open", json!({"steps": [{"name": "s", "kind": "noop"}]})).await;
    let before = t.count("SELECT count(*) FROM runlane.runs").await;
    let mib = "x".repeat(200 * 1024);
    let many: serde_json::Map<String, Value> = (0..6).map(|i| (format!("p{i}"), json!(mib))).collect();
    expect_invalid("1.2 MiB of params", enqueue(&t, "open", Value::Object(many)).await, "over the 1 MiB limit");
    expect_invalid(
        "one 300 KiB value",
        enqueue(&t, "open", json!({"big": "y".repeat(300 * 1024)})).await,
        "param 'big' is 307200 bytes, over the 256 KiB limit",
    );
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, before, "nothing written");
    enqueue(&t, "open", json!({"big": mib})).await.expect("200 KiB in one value is fine");
}

/// Steps every path must refuse: (step, what the refusal names).
fn bad_steps() -> Vec<(Value, &'static str)> {
    vec![
        (json!({"name": "a", "kind": "shell"}), "command"),
        (json!({"name": "a", "kind": "shell", "command": 7}), "command"),
        (json!({"name": "a", "kind": "shell", "command": "x", "comand": "y"}), "comand"),
        (json!({"name": "a", "kind": "http"}), "url"),
        (json!({"name": "a", "kind": "http", "url": "http://x/", "retries": -1}), "retries"),
        (json!({"name": "a", "kind": "docker", "command": ["x"]}), "image"),
        (json!({"name": "a", "kind": "docker", "image": "i", "pull_policy": "sometimes"}), "pull_policy"),
        (json!({"name": "a", "kind": "docker", "image": "i", "mounts": [{"source": "/x"}]}), "target"),
        (json!({"name": "a", "kind": "noop", "extra": true}), "extra"),
        (json!({"name": "a", "kind": "noop", "timeout_ms": "soon"}), "timeout_ms"),
        (json!({"kind": "noop"}), "name"),
        (json!({"name": "a", "kind": "ssh"}), "ssh"),
    ]
}

#[tokio::test]
async fn sql_and_the_step_parser_refuse_the_same_steps() {
    let t = TestDb::new().await;
    for (step, needle) in bad_steps() {
        let steps = json!([step]);
        let parsed = parse_steps(&steps);
        assert!(parsed.is_err(), "the parser accepted {step}");
        expect_invalid(&step.to_string(), db::apply_template(&t.pool, "bad", &json!({"steps": steps})).await, needle);
    }
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "nothing applied");
    let good = json!([
        {"name": "a", "kind": "shell", "command": "echo", "env": {"X": "1"}, "working_dir": "sub", "timeout_ms": 5,
         "cancel_grace_ms": 1, "continue_on_error": true, "always": false},
        {"name": "b", "kind": "http", "method": "POST", "url": "http://x/", "headers": {"a": "b"}, "body": {"k": 1},
         "expect_status": [200, 201], "retries": 2, "retry_backoff_ms": 10, "save_as": "r"},
        {"name": "c", "kind": "docker", "image": "i", "pull_policy": "never", "command": ["a"], "entrypoint": ["b"],
         "env": {"K": "v"}, "working_dir": "/w", "user": "1000", "memory_mb": 64, "cpus": 0.5, "pids_limit": 32,
         "network": "n", "mounts": [{"source": "/s", "target": "/t", "read_only": false}], "artifacts": ["/out"]},
        {"name": "d", "kind": "noop"}
    ]);
    parse_steps(&good).expect("the parser accepts every key");
    db::apply_template(&t.pool, "good", &json!({"steps": good})).await.expect("SQL accepts every key");
}

#[tokio::test]
async fn artifact_names_are_relative_file_paths_and_reserved_event_kinds_are_refused() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let sha = "6b51d431df5d7f141cbececcf79edf3dd861c3b4069f0b11661a3eefacbba918";
    let artifact = |name: &'static str| NewArtifact {
        id: ArtifactId(uuid::Uuid::now_v7()),
        step: Some(0),
        name,
        content_type: "text/plain",
        size_bytes: 2,
        sha256: sha,
        inline_data: Some(b"hi"),
        store_key: None,
    };
    for name in ["../../x", "/etc/y", "a/../b", "./a", "a//b", "a/", "", "a\nb", "a\\b"] {
        expect_invalid(name, db::put_artifact(&t.pool, lease, &artifact(name)).await, "artifact name");
    }
    db::put_artifact(&t.pool, lease, &artifact("reports/daily.txt")).await.expect("a nested relative name");

    for kind in ["run.finished", "step.started", "step.finished", "artifact.created", "run.cancel_requested"] {
        let event = NewEvent { kind: kind.into(), step: None, stream: None, body: None, data: Some(json!({})) };
        expect_invalid(kind, db::append_events(&t.pool, lease, Some(1), &[event]).await, "reserved");
    }
    // The same through apply_ops, the path workers take: the item is refused, nothing of it written.
    for (op, kind) in (1..).zip(["run.finished", "step.finished", "run.cancel_requested"]) {
        let event = NewEvent { kind: kind.into(), step: None, stream: None, body: None, data: Some(json!({})) };
        let item = RunOps { lease, op, events: vec![event], finish: None, start: None, complete: None };
        let outcome = db::apply_ops(&t.pool, &[item]).await.expect("apply_ops answers per item");
        assert_eq!(outcome[0].code, "RL422", "{kind}: {outcome:?}");
        assert!(outcome[0].message.as_deref().unwrap_or_default().contains("reserved"), "{kind}: {outcome:?}");
    }
    let custom = NewEvent { kind: "step.progress".into(), step: Some(0), stream: None, body: None, data: None };
    db::append_events(&t.pool, lease, Some(1), &[custom]).await.expect("other kinds are the step's own");
    let finished = t.count("SELECT count(*) FROM runlane.run_events WHERE kind = 'run.finished'").await;
    assert_eq!(finished, 0);
    assert_eq!(t.status(run).await, "running");
}

#[tokio::test]
async fn an_unknown_template_is_answered_with_the_closest_names() {
    let t = TestDb::new().await;
    for name in ["hello", "health-probe", "db-backup", "docker-smoke", "noop"] {
        t.apply(name, json!({"steps": [{"name": "s", "kind": "noop"}]})).await;
    }
    match enqueue(&t, "helo", json!({})).await {
        Err(Error::NotFound(m)) => {
            assert!(m.contains("unknown template 'helo'") && m.contains("did you mean 'hello'"), "{m}");
            assert!(!m.contains("db-backup") && !m.contains("docker-smoke"), "only close names: {m}");
        }
        other => panic!("{other:?}"),
    }
    match enqueue(&t, "zzzzzzzz", json!({})).await {
        Err(Error::NotFound(m)) => assert!(!m.contains("did you mean") && !m.contains("noop"), "{m}"),
        other => panic!("{other:?}"),
    }
}
