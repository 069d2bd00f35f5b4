//! Large artifacts in an S3-compatible store (moto's S3 server on loopback, from PyPI): uploaded
//! through the API by a worker, listed with a URL the store presigned, downloaded byte for byte; and
//! deleted from the bucket once their run is pruned.
//! CI installs moto; elsewhere the test says how and passes over.

use reqwest::StatusCode;
use runlane_core::artifacts::ArtifactStore;
use runlane_core::db;
use runlane_core::model::{Lane, PruneOptions, RunId};
use runlane_core::settings::ArtifactSettings;
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_tests::process::wait_until;
use runlane_tests::retention::{End, apply_kept, finished_run};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on a free loopback port with the bucket `runlane-artifacts` made, and its
/// endpoint; None (the test passes over, saying why) where moto is not installed, outside CI.
async fn s3_server() -> Option<(Moto, String)> {
    if Command::new("moto_server").arg("--help").stdout(Stdio::null()).status().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must run the S3 test: pip install 'moto[server]'");
        eprintln!("moto_server is not installed (pip install 'moto[server]'): not run");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto(
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
    Some((moto, endpoint))
}

/// Artifact settings for the bucket of `s3_server`, under the prefix `fleet-1`.
fn use_s3(s: &mut ArtifactSettings, endpoint: &str) {
    s.s3_url = Some("s3://runlane-artifacts/fleet-1".into());
    s.s3_endpoint = Some(endpoint.to_string());
    s.s3_region = Some("us-east-1".into());
    s.s3_access_key_id = Some("test".into());
    s.s3_secret_access_key = Some("test".to_string().into());
}

#[tokio::test]
async fn large_artifacts_go_to_s3_and_download_by_presigned_url() {
    let Some((_moto, endpoint)) = s3_server().await else { return };
    let client = reqwest::Client::new();

    let t = TestDb::new().await;
    t.apply_noop().await;
    let api = TestApi::start(t.pool.clone(), |s| use_s3(&mut s.artifacts, &endpoint)).await;
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

#[tokio::test]
async fn pruning_deletes_the_objects_of_pruned_artifacts_from_s3() {
    let Some((_moto, endpoint)) = s3_server().await else { return };
    let t = TestDb::new().await;
    apply_kept(&t, "hourly", Some(3_600)).await;
    apply_kept(&t, "plain", None).await;
    let mut settings = ArtifactSettings::default();
    use_s3(&mut settings, &endpoint);
    let store = ArtifactStore::from_settings(&settings).expect("S3 store");
    let worker = t.register(&[Lane::A], 60_000).await;
    let arts: &[(&str, usize)] = &[("backup.bin", 600_000), ("note.txt", 10)];
    let expired = finished_run(&t, worker, "hourly", &store, arts, End::Succeeded, chrono::Duration::hours(2)).await;
    let kept = finished_run(&t, worker, "plain", &store, arts, End::Failed, chrono::Duration::days(1)).await;
    let key_of = |run: RunId| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT store_key FROM runlane.artifacts WHERE run_id = $1 AND store_key IS NOT NULL",
            )
            .bind(run)
            .fetch_one(&pool)
            .await
            .expect("one stored artifact")
        }
    };
    let (expired_key, kept_key) = (key_of(expired).await, key_of(kept).await);
    // Asked over HTTP by a URL the store signs, as a reader would: 200 while the object is there.
    let client = reqwest::Client::new();
    let object = |key: String| {
        let (client, store) = (client.clone(), store.clone());
        async move {
            let url = store.presigned_get(&key, Duration::from_secs(60)).await.expect("S3 signs").expect("a URL");
            client.get(url).send().await.expect("S3 GET").status()
        }
    };
    assert_eq!((object(expired_key.clone()).await, object(kept_key.clone()).await), (StatusCode::OK, StatusCode::OK));

    let report = db::prune_at(&t.pool, &PruneOptions::default()).await.expect("prune");
    assert_eq!((report.pruned, report.artifacts_pruned, report.stored_objects), (1, 2, 1), "{report:?}");
    assert_eq!(
        object(expired_key.clone()).await,
        StatusCode::OK,
        "the bytes outlive the row until the store's holder acts"
    );
    assert_eq!(store.delete_doomed(&t.pool, 100).await.expect("delete"), 1);
    assert_eq!(
        object(expired_key.clone()).await,
        StatusCode::NOT_FOUND,
        "the pruned artifact's object is gone from S3"
    );
    assert_eq!(object(kept_key.clone()).await, StatusCode::OK, "the kept run's object stays");
    assert_eq!(store.delete_doomed(&t.pool, 100).await.expect("again"), 0, "nothing left to delete");
}
