//! Schedules over the executor API: operators add, pause, resume and remove them, viewers read them
//! (secret params masked) and cannot change them; bad input is a 4xx naming what is wrong. And a
//! one-off run at a later time (`run_at` on `POST /v1/runs`).

use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::model::{Lane, RunId};
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use serde_json::{Value, json};

async fn templates(t: &TestDb) {
    t.apply_noop().await;
    t.apply(
        "rotate",
        json!({"params": {"type": "object", "required": ["env"],
                          "properties": {"env": {"type": "string"}, "key": {"type": "string", "secret": true}}},
               "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body = if status == StatusCode::NO_CONTENT { Value::Null } else { resp.json().await.expect("a JSON answer") };
    (status, body)
}

#[tokio::test]
async fn operators_manage_schedules_and_viewers_read_them() {
    let t = TestDb::new().await;
    templates(&t).await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let client = reqwest::Client::new();
    let add = json!({"name": "rotate-keys", "template": "rotate", "cron": "0 4 * * SUN", "time_zone": "Europe/Paris",
                     "params": {"env": "prod", "key": "s3cret"}, "lane": "b", "priority": 5});

    let (status, body) = send(client.post(api.url("/v1/schedules")).bearer_auth(&viewer).json(&add)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer cannot add a schedule: {body}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.schedules").await, 0);

    let (status, created) = send(client.post(api.url("/v1/schedules")).bearer_auth(&op).json(&add)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((created["name"].as_str(), created["lane"].as_str()), (Some("rotate-keys"), Some("B")));
    assert_eq!(created["params"], json!({"env": "prod", "key": "***"}), "secret values never come back");
    let slots = created["next_slots"].as_array().expect("next slots");
    assert_eq!(slots.len(), 5);
    for slot in slots {
        let slot = chrono::DateTime::parse_from_rfc3339(slot.as_str().expect("a time")).expect("RFC 3339");
        assert_eq!(slot.format("%a %H:%M").to_string(), "Sun 04:00", "the wall-clock time in Paris: {slot}");
    }

    let (status, list) = send(client.get(api.url("/v1/schedules")).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["schedules"][0]["name"], "rotate-keys");
    assert_eq!(list["schedules"][0]["params"]["key"], "***");
    let (status, shown) = send(client.get(api.url("/v1/schedules/rotate-keys")).bearer_auth(&viewer)).await;
    assert_eq!((status, shown["next_slots"].as_array().map(Vec::len)), (StatusCode::OK, Some(5)));

    let pause = api.url("/v1/schedules/rotate-keys/pause");
    let (status, _) = send(client.post(&pause).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer cannot pause");
    let (status, paused) = send(client.post(&pause).bearer_auth(&op).json(&json!({"reason": "key freeze"}))).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!((paused["enabled"].as_bool(), paused["pause_reason"].as_str()), (Some(false), Some("key freeze")));
    let (status, resumed) = send(client.post(api.url("/v1/schedules/rotate-keys/resume")).bearer_auth(&op)).await;
    assert_eq!((status, resumed["enabled"].as_bool()), (StatusCode::OK, Some(true)), "{resumed}");

    let one = api.url("/v1/schedules/rotate-keys");
    let (status, _) = send(client.delete(&one).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer cannot remove");
    let (status, _) = send(client.delete(&one).bearer_auth(&op)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, gone) = send(client.get(&one).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert!(gone["error"]["message"].as_str().unwrap_or_default().contains("unknown schedule 'rotate-keys'"));
}

#[tokio::test]
async fn bad_schedules_get_a_4xx_naming_what_is_wrong() {
    let t = TestDb::new().await;
    templates(&t).await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let (_, lane_a) = token(&t.pool, "operator", Some(&[Lane::A])).await;
    let client = reqwest::Client::new();
    let base = json!({"name": "nightly", "template": "rotate", "cron": "0 3 * * *", "params": {"env": "prod"}});
    let with = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (with(json!({"cron": "0 25 * * *"})), StatusCode::UNPROCESSABLE_ENTITY, "hour field '25'"),
        (
            with(json!({"time_zone": "Europe/Pari"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown time zone 'Europe/Pari'",
        ),
        (with(json!({"template": "rotat"})), StatusCode::NOT_FOUND, "unknown template 'rotat'"),
        (with(json!({"params": {}})), StatusCode::UNPROCESSABLE_ENTITY, "missing required param 'env'"),
        (with(json!({"lane": "E"})), StatusCode::UNPROCESSABLE_ENTITY, "unknown lane 'E'"),
        (with(json!({"colour": "red"})), StatusCode::UNPROCESSABLE_ENTITY, "unknown field `colour`"),
    ];
    for (body, want, needle) in cases {
        let (status, err) = send(client.post(api.url("/v1/schedules")).bearer_auth(&op).json(&body)).await;
        assert_eq!(status, want, "{needle}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "'{message}' should say '{needle}'");
    }
    // A token limited to lane A adds schedules in lane A only, and must name it.
    let (status, err) = send(client.post(api.url("/v1/schedules")).bearer_auth(&lane_a).json(&base)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let (status, _) =
        send(client.post(api.url("/v1/schedules")).bearer_auth(&lane_a).json(&with(json!({"lane": "B"})))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(t.count("SELECT count(*) FROM runlane.schedules").await, 0, "nothing was added");
    let (status, _) =
        send(client.post(api.url("/v1/schedules")).bearer_auth(&lane_a).json(&with(json!({"lane": "a"})))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, err) = send(client.post(api.url("/v1/schedules/nope/pause")).bearer_auth(&op)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 0, "checking a schedule enqueues nothing");
}

#[tokio::test]
async fn a_run_created_with_a_later_run_at_waits_as_scheduled_until_then() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(6);
    let body = json!({"template": "noop", "lane": "C", "run_at": later.to_rfc3339()});
    let (status, created) = send(reqwest::Client::new().post(api.url("/v1/runs")).bearer_auth(&op).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let run: RunId = serde_json::from_value(created["run_id"].clone()).expect("run id");
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!(rec.status, "scheduled");
    assert_eq!(rec.run_at.timestamp_micros(), later.timestamp_micros(), "due at the time given");
    let (_, shown) = send(reqwest::Client::new().get(api.url(&format!("/v1/runs/{run}"))).bearer_auth(&op)).await;
    assert_eq!(shown["status"], "scheduled");
}
