//! Large artifacts in an S3-compatible store (moto's S3 server on loopback, from PyPI): uploaded
//! through the API by a worker, listed with a URL the store presigned, downloaded byte for byte.
//! CI installs moto; elsewhere the test says how and passes over.

use reqwest::StatusCode;
use runlane_core::db;
use runlane_core::model::Lane;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_tests::process::wait_until;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn large_artifacts_go_to_s3_and_download_by_presigned_url() {
    if Command::new("moto_server").arg("--help").stdout(Stdio::null()).status().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must run the S3 test: pip install 'moto[server]'");
        eprintln!("moto_server is not installed (pip install 'moto[server]'): not run");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server"),
    );
    let client = reqwest::Client::new();
    wait_until("the S3 server", Duration::from_secs(30), || async {
        client
            .put(format!("{endpoint}/runlane-artifacts"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;

    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |s| {
        s.artifacts.s3_url = Some("s3://runlane-artifacts/fleet-1".into());
        s.artifacts.s3_endpoint = Some(endpoint.clone());
        s.artifacts.s3_region = Some("us-east-1".into());
        s.artifacts.s3_access_key_id = Some("test".into());
        s.artifacts.s3_secret_access_key = Some("test".to_string().into());
    })
    .await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let (_, viewer) = token(&t.pool, "viewer", None).await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let large: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let resp = client
        .put(api.url(&format!("/v1/runs/{run}/artifacts/backup.bin?lease={}", lease.token)))
        .bearer_auth(&worker_token)
        .body(large.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let key: String = sqlx::query_scalar("SELECT store_key FROM runlane.artifacts WHERE run_id = $1")
        .bind(run)
        .fetch_one(&t.pool)
        .await
        .expect("store key");
    assert!(key.starts_with("fleet-1/runs/"), "{key}");

    let list = api.get_json(&format!("/v1/runs/{run}/artifacts"), &viewer).await;
    let url = list["artifacts"][0]["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&format!("{endpoint}/runlane-artifacts/fleet-1/runs/")), "{url}");
    assert!(url.contains("X-Amz-Signature="), "presigned by the store: {url}");
    let got = reqwest::get(&url).await.expect("download");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(&got.bytes().await.expect("bytes")[..], &large[..]);
}
