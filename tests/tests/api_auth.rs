//! The executor API's routes against its OpenAPI document, and who may call what.

use reqwest::{Method, StatusCode};
use runlane_core::model::Lane;
use runlane_executor_api::routes::{Auth, table};
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use serde_json::{Value, json};

/// A concrete URL for a route path (placeholders filled with well-formed ids).
fn concrete(path: &str) -> String {
    path.replace("{run_id}", "01a205d0-0000-7000-8000-000000000001")
        .replace("{worker_id}", "01a205d0-0000-7000-8000-000000000002")
        .replace("{artifact_id}", "01a205d0-0000-7000-8000-000000000003")
        .replace("{step}", "0")
        .replace("{name}", "report.txt")
        .replace("{lane}", "B")
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_answers() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let doc: Value = reqwest::get(api.url("/openapi.json")).await.expect("openapi").json().await.expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    let routes = table();
    for r in &routes {
        assert!(
            paths.get(r.path).and_then(|p| p.get(r.method)).is_some(),
            "{} {} is missing from /openapi.json",
            r.method,
            r.path
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(documented, routes.len(), "the document has operations the router lacks");
    // Each documented operation is routed: never the fallback's "no such route", never 405.
    let client = reqwest::Client::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = client.request(m, api.url(&concrete(path))).send().await.expect("request");
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!body.contains("no such route"), "{method} {path} fell through to the fallback");
        }
    }
}

/// Who may call each bearer route.
fn allowed(method: &str, path: &str) -> &'static [&'static str] {
    const READ: &[&str] = &["viewer", "operator"];
    match (method, path) {
        ("get", "/v1/lanes") => &["viewer", "operator", "worker"],
        ("post", "/v1/runs")
        | ("post", "/v1/runs/{run_id}/cancel")
        | ("post", "/v1/runs/{run_id}/retry")
        | ("post", "/v1/lanes/{lane}/pause")
        | ("post", "/v1/lanes/{lane}/resume")
        | ("post", "/v1/lanes/stop")
        | ("post", "/v1/lanes/{lane}/aging")
        | ("put", "/v1/templates/{name}")
        | ("post", "/v1/schedules")
        | ("post", "/v1/schedules/{name}/pause")
        | ("post", "/v1/schedules/{name}/resume")
        | ("delete", "/v1/schedules/{name}") => &["operator"],
        ("get", _) if !matches!(path, "/v1/notices" | "/v1/fleet") => READ,
        _ => &["worker"],
    }
}

#[tokio::test]
async fn tokens_roles_and_lanes_are_enforced() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |s| s.api.rate_burst = 10_000).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for role in ["viewer", "operator", "worker"] {
        tokens.push((role, token(&t.pool, role, None).await.1));
    }
    for r in table().iter().filter(|r| r.auth == Auth::Bearer) {
        let m = Method::from_bytes(r.method.to_uppercase().as_bytes()).expect("method");
        let url = api.url(&concrete(r.path));
        let anonymous = client.request(m.clone(), &url).send().await.expect("request");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{} {} without a token", r.method, r.path);
        let shape: Value = anonymous.json().await.expect("json error");
        assert_eq!(shape["error"]["code"], "unauthorized");
        for (role, tok) in &tokens {
            let status = client.request(m.clone(), &url).bearer_auth(tok).send().await.expect("request").status();
            if allowed(r.method, r.path).contains(role) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} may {} {}: {status}",
                    r.method,
                    r.path
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} may not {} {}", r.method, r.path);
            }
        }
    }

    // A worker token limited to lane B cannot register for, or claim from, lane A.
    let (_, scoped) = token(&t.pool, "worker", Some(&[Lane::B])).await;
    let reg = client
        .post(api.url("/v1/workers"))
        .bearer_auth(&scoped)
        .json(&json!({"host": "h", "lanes": ["B"], "slots": 1, "version": "t", "lease_ms": 5000}))
        .send()
        .await
        .expect("register");
    assert_eq!(reg.status(), StatusCode::CREATED);
    let worker: Value = reg.json().await.expect("json");
    let claim = |lanes: Value| {
        client
            .post(api.url("/v1/claims"))
            .bearer_auth(&scoped)
            .json(&json!({"worker_id": worker["worker_id"], "lanes": lanes, "limit": 1}))
            .send()
    };
    assert_eq!(claim(json!(["B"])).await.expect("claim").status(), StatusCode::OK);
    assert_eq!(claim(json!(["A"])).await.expect("claim").status(), StatusCode::FORBIDDEN);
    assert_eq!(claim(json!(["B", "A"])).await.expect("claim").status(), StatusCode::FORBIDDEN);

    // Revoked and expired tokens are refused.
    let (id, revoked) = token(&t.pool, "viewer", None).await;
    assert_eq!(
        client.get(api.url("/v1/runs")).bearer_auth(&revoked).send().await.expect("ok").status(),
        StatusCode::OK
    );
    runlane_core::db::revoke_token(&t.pool, id).await.expect("revoke");
    let resp = client.get(api.url("/v1/runs")).bearer_auth(&revoked).send().await.expect("revoked");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (id, expired) = token(&t.pool, "viewer", None).await;
    sqlx::query("UPDATE runlane.api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&t.pool)
        .await
        .expect("expire");
    let resp = client.get(api.url("/v1/runs")).bearer_auth(&expired).send().await.expect("expired");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("expired"));
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_sha256 FROM runlane.api_tokens").fetch_all(&t.pool).await.expect("hashes");
    assert!(stored.iter().all(|h| h.len() == 32), "only hashes are stored");
    assert!(!stored.iter().any(|h| h == revoked.as_bytes()));
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |s| {
        s.api.rate_per_s = 1;
        s.api.rate_burst = 3;
    })
    .await;
    let (_, tok) = token(&t.pool, "viewer", None).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = client.get(api.url("/v1/lanes")).bearer_auth(&tok).send().await.expect("request");
        statuses.push((resp.status(), resp.headers().get("retry-after").cloned()));
    }
    assert!(statuses[..3].iter().all(|(s, _)| *s == StatusCode::OK), "{statuses:?}");
    let (status, retry_after) = &statuses[4];
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
}

#[tokio::test]
async fn failed_authentications_are_limited_by_address_and_write_nothing() {
    let t = TestDb::new().await;
    let api = TestApi::start(t.pool.clone(), |s| {
        s.api.address_rate_per_s = 1;
        s.api.address_rate_burst = 5;
    })
    .await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let garbage = format!("rlt_not-a-token-{i}");
        statuses.push(client.get(api.url("/v1/runs")).bearer_auth(&garbage).send().await.expect("request").status());
    }
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "each made-up token: {statuses:?}");

    let (id, expired) = token(&t.pool, "viewer", None).await;
    sqlx::query("UPDATE runlane.api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&t.pool)
        .await
        .expect("expire");
    let roomy = TestApi::start(t.pool.clone(), |_| {}).await;
    let resp = client.get(roomy.url("/v1/runs")).bearer_auth(&expired).send().await.expect("expired");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM runlane.api_tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&t.pool)
            .await
            .expect("token");
    assert_eq!(used, None, "a refused token is not written to");
}
