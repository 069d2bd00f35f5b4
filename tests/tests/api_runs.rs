//! The executor API over a real database: bad input, the SSE event stream, signed artifact URLs.

use futures_util::StreamExt;
use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::model::*;
use runlane_executor_api::signing::Signer;
use runlane_tests::TestDb;
use runlane_tests::api::{TEST_SIGNING_KEY, TestApi, token};
use serde_json::{Value, json};
use std::time::Duration;

async fn deploy_template(t: &TestDb) {
    t.apply(
        "deploy",
        json!({"params": {"type": "object", "required": ["service", "replicas"], "additionalProperties": false,
                          "properties": {"service": {"type": "string"}, "replicas": {"type": "integer"}}},
               "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_the_documented_4xx_and_writes_nothing() {
    let t = TestDb::new().await;
    deploy_template(&t).await;
    let api = TestApi::start(t.pool.clone(), |s| s.api.max_body_bytes = 64 * 1024).await;
    let (_, op) = token(&t.pool, "operator", None).await;
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client.post(api.url("/v1/runs")).bearer_auth(&op).header("content-type", "application/json").body(body).send()
    };
    let count = "SELECT (SELECT count(*) FROM runlane.runs) + (SELECT count(*) FROM runlane.run_events)";
    let before = t.count(count).await;

    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"{\"template\": ".to_vec(), StatusCode::BAD_REQUEST, "malformed JSON"),
        (
            br#"{"template": "deploy", "colour": "red"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `colour`",
        ),
        (
            json!({"template": "deploy", "params": {"service": "x".repeat(100_000)}}).to_string().into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit",
        ),
        (
            json!({"template": "deploy", "lane": "E", "params": {"service": "a", "replicas": 1}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown lane 'E'",
        ),
        (json!({"template": "nope"}).to_string().into_bytes(), StatusCode::NOT_FOUND, "unknown template 'nope'"),
    ];
    for (body, status, needle) in cases {
        let resp = post(body).await.expect("request");
        assert_eq!(resp.status(), status, "{needle}");
        let err: Value = resp.json().await.expect("error json");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "'{message}' should say '{needle}'");
    }
    let resp = post(
        json!({"template": "deploy", "params": {"service": 7, "replicas": "two", "colour": "red"}})
            .to_string()
            .into_bytes(),
    )
    .await
    .expect("request");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "invalid");
    let details: Vec<String> = serde_json::from_value(err["error"]["details"].clone()).expect("details list");
    assert_eq!(details.len(), 3, "every violation listed: {details:?}");
    assert_eq!(t.count(count).await, before, "nothing written");

    let ok = post(
        json!({"template": "deploy", "lane": "B", "params": {"service": "api", "replicas": 2}})
            .to_string()
            .into_bytes(),
    )
    .await
    .expect("request");
    assert_eq!(ok.status(), StatusCode::CREATED);
}

/// One SSE message: (id, event, data), or a comment (keep-alive).
#[derive(Debug, PartialEq)]
enum Sse {
    Event { id: i64, kind: String },
    Comment,
}

/// Reads SSE messages from a response until `stop` says so or the stream ends.
async fn read_sse(resp: reqwest::Response, mut stop: impl FnMut(&[Sse]) -> bool) -> Vec<Sse> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while !stop(&out) {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind, mut comment) = (None, String::new(), false);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if line.starts_with(':') {
                    comment = true;
                }
            }
            match id {
                Some(id) => out.push(Sse::Event { id, kind }),
                None if comment => out.push(Sse::Comment),
                None => {}
            }
        }
    }
    out
}

fn ids(msgs: &[Sse]) -> Vec<i64> {
    msgs.iter().filter_map(|m| if let Sse::Event { id, .. } = m { Some(*id) } else { None }).collect()
}

#[tokio::test]
async fn sse_gives_backlog_then_live_events_resumes_without_gap_and_keeps_alive() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |s| s.api.sse_keepalive_ms = 300).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let line = |s: &str| vec![NewEvent::output(0, Stream::Stdout, s)];
    for i in 0..3 {
        db::append_events(&t.pool, lease, Some(i + 1), &line(&format!("backlog {i}"))).await.expect("append");
    }
    let client = reqwest::Client::new();
    let url = api.url(&format!("/v1/runs/{run}/events/stream"));
    let resp = client.get(&url).bearer_auth(&viewer).send().await.expect("sse");
    assert_eq!(resp.status(), StatusCode::OK);
    let writer = {
        let pool = t.pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 0..2 {
                db::append_events(
                    &pool,
                    lease,
                    Some(4 + i),
                    &[NewEvent::output(0, Stream::Stdout, format!("live {i}"))],
                )
                .await
                .expect("append");
            }
        })
    };
    // Backlog 1..=6 (queued, claimed, the first step started, 3 lines), live 7..=8, then a quiet spell
    // with keep-alives.
    let mut saw_last_at = None;
    let first = read_sse(resp, |msgs| {
        if saw_last_at.is_none() && ids(msgs).contains(&8) {
            saw_last_at = Some(msgs.len());
        }
        saw_last_at.is_some_and(|at| msgs[at..].iter().filter(|m| **m == Sse::Comment).count() >= 2)
    })
    .await;
    writer.await.expect("writer");
    assert_eq!(ids(&first), (1..=8).collect::<Vec<_>>(), "backlog then live, in order, once each");
    assert!(first.contains(&Sse::Event { id: 2, kind: "run.claimed".into() }));
    assert!(first.iter().filter(|m| **m == Sse::Comment).count() >= 2, "keep-alives while the run is quiet");

    // Disconnected while more is written; resume from the last id seen.
    for i in 0..3 {
        db::append_events(&t.pool, lease, Some(6 + i), &line(&format!("missed {i}"))).await.expect("append");
    }
    db::complete_run(&t.pool, lease, Outcome::Cancelled, None, None).await.expect("complete");
    let resp = client.get(&url).bearer_auth(&viewer).header("Last-Event-ID", "8").send().await.expect("resume");
    let second = read_sse(resp, |_| false).await; // the stream ends after run.finished
    assert_eq!(ids(&second), (9..=12).collect::<Vec<_>>(), "no gap and no duplicate after reconnecting");
    assert_eq!(second.last(), Some(&Sse::Event { id: 12, kind: "run.finished".into() }));
}

#[tokio::test]
async fn signed_artifact_urls_download_exact_bytes_and_refuse_tampering_or_expiry() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let client = reqwest::Client::new();
    let small = b"small report\n".to_vec();
    let large: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect(); // over the inline limit
    for (name, bytes) in [("report.txt", &small), ("dump.bin", &large)] {
        let resp = client
            .put(api.url(&format!("/v1/runs/{run}/artifacts/{name}?lease={}&step=0", lease.token)))
            .bearer_auth(&worker_token)
            .body(bytes.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), StatusCode::CREATED, "{name}");
    }
    let stale = client
        .put(api.url(&format!("/v1/runs/{run}/artifacts/late.txt?lease={}", uuid::Uuid::new_v4())))
        .bearer_auth(&worker_token)
        .body("x")
        .send()
        .await
        .expect("upload");
    assert_eq!(stale.status(), StatusCode::CONFLICT, "a stale lease cannot upload");

    let list = api.get_json(&format!("/v1/runs/{run}/artifacts"), &viewer).await;
    let artifacts = list["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 2);
    for a in artifacts {
        let expected = if a["name"] == "report.txt" { &small } else { &large };
        let url = api.url(a["url"].as_str().expect("url"));
        let got = reqwest::get(&url).await.expect("download"); // no bearer token needed
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(&got.bytes().await.expect("bytes")[..], &expected[..], "{}", a["name"]);
        let tampered = url.replace("signature=", "signature=00");
        assert_eq!(reqwest::get(&tampered).await.expect("tampered").status(), StatusCode::FORBIDDEN);
        let other_expiry = url.replace("expires=", "expires=9");
        assert_eq!(reqwest::get(&other_expiry).await.expect("changed").status(), StatusCode::FORBIDDEN);
    }
    let id: uuid::Uuid = artifacts[0]["id"].as_str().expect("id").parse().expect("uuid");
    let past = chrono::Utc::now().timestamp() - 1;
    let expired = format!(
        "/v1/artifacts/{id}?expires={past}&signature={}",
        Signer::new(TEST_SIGNING_KEY.as_bytes()).sign(id, past)
    );
    let resp = reqwest::get(api.url(&expired)).await.expect("expired");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "a correctly signed but expired URL");
}

#[tokio::test]
async fn an_upload_with_a_stale_lease_or_a_taken_name_never_touches_the_holders_bytes() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let client = reqwest::Client::new();
    let upload = |name: &str, lease: uuid::Uuid, step: i32, bytes: Vec<u8>| {
        client
            .put(api.url(&format!("/v1/runs/{run}/artifacts/{name}?lease={lease}&step={step}")))
            .bearer_auth(&worker_token)
            .body(bytes)
            .send()
    };
    let holders: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect(); // stored in the object store
    let other = vec![7u8; 400_000];
    let resp = upload("dump.bin", lease.token, 0, holders.clone()).await.expect("upload");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = upload("dump.bin", uuid::Uuid::new_v4(), 0, other.clone()).await.expect("forged");
    assert_eq!(resp.status(), StatusCode::CONFLICT, "a forged lease");
    let resp = upload("dump.bin", lease.token, 1, other.clone()).await.expect("second");
    assert_eq!(resp.status(), StatusCode::CONFLICT, "the same name from another step");
    for bad in ["..%2F..%2Fx", "%2Fetc%2Fy", "a%2F..%2Fb"] {
        let resp = upload(bad, lease.token, 0, b"x".to_vec()).await.expect("bad name");
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    let list = api.get_json(&format!("/v1/runs/{run}/artifacts"), &viewer).await;
    let artifacts = list["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{list}");
    let got = reqwest::get(api.url(artifacts[0]["url"].as_str().expect("url"))).await.expect("download");
    assert_eq!(&got.bytes().await.expect("bytes")[..], &holders[..], "the holder's bytes, untouched");
    assert_eq!(api.stored_files().len(), 1, "nothing refused left bytes behind: {:?}", api.stored_files());
}

#[tokio::test]
async fn pruning_a_run_deletes_its_stored_artifact_bytes() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let resp = reqwest::Client::new()
        .put(api.url(&format!("/v1/runs/{run}/artifacts/dump.bin?lease={}", lease.token)))
        .bearer_auth(&worker_token)
        .body(vec![1u8; 300_000])
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::CREATED);
    db::complete_run(&t.pool, lease, Outcome::Cancelled, None, None).await.expect("complete");
    assert_eq!(api.stored_files().len(), 1);

    let later = PruneOptions { now: Some(chrono::Utc::now() + chrono::Duration::days(30)), ..Default::default() };
    assert_eq!(db::prune_at(&t.pool, &later).await.expect("prune").pruned, 1);
    assert_eq!(api.stored_files().len(), 1, "the bytes outlive the row until the store's holder deletes them");
    let deleted = api.artifact_store().delete_doomed(&t.pool, 100).await.expect("delete");
    assert_eq!(deleted, 1);
    assert!(api.stored_files().is_empty(), "{:?}", api.stored_files());
    assert_eq!(api.artifact_store().delete_doomed(&t.pool, 100).await.expect("again"), 0, "nothing left to do");
}
