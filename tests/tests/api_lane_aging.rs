//! A lane's priority aging through the executor API: operators set it (a lane-limited token only for
//! its lanes), every token sees it in `/v1/lanes`, bad input is 422 naming what is wrong.

use reqwest::StatusCode;
use runlane_core::model::Lane;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use serde_json::{Value, json};

async fn post(api: &TestApi, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new().post(api.url(path)).bearer_auth(token).json(&body).send().await.expect("post");
    let status = resp.status();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn lanes(api: &TestApi, token: &str) -> Value {
    let resp = reqwest::Client::new().get(api.url("/v1/lanes")).bearer_auth(token).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("lanes")
}

#[tokio::test]
async fn operators_set_a_lanes_aging_and_every_token_sees_it() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, operator) = token(&t.pool, "operator", None).await;
    let (_, lane_a) = token(&t.pool, "operator", Some(&[Lane::A])).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let (_, worker) = token(&t.pool, "worker", None).await;
    t.enqueue("noop", Lane::B).await;

    let (status, set) = post(&api, "/v1/lanes/b/aging", &operator, json!({"ms_per_point": 1000})).await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set, json!({"lane": "B", "aging_ms_per_point": 1000, "rekeyed": 1}));
    for tok in [&viewer, &worker, &operator] {
        let list = lanes(&api, tok).await;
        let rates: Vec<&Value> =
            list["lanes"].as_array().expect("lanes").iter().map(|l| &l["aging_ms_per_point"]).collect();
        assert_eq!(rates, [&Value::Null, &json!(1000), &Value::Null, &Value::Null]);
    }

    for tok in [&viewer, &worker] {
        let (status, _) = post(&api, "/v1/lanes/A/aging", tok, json!({"ms_per_point": 5})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, err) = post(&api, "/v1/lanes/B/aging", &lane_a, json!({"ms_per_point": 5})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, _) = post(&api, "/v1/lanes/A/aging", &lane_a, json!({"ms_per_point": 5})).await;
    assert_eq!(status, StatusCode::OK, "a lane-limited operator sets its own lane");

    for (path, body, needle) in [
        ("/v1/lanes/E/aging", json!({"ms_per_point": 5}), "unknown lane 'E'"),
        ("/v1/lanes/B/aging", json!({"ms_per_point": -1}), "between 1 and 86400000 ms per priority point"),
        ("/v1/lanes/B/aging", json!({"ms_per_point": 86_400_001}), "got 86400001"),
        ("/v1/lanes/B/aging", json!({}), "missing field `ms_per_point`"),
        ("/v1/lanes/B/aging", json!({"ms_per_point": 5, "why": "x"}), "unknown field `why`"),
    ] {
        let (status, err) = post(&api, path, &operator, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {err}");
        assert!(err["error"]["message"].as_str().unwrap_or("").contains(needle), "{path}: {err}");
    }
    let (status, off) = post(&api, "/v1/lanes/B/aging", &operator, json!({"ms_per_point": 0})).await;
    assert_eq!((status, &off["aging_ms_per_point"]), (StatusCode::OK, &Value::Null), "0 turns it off");
}
