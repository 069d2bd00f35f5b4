//! Pausing lanes and stopping the fleet through the executor API: operators only (a lane-limited
//! token only its lanes, and never the whole fleet), recorded under the token's name, shown in
//! `/v1/lanes` and `/v1/lanes/history`; a claim through the API skips the paused lane.

use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    api: TestApi,
}

impl Client {
    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let resp = self.http.post(self.api.url(path)).bearer_auth(token).json(&body).send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("a JSON answer"))
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.api.url(path)).bearer_auth(token).send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("a JSON answer"))
    }
}

fn lane<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["lanes"].as_array().expect("lanes").iter().find(|l| l["lane"] == name).expect("the lane")
}

#[tokio::test]
async fn operators_pause_resume_and_stop_through_the_api_recorded_under_their_token() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let c = Client { http: reqwest::Client::new(), api: TestApi::start(t.pool.clone(), |_| {}).await };
    let (_, operator) = token(&t.pool, "operator", None).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let b_run = t.enqueue("noop", Lane::B).await;
    let a_run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&Lane::ALL, 60_000).await;

    let (status, paused) = c.post("/v1/lanes/b/pause", &operator, json!({"reason": "bad canary"})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(
        (&paused["lane"], &paused["paused"], &paused["changed"], &paused["paused_by"], &paused["pause_reason"]),
        (&json!("B"), &json!(true), &json!(true), &json!("token:test"), &json!("bad canary"))
    );
    // Every token reads the lanes, pauses included.
    let (_, list) = c.get("/v1/lanes", &worker_token).await;
    let b = lane(&list, "B");
    assert_eq!(
        (&b["paused"], &b["paused_by"], &b["pause_reason"]),
        (&json!(true), &json!("token:test"), &json!("bad canary"))
    );
    assert_eq!(b["paused_at"], paused["paused_at"]);
    assert_eq!((&lane(&list, "A")["paused"], &lane(&list, "A")["paused_at"]), (&json!(false), &Value::Null));

    // A claim through the API skips the paused lane, whatever the worker's lane order.
    let claim = json!({"worker_id": worker, "lanes": ["B", "A"], "limit": 10});
    let (status, claimed) = c.post("/v1/claims", &worker_token, claim.clone()).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let ids: Vec<&Value> = claimed["runs"].as_array().expect("runs").iter().map(|r| &r["run_id"]).collect();
    assert_eq!(ids, [&json!(a_run)], "only lane A's run");
    assert_eq!(t.status(b_run).await, "queued");

    let (status, resumed) = c.post("/v1/lanes/B/resume", &operator, json!({"reason": "canary green"})).await;
    assert_eq!((status, &resumed["paused"], &resumed["changed"]), (StatusCode::OK, &json!(false), &json!(true)));
    let (_, claimed) = c.post("/v1/claims", &worker_token, claim).await;
    assert_eq!(claimed["runs"][0]["run_id"], json!(b_run), "the resumed lane's run is claimed");

    // The stop: every lane paused, the running runs asked to cancel, under the token's name.
    let (status, stop) =
        c.post("/v1/lanes/stop", &operator, json!({"reason": "incident 7", "cancel_running": true})).await;
    assert_eq!(status, StatusCode::OK, "{stop}");
    assert_eq!((&stop["paused"], &stop["cancel_requested"]), (&json!(["A", "B", "C", "D"]), &json!(2)));
    for run in [a_run, b_run] {
        let events = db::read_events(&t.pool, run, 0, 100).await.expect("events");
        let asked = events.iter().find(|e| e.kind == "run.cancel_requested").expect("a cancel request");
        assert_eq!(asked.data.as_ref().expect("data")["by"], "token:test");
    }

    let (status, history) = c.get("/v1/lanes/history?lane=B&limit=10", &viewer).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let seen: Vec<(&str, &str, &str)> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (e["action"].as_str().unwrap_or(""), e["actor"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("stop", "token:test", "incident 7"),
            ("pause", "token:test", "incident 7"),
            ("resume", "token:test", "canary green"),
            ("pause", "token:test", "bad canary"),
        ],
        "newest first, with who and why"
    );
    assert_eq!(c.get("/v1/lanes/history", &worker_token).await.0, StatusCode::FORBIDDEN, "workers read no history");
}

#[tokio::test]
async fn viewers_workers_and_other_lanes_tokens_cannot_pause_and_bad_input_is_422() {
    let t = TestDb::new().await;
    let c = Client { http: reqwest::Client::new(), api: TestApi::start(t.pool.clone(), |_| {}).await };
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let (_, worker) = token(&t.pool, "worker", None).await;
    let (_, lane_a) = token(&t.pool, "operator", Some(&[Lane::A])).await;
    let (_, operator) = token(&t.pool, "operator", None).await;
    let why = json!({"reason": "why not"});

    for tok in [&viewer, &worker] {
        for path in ["/v1/lanes/A/pause", "/v1/lanes/A/resume"] {
            let (status, err) = c.post(path, tok, why.clone()).await;
            assert_eq!((status, &err["error"]["code"]), (StatusCode::FORBIDDEN, &json!("forbidden")), "{path}");
        }
        let (status, _) = c.post("/v1/lanes/stop", tok, json!({"reason": "x", "cancel_running": true})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, err) = c.post("/v1/lanes/B/pause", &lane_a, why.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(err["error"]["message"].as_str().unwrap_or("").contains("limited to lanes A"), "{err}");
    let (status, err) = c.post("/v1/lanes/stop", &lane_a, why.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(err["error"]["message"].as_str().unwrap_or("").contains("every lane"), "{err}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.lane_events").await, 0, "nothing was done");
    assert_eq!(t.count("SELECT count(*) FROM runlane.lanes WHERE paused_at IS NOT NULL").await, 0);
    let (status, _) = c.post("/v1/lanes/A/pause", &lane_a, why.clone()).await;
    assert_eq!(status, StatusCode::OK, "a lane-limited operator pauses its own lane");

    for (path, body, needle) in [
        ("/v1/lanes/E/pause", why.clone(), "unknown lane 'E' (lanes: A, B, C, D)"),
        ("/v1/lanes/B/pause", json!({"reason": "   "}), "a reason is required"),
        ("/v1/lanes/B/pause", json!({}), "missing field `reason`"),
        ("/v1/lanes/B/resume", json!({"reason": "x", "colour": "red"}), "unknown field `colour`"),
        ("/v1/lanes/stop", json!({"cancel_running": true}), "missing field `reason`"),
    ] {
        let (status, err) = c.post(path, &operator, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {err}");
        assert!(err["error"]["message"].as_str().unwrap_or("").contains(needle), "{path}: {err}");
    }
    let (status, err) = c.get("/v1/lanes/history?limit=0", &viewer).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
}
