//! The worker's health endpoints tell the truth: liveness fails when its heartbeats stop getting
//! through, readiness when the queue is unreachable; and a worker that cannot have its health port
//! stops before it registers.

use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, PATIENCE, WorkerProc, wait_until};
use runlane_tests::proxy::Proxy;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The status of GET `url`, or None when nothing answers.
async fn status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn wait_for(what: &str, url: &str, want: u16) {
    wait_until(&format!("{what}: {url} answering {want}"), PATIENCE, || async {
        (status(url).await == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_fail_while_the_worker_is_cut_off_and_recover_after() {
    health_under_a_cut_link(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_fail_while_an_http_worker_is_cut_off_from_the_api_and_recover_after() {
    health_under_a_cut_link(true).await;
}

async fn health_under_a_cut_link(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let proxy = Proxy::start(fleet.upstream()).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let _w = fleet.worker_via(Path::new(BIN), "watched", &[("RUNLANE__WORKER__LISTEN", listen.as_str())], proxy.addr);
    let (healthz, readyz) = (format!("http://{listen}/healthz"), format!("http://{listen}/readyz"));
    wait_for("up", &healthz, 200).await;
    wait_for("up", &readyz, 200).await;
    // Liveness tells of heartbeats that stop getting through: one has to have got through first
    // (until then the worker counts as just registered, and live).
    wait_until("a worker heartbeat to get through", PATIENCE, || async {
        let body: serde_json::Value = reqwest::get(&healthz).await.ok()?.json().await.ok()?;
        body["last_heartbeat_age_ms"].is_number().then_some(())
    })
    .await;

    proxy.set_blackholed(true);
    wait_for("cut off", &readyz, 503).await;
    wait_for("cut off past a lease", &healthz, 503).await;
    let body: serde_json::Value = reqwest::get(&healthz).await.expect("healthz").json().await.expect("json");
    assert_eq!(body["live"], false, "{body}");

    proxy.set_blackholed(false);
    wait_for("back", &healthz, 200).await;
    wait_for("back", &readyz, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_a_taken_health_port_stops_before_it_registers() {
    let t = TestDb::new().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [("RUNLANE__WORKER__LISTEN", listen.as_str())];
    let _first = WorkerProc::spawn(Path::new(BIN), &t.url, "first", &env);
    wait_for("the first worker", &format!("http://{listen}/readyz"), 200).await;
    let mut second = WorkerProc::spawn(Path::new(BIN), &t.url, "second", &env);
    let exit = second.wait_exit(PATIENCE);
    assert!(!exit.success(), "the second worker kept running");
    let log = second.log();
    assert!(log.contains(&listen) && log.contains("its own health port"), "{log}");
    let rows = t.count("SELECT count(*) FROM runlane.workers").await;
    assert_eq!(rows, 1, "the second worker left no row behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_is_live_but_not_ready() {
    let t = TestDb::new().await;
    let gate = tempfile_path("gate");
    let command = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    t.apply("gated", serde_json::json!({"steps": [{"name": "wait", "kind": "shell", "command": command}]})).await;
    let listen = format!("127.0.0.1:{}", free_port());
    // A grace long enough that the drain ends only when the step does.
    let env = [("RUNLANE__WORKER__LISTEN", listen.as_str()), ("RUNLANE__WORKER__SHUTDOWN_GRACE_MS", "600000")];
    let mut worker = WorkerProc::spawn(Path::new(BIN), &t.url, "draining", &env);
    let (healthz, readyz) = (format!("http://{listen}/healthz"), format!("http://{listen}/readyz"));
    wait_for("up", &readyz, 200).await;
    let run = t.enqueue("gated", runlane_core::model::Lane::A).await;
    wait_until("the gated step to run", PATIENCE, || async { (t.status(run).await == "running").then_some(()) }).await;

    // SIGTERM: the worker stops claiming and waits for its run; meanwhile it is not ready, still live.
    worker.signal("TERM");
    wait_for("draining", &readyz, 503).await;
    assert_eq!(status(&healthz).await, Some(200), "a draining worker is still live");
    let body: serde_json::Value = reqwest::get(&readyz).await.expect("readyz").json().await.expect("json");
    assert_eq!(body["ready"], false, "{body}");

    std::fs::write(&gate, b"").expect("open the gate");
    assert!(worker.wait_exit(PATIENCE).success(), "{}", worker.log());
    assert_eq!(t.status(run).await, "succeeded", "the run finished during the drain");
    let _ = std::fs::remove_file(&gate);
}

/// A path in the temporary directory that nothing else uses.
fn tempfile_path(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("runlane-health-{what}-{}", uuid::Uuid::new_v4().simple()))
}
