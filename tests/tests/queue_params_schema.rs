//! Params schemas mean what they say: every keyword runlane lists passes good params and refuses bad
//! ones, naming the param and the rule, through `enqueue_run`, `enqueue_runs`, a dry run and the API;
//! a template using any other keyword is refused at apply; defaults are filled in at enqueue and are
//! what the worker gets. (`runlane enqueue` runs the same table in cli/tests/enqueue_params.rs.)

use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::{Error, Result};
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_tests::params_cases::{apply_keyword_templates, keyword_cases, refused_schemas};
use serde_json::{Value, json};

fn request(template: &str, params: Value) -> EnqueueRequest {
    EnqueueRequest { template: template.into(), params, ..Default::default() }
}

/// The refusal's message and problems, which must name `says`.
fn refusal<T: std::fmt::Debug>(what: &str, r: Result<T>, says: &str) -> (String, Vec<String>) {
    match r {
        Err(Error::Invalid { message, problems }) => {
            assert!(message.contains(says), "{what}: '{message}' should say '{says}'");
            (message, problems)
        }
        other => panic!("{what}: expected a refusal saying '{says}', got {other:?}"),
    }
}

async fn stored_params(t: &TestDb, run: RunId) -> Value {
    sqlx::query_scalar("SELECT params FROM runlane.runs WHERE id = $1").bind(run).fetch_one(&t.pool).await.expect("run")
}

#[tokio::test]
async fn every_keyword_passes_and_fails_through_the_sql_naming_the_param_and_the_rule() {
    let t = TestDb::new().await;
    apply_keyword_templates(&t).await;
    for c in keyword_cases() {
        let what = format!("{} ({})", c.keyword, c.template);
        let good = db::enqueue_run(&t.pool, &request(c.template, c.good.clone())).await;
        good.unwrap_or_else(|e| panic!("{what}: {} refused: {e}", c.good));
        db::enqueue_runs(&t.pool, &[request(c.template, c.good.clone())])
            .await
            .unwrap_or_else(|e| panic!("{what}: {} refused by enqueue_runs: {e}", c.good));
        db::dry_run_enqueue(&t.pool, &request(c.template, c.good.clone()))
            .await
            .unwrap_or_else(|e| panic!("{what}: {} refused by a dry run: {e}", c.good));

        let before = t.count("SELECT count(*) FROM runlane.runs").await;
        let enqueued = db::enqueue_run(&t.pool, &request(c.template, c.bad.clone())).await;
        let (message, problems) = refusal(&what, enqueued, c.says);
        assert!(message.starts_with(&format!("invalid params for template '{}': ", c.template)), "{what}: {message}");
        assert!(problems.iter().any(|p| p == c.says), "{what}: the DETAIL lists it as it is: {problems:?}");
        let (batched, _) =
            refusal(&what, db::enqueue_runs(&t.pool, &[request(c.template, c.bad.clone())]).await, c.says);
        assert_eq!(batched, format!("run #1: {message}"), "{what}: enqueue_runs says the same");
        let (dry, _) = refusal(&what, db::dry_run_enqueue(&t.pool, &request(c.template, c.bad.clone())).await, c.says);
        assert_eq!(dry, message, "{what}: a dry run says the same");
        assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, before, "{what}: nothing written");
    }
    let secret = keyword_cases().into_iter().find(|c| c.keyword == "secret").expect("secret case");
    let (message, _) = refusal("secret", db::enqueue_run(&t.pool, &request(secret.template, secret.bad)).await, "");
    assert!(!message.contains("hunter2"), "a secret is never repeated: {message}");
}

#[tokio::test]
async fn every_keyword_passes_and_fails_through_the_api_naming_the_param_and_the_rule() {
    let t = TestDb::new().await;
    apply_keyword_templates(&t).await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let client = reqwest::Client::new();
    for c in keyword_cases() {
        let what = format!("{} ({})", c.keyword, c.template);
        let post = |params: &Value| {
            client
                .post(api.url("/v1/runs"))
                .bearer_auth(&op)
                .json(&json!({"template": c.template, "params": params}))
                .send()
        };
        let good = post(&c.good).await.expect("request");
        assert_eq!(good.status(), StatusCode::CREATED, "{what}: {}", good.text().await.unwrap_or_default());
        let bad = post(&c.bad).await.expect("request");
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        let body: Value = bad.json().await.expect("error json");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(c.says), "{what}: '{message}' should say '{}'", c.says);
        assert!(body["error"]["details"].as_array().is_some_and(|d| d.contains(&json!(c.says))), "{what}: {body}");
    }
}

#[tokio::test]
async fn a_template_using_an_unsupported_keyword_is_refused_at_apply_naming_it() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let steps = json!([{"name": "s", "kind": "noop"}]);
    for (schema, says) in refused_schemas() {
        let spec = json!({"params": schema, "steps": steps});
        let (message, _) = refusal(&schema.to_string(), db::apply_template(&t.pool, "refused", &spec).await, says);
        assert!(message.starts_with("template 'refused': "), "{message}");
        let resp = reqwest::Client::new()
            .put(api.url("/v1/templates/refused"))
            .bearer_auth(&op)
            .json(&spec)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{schema}");
        let body: Value = resp.json().await.expect("error json");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{schema}: {body}");
    }
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "nothing stored");
}

#[tokio::test]
async fn defaults_are_filled_in_at_enqueue_and_are_what_the_worker_gets() {
    let t = TestDb::new().await;
    let schema = json!({"type": "object", "required": ["mode"], "properties": {
        "mode": {"type": "string", "default": "safe"},
        "replicas": {"type": "integer", "minimum": 1, "default": 2},
        "db": {"type": "object", "default": {"host": "pg1"},
               "properties": {"host": {"type": "string"}, "port": {"type": "integer", "default": 5432}}},
        "hosts": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 1}}}}
    }});
    t.apply("defaults", json!({"params": schema, "steps": [{"name": "s", "kind": "noop"}]})).await;
    let given = json!({"mode": "fast", "hosts": [{"name": "a"}, {"weight": 3}]});
    let filled = json!({"mode": "fast", "replicas": 2, "db": {"host": "pg1", "port": 5432},
                        "hosts": [{"name": "a", "weight": 1}, {"weight": 3}]});
    let one = db::enqueue_run(&t.pool, &request("defaults", given.clone())).await.expect("enqueue_run");
    assert_eq!(stored_params(&t, one).await, filled, "enqueue_run stores the defaults");
    let many = db::enqueue_runs(&t.pool, &[request("defaults", given.clone()), request("defaults", json!({}))])
        .await
        .expect("enqueue_runs");
    assert_eq!(stored_params(&t, many[0]).await, filled, "enqueue_runs stores the defaults");
    assert_eq!(
        stored_params(&t, many[1]).await,
        json!({"mode": "safe", "replicas": 2, "db": {"host": "pg1", "port": 5432}}),
        "a required param with a default may be left out"
    );
    let given_db = json!({"db": {"host": "pg2"}, "replicas": 5});
    let run = db::enqueue_run(&t.pool, &request("defaults", given_db)).await.expect("enqueue");
    assert_eq!(
        stored_params(&t, run).await,
        json!({"mode": "safe", "replicas": 5, "db": {"host": "pg2", "port": 5432}})
    );

    let worker = t.register(&[Lane::C], 15_000).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::C], 10, None).await.expect("claim");
    assert_eq!(claimed.len(), 4);
    let got = claimed.iter().find(|c| c.run_id == one).expect("the first run");
    assert_eq!(got.params, filled, "the worker gets the params with their defaults");
}

#[tokio::test]
async fn a_stored_version_whose_schema_cannot_be_enforced_is_refused_at_enqueue_naming_the_keyword() {
    let t = TestDb::new().await;
    // As a version stored before the schema keywords were checked at apply.
    sqlx::query(
        "INSERT INTO runlane.run_templates (name, version, params_schema, steps, spec)
         VALUES ('legacy', 1, $1, '[{\"name\": \"s\", \"kind\": \"noop\"}]', '{}')",
    )
    .bind(json!({"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}))
    .execute(&t.pool)
    .await
    .expect("insert");
    let says = "template 'legacy' version 1 has a params schema runlane cannot enforce \
                (unsupported keyword 'format' in the schema of param 'email'";
    refusal("enqueue_run", db::enqueue_run(&t.pool, &request("legacy", json!({"email": "x"}))).await, says);
    let (batched, _) = refusal("enqueue_runs", db::enqueue_runs(&t.pool, &[request("legacy", json!({}))]).await, says);
    assert!(batched.starts_with("run #1: "), "{batched}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 0);
}

#[tokio::test]
async fn annotations_and_nested_schemas_apply_and_a_secret_stays_out_of_every_message() {
    let t = TestDb::new().await;
    let schema = json!({"type": "object", "title": "Rotate", "description": "rotate a key", "additionalProperties": false,
        "required": ["token"], "properties": {
            "token": {"type": "string", "secret": true, "pattern": "^tok_", "description": "the API token",
                      "examples": ["tok_abc"]},
            "scopes": {"type": "array", "minItems": 1, "items": {"enum": ["read", "write"]}}}});
    t.apply("rotate", json!({"params": schema, "steps": [{"name": "s", "kind": "noop"}]})).await;
    let (message, problems) = refusal(
        "several",
        db::enqueue_run(&t.pool, &request("rotate", json!({"token": "sk_live_XYZ", "scopes": ["admin"], "x": 1})))
            .await,
        "param 'token' must match the pattern '^tok_'",
    );
    assert!(!message.contains("sk_live_XYZ"), "{message}");
    assert_eq!(
        problems,
        [
            "param 'token' must match the pattern '^tok_'",
            r#"param 'scopes[0]' must be one of "read", "write", got "admin""#,
            "unknown param 'x'"
        ],
        "every violation, each once"
    );
    db::enqueue_run(&t.pool, &request("rotate", json!({"token": "tok_1", "scopes": ["read"]}))).await.expect("valid");
}

#[tokio::test]
async fn the_params_schema_example_in_the_operations_guide_applies_and_means_what_it_says() {
    let t = TestDb::new().await;
    let guide = include_str!("../../docs/OPERATIONS.md");
    let section = &guide[guide.find("## Params schemas").expect("the section")..];
    let yaml = section.split("```yaml\n").nth(1).and_then(|s| s.split("```").next()).expect("the example");
    let template =
        runlane_core::templates::parse_template(yaml, std::path::Path::new("OPERATIONS.md")).expect("parses");
    db::apply_template(&t.pool, &template.name, &template.spec).await.expect("applies");
    let run = db::enqueue_run(&t.pool, &request("deploy", json!({"service": "api", "version": "1.4", "hosts": ["a"]})))
        .await
        .expect("enqueue");
    assert_eq!(
        stored_params(&t, run).await,
        json!({"service": "api", "version": "1.4", "hosts": ["a"], "env": "staging", "replicas": 2})
    );
    let bad = json!({"service": "api", "version": "1.4", "db": {"port": 70000}, "verison": 1});
    let (_, problems) = refusal("the guide's refusals", db::enqueue_run(&t.pool, &request("deploy", bad)).await, "");
    assert_eq!(problems, ["param 'db.port' must be at most 65535, got 70000", "unknown param 'verison'"]);
}
