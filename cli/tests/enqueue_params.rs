//! `runlane enqueue` against a params schema: every keyword's good params enqueue and its bad ones
//! are refused naming the param and the rule (the table the SQL and API tests run too); and
//! `--dry-run` shows the run with its steps rendered and a secret masked, writing nothing.

use runlane_core::wire::RunDryRun;
use runlane_tests::TestDb;
use runlane_tests::params_cases::{apply_keyword_templates, keyword_cases};
use serde_json::{Value, json};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// `--param key:=json` for every key of `params`.
fn param_args(params: &Value) -> Vec<String> {
    let object = params.as_object().expect("params are an object");
    object.iter().flat_map(|(k, v)| ["--param".to_string(), format!("{k}:={v}")]).collect()
}

/// Runs `runlane enqueue ARGS` against the test database: (success, stdout, stderr).
fn enqueue(t: &TestDb, args: &[String]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("enqueue")
        .args(args)
        .env("DATABASE_URL", &t.url)
        .env("RUNLANE_LOG", "warn")
        .output()
        .expect("runlane enqueue");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runlane_enqueue_passes_and_refuses_each_keyword_naming_the_param_and_the_rule() {
    let t = TestDb::new().await;
    apply_keyword_templates(&t).await;
    for c in keyword_cases() {
        let what = format!("{} ({})", c.keyword, c.template);
        let mut args = vec![c.template.to_string()];
        args.extend(param_args(&c.good));
        let (ok, stdout, stderr) = enqueue(&t, &args);
        assert!(ok, "{what}: {} refused: {stderr}", c.good);
        assert!(stdout.trim().parse::<uuid::Uuid>().is_ok(), "{what}: prints the run id: {stdout}");

        let mut args = vec![c.template.to_string()];
        args.extend(param_args(&c.bad));
        let (ok, _, stderr) = enqueue(&t, &args);
        assert!(!ok, "{what}: {} enqueued", c.bad);
        assert!(stderr.contains(c.says), "{what}: '{stderr}' should say '{}'", c.says);
    }
    assert_eq!(
        t.count("SELECT count(*) FROM runlane.runs").await,
        keyword_cases().len() as i64,
        "one run per good case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runlane_enqueue_dry_run_shows_the_rendered_steps_with_a_secret_masked_and_writes_nothing() {
    let t = TestDb::new().await;
    t.apply(
        "deploy",
        json!({"params": {"type": "object", "required": ["service"], "properties": {
                   "service": {"type": "string"}, "token": {"type": "string", "secret": true},
                   "replicas": {"type": "integer", "default": 3}}},
               "steps": [{"name": "roll", "kind": "shell",
                          "command": "deploy ${{ params.service }} --replicas ${{ params.replicas }}\necho done",
                          "env": {"TOKEN": "${{ params.token }}"}},
                         {"name": "check", "kind": "http", "url": "https://${{ params.service }}.internal/health"}]}),
    )
    .await;
    let count = "SELECT (SELECT count(*) FROM runlane.runs) + (SELECT count(*) FROM runlane.run_events)
                      + (SELECT count(*) FROM runlane.lane_counts)";
    let before = t.count(count).await;
    let args: Vec<String> =
        ["deploy", "--dry-run", "--lane", "A", "--param", "service=billing", "--param", "token=tok-very-secret"]
            .map(String::from)
            .to_vec();
    let (ok, stdout, stderr) = enqueue(&t, &args);
    assert!(ok, "{stderr}");
    for expected in [
        "dry run: nothing was enqueued",
        "template  deploy (version 1)",
        "lane      A, priority 0, queued",
        r#"params    {"replicas":3,"service":"billing","token":"***"}"#,
        "  0. roll (shell)",
        "command: deploy 'billing' --replicas '3'\n         echo done",
        r#"env: {"TOKEN":"***"}"#,
        "  1. check (http)",
        "url: https://billing.internal/health",
    ] {
        assert!(stdout.contains(expected), "'{expected}' in:\n{stdout}");
    }
    assert!(!stdout.contains("tok-very-secret"), "{stdout}");

    let mut json_args = args.clone();
    json_args.push("--json".into());
    let (ok, stdout, stderr) = enqueue(&t, &json_args);
    assert!(ok, "{stderr}");
    let shown: RunDryRun = serde_json::from_str(stdout.trim()).expect("one RunDryRun");
    assert_eq!(shown.params, json!({"service": "billing", "token": "***", "replicas": 3}));
    assert_eq!(shown.steps[0].spec["env"], json!({"TOKEN": "***"}));
    assert!(!stdout.contains("tok-very-secret"));

    let (ok, _, stderr) = enqueue(&t, &["deploy".into(), "--dry-run".into(), "--param".into(), "replicas:=2".into()]);
    assert!(!ok && stderr.contains("missing required param 'service'"), "the enqueue's own refusal: {stderr}");
    assert_eq!(t.count(count).await, before, "a dry run writes nothing");
}
