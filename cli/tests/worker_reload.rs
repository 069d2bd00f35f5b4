//! SIGHUP reloads a worker's lanes and slots from its config file, without a restart.

use runlane_core::model::Lane;
use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, PATIENCE, wait_until};
use serde_json::json;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_lanes_from_the_config_file() {
    sighup_reloads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_an_http_workers_lanes_from_the_config_file() {
    sighup_reloads(true).await;
}

async fn sighup_reloads(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    t.apply("quick", json!({"steps": [{"name": "s", "kind": "shell", "command": "echo ok"}]})).await;
    let config = std::env::temp_dir().join(format!("runlane-reload-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&config, "[worker]\nlanes = [\"A\"]\nslots = 2\n").expect("config");
    let config_env = config.to_string_lossy().to_string();
    // Both wait before the worker starts: its first claim (2 slots) would take both if it served C.
    let in_a = t.enqueue("quick", Lane::A).await;
    let in_c = t.enqueue("quick", Lane::C).await;
    let w = fleet.worker(Path::new(BIN), "reloader", &[("RUNLANE_CONFIG", config_env.as_str())]);
    wait_until("the lane A run", PATIENCE, || async { (t.status(in_a).await == "succeeded").then_some(()) }).await;
    assert_eq!(t.status(in_c).await, "queued", "lane C is not served yet");

    std::fs::write(&config, "[worker]\nlanes = [\"C\", \"A\"]\nslots = 3\n").expect("config");
    w.signal("HUP");
    wait_until("the lane C run after the reload", PATIENCE, || async {
        (t.status(in_c).await == "succeeded").then_some(())
    })
    .await;
    let (lanes, slots): (Vec<String>, i32) =
        sqlx::query_as("SELECT lanes, slots FROM runlane.workers WHERE host = 'reloader'")
            .fetch_one(&t.pool)
            .await
            .expect("worker");
    assert_eq!((lanes, slots), (vec!["C".to_string(), "A".to_string()], 3), "the new lanes and slots are recorded");
    std::fs::write(&config, "[worker]\nlanez = [\"B\"]\n").expect("config");
    w.signal("HUP");
    wait_until("the refusal in the log", PATIENCE, || async { w.log().contains("reload refused").then_some(()) }).await;
    let _ = std::fs::remove_file(&config);
}
