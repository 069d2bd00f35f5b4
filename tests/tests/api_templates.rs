//! `PUT /v1/templates/{name}` goes through the same check as psql and the CLI: every bad policy
//! value is a 422 naming the field and the rule, and nothing is written.

use reqwest::StatusCode;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_tests::templates::bad_policies;
use serde_json::{Value, json};

#[tokio::test]
async fn a_bad_policy_value_is_a_422_naming_the_field_and_the_rule() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let client = reqwest::Client::new();
    let put = |spec: Value| client.put(api.url("/v1/templates/policy")).bearer_auth(&op).json(&spec).send();
    for (fields, _, problem) in bad_policies() {
        let mut spec = json!({"steps": [{"name": "s", "kind": "noop"}]});
        for (k, v) in fields.as_object().expect("fields") {
            spec[k] = v.clone();
        }
        let resp = put(spec).await.expect("request");
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{fields}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["details"], json!([problem]), "{fields}");
        assert_eq!(body["error"]["message"], format!("template 'policy': {problem}"), "{fields}");
    }
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "nothing applied");
    let good = json!({"max_attempts": 3, "backoff_multiplier": 1.5, "backoff_jitter": 0.1, "retention_s": 3600,
                      "steps": [{"name": "s", "kind": "noop"}]});
    let resp = put(good).await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!({"name": "policy", "version": 1}));
}
