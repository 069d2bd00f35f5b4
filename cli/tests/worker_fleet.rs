//! Worker processes end to end: tail, drain on SIGTERM, cancel. Real processes, real signals,
//! a real PostgreSQL.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, PATIENCE, WorkerProc, processes_in_group, spawn_tail, wait_until};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

async fn event_with_body(t: &TestDb, run: RunId, needle: &str) -> Option<Event> {
    let events = db::read_events(&t.pool, run, 0, 10_000).await.expect("events");
    events.into_iter().find(|e| e.body.as_deref().is_some_and(|b| b.contains(needle)))
}

async fn run_status(t: &TestDb, run: RunId) -> RunRecord {
    db::get_run(&t.pool, run).await.expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_a_shell_runbook_and_tail_follows_it_live() {
    tail_follows_a_shell_runbook(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_http_workers_run_a_shell_runbook_and_tail_follows_it_live() {
    tail_follows_a_shell_runbook(true).await;
}

async fn tail_follows_a_shell_runbook(http: bool) {
    let t = TestDb::new().await;
    // The step holds after out-2 until the test has seen it through tail (a gate file), so "live"
    // is a state the test drives, not a race against a sleep.
    let gate = std::env::temp_dir().join(format!("runlane-tail-gate-{}", uuid::Uuid::new_v4().simple()));
    let command = format!(
        "echo out-1; sleep 0.2; echo err-1 >&2; sleep 0.2; echo out-2; while [ ! -e {} ]; do sleep 0.05; done; echo out-3",
        gate.display()
    );
    t.apply(
        "chatty",
        json!({"steps": [
            {"name": "one", "kind": "shell", "command": command},
            {"name": "two", "kind": "shell", "command": "echo err-2 >&2; exit 0"}
        ]}),
    )
    .await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let _w1 = fleet.worker(Path::new(BIN), "w1", &[]);
    let _w2 = fleet.worker(Path::new(BIN), "w2", &[]);
    let run = t.enqueue("chatty", Lane::A).await;

    let mut tail = spawn_tail(Path::new(BIN), &t.url, run);
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut output = Vec::new();
    let mut seen_live = false;
    let deadline = Instant::now() + PATIENCE;
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline.into(), lines.next_line()).await.expect("tail in time")
    {
        if line.ends_with("stdout | out-2") {
            // The tail shows out-2 while the step still waits at its gate.
            seen_live = run_status(&t, run).await.status == "running";
            std::fs::write(&gate, b"").expect("open the gate");
        }
        if let Some((_, labelled)) = line.split_once(' ')
            && labelled.contains(" | ")
        {
            output.push(labelled.to_string());
        }
    }
    let status = tail.wait().await.expect("tail exits");
    let _ = std::fs::remove_file(&gate);
    assert!(status.success(), "tail exits 0 on success");
    assert!(seen_live, "lines appeared while the run was still running");
    assert_eq!(output, ["stdout | out-1", "stderr | err-1", "stdout | out-2", "stdout | out-3", "stderr | err-2"]);

    let rec = run_status(&t, run).await;
    assert_eq!(rec.status, "succeeded");
    let steps: Vec<(i32, String, Option<i32>)> =
        sqlx::query_as("SELECT idx, status, exit_code FROM runlane.run_steps WHERE run_id = $1 ORDER BY idx")
            .bind(run)
            .fetch_all(&t.pool)
            .await
            .expect("steps");
    assert_eq!(steps, [(0, "succeeded".to_string(), Some(0)), (1, "succeeded".to_string(), Some(0))]);
    let workers = t.count("SELECT count(*) FROM runlane.workers WHERE state = 'active'").await;
    assert_eq!(workers, 2, "both workers registered and alive");
}

async fn start_sleeper(t: &TestDb, fleet: &Fleet, grace_ms: &str) -> (WorkerProc, RunId) {
    t.apply(
        "sleeper",
        json!({"steps": [{"name": "nap", "kind": "shell", "command": "echo started; sleep 5; echo finished"}]}),
    )
    .await;
    let w = fleet.worker(Path::new(BIN), "drainer", &[("RUNLANE__WORKER__SHUTDOWN_GRACE_MS", grace_ms)]);
    let run = t.enqueue("sleeper", Lane::B).await;
    wait_until("the step to start", PATIENCE, || event_with_body(t, run, "started")).await;
    (w, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_run_finish_within_the_grace() {
    sigterm_within_the_grace(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_http_workers_run_finish_within_the_grace() {
    sigterm_within_the_grace(true).await;
}

async fn sigterm_within_the_grace(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let (mut w, run) = start_sleeper(&t, &fleet, "10000").await;
    w.signal("TERM");
    let status = w.wait_exit(PATIENCE);
    assert!(status.success(), "worker exits 0 after draining\n{}", w.log());
    let rec = run_status(&t, run).await;
    assert_eq!((rec.status.as_str(), rec.attempt), ("succeeded", 1), "{}", w.log());
    assert!(event_with_body(&t, run, "finished").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_hands_the_run_back_without_using_an_attempt() {
    sigterm_past_the_grace(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_hands_an_http_workers_run_back_without_using_an_attempt() {
    sigterm_past_the_grace(true).await;
}

async fn sigterm_past_the_grace(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let (mut w, run) = start_sleeper(&t, &fleet, "1000").await;
    w.signal("TERM");
    let status = w.wait_exit(PATIENCE);
    assert!(status.success(), "{}", w.log());
    let rec = run_status(&t, run).await;
    assert_eq!((rec.status.as_str(), rec.failed_attempts, rec.crash_count), ("queued", 0, 0), "{}", w.log());
    let events = db::read_events(&t.pool, run, 0, 1000).await.expect("events");
    let requeued = events.iter().find(|e| e.kind == "run.requeued").expect("requeue recorded");
    assert_eq!(requeued.data.as_ref().expect("data")["reason"], "interrupted");

    let _other = fleet.worker(Path::new(BIN), "other", &[]);
    let done = wait_until("the other worker to finish it", PATIENCE, || async {
        let rec = run_status(&t, run).await;
        (rec.status == "succeeded").then_some(rec)
    })
    .await;
    assert_eq!((done.attempt, done.failed_attempts), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_step_that_ignores_sigterm_and_runs_the_always_step() {
    cancel_kills_a_stubborn_step(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_an_http_worker_and_kills_its_stubborn_step() {
    cancel_kills_a_stubborn_step(true).await;
}

async fn cancel_kills_a_stubborn_step(http: bool) {
    let t = TestDb::new().await;
    t.apply(
        "stubborn",
        json!({"steps": [
            {"name": "hold", "kind": "shell", "cancel_grace_ms": 1000,
             "command": "echo pgid $$; trap '' TERM; sleep 300 & sleep 300; wait"},
            {"name": "never", "kind": "shell", "command": "echo should-not-run"},
            {"name": "cleanup", "kind": "shell", "always": true, "command": "echo cleaned up"}
        ]}),
    )
    .await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let _w = fleet.worker(Path::new(BIN), "canceller", &[]);
    let run = t.enqueue("stubborn", Lane::C).await;
    let pgid_line = wait_until("the step to start", PATIENCE, || event_with_body(&t, run, "pgid ")).await;
    let pgid: u32 = pgid_line.body.expect("body").trim_start_matches("pgid ").trim().parse().expect("pgid");
    assert!(processes_in_group(pgid) >= 2, "the step and its child run");

    // The step ignores SIGTERM and would sleep 300 s: its group goes only because the cancel
    // reached the worker and the grace ended in SIGKILL. (How fast is `runlane bench`'s cancel_p95_ms.)
    assert_eq!(db::cancel_run(&t.pool, run, Some("test")).await.expect("cancel"), "cancel_requested");
    wait_until("the process group to be gone", PATIENCE, || async { (processes_in_group(pgid) == 0).then_some(()) })
        .await;
    let rec = wait_until("the run to be cancelled", PATIENCE, || async {
        let rec = run_status(&t, run).await;
        (rec.status != "running").then_some(rec)
    })
    .await;
    assert_eq!(rec.status, "cancelled");
    assert!(event_with_body(&t, run, "cleaned up").await.is_some(), "the always step ran");
    assert!(event_with_body(&t, run, "should-not-run").await.is_none(), "a normal step after cancel did not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_artifact_from_a_worker_behind_the_api_downloads_whole() {
    let t = TestDb::new().await;
    t.apply(
        "big-artifact",
        json!({"steps": [{"name": "s", "kind": "shell",
            "command": "head -c 1048576 /dev/urandom > \"$RUNLANE_ARTIFACTS/big.bin\"; sha256sum \"$RUNLANE_ARTIFACTS/big.bin\""}]}),
    )
    .await;
    let fleet = Fleet::of(Path::new(BIN), &t, true).await;
    let _w = fleet.worker(Path::new(BIN), "remote", &[]);
    let run = t.enqueue("big-artifact", Lane::B).await;
    let rec = wait_until("the run to finish", PATIENCE, || async {
        let rec = run_status(&t, run).await;
        (rec.status != "queued" && rec.status != "running").then_some(rec)
    })
    .await;
    assert_eq!(rec.status, "succeeded", "{rec:?}");
    let printed = event_with_body(&t, run, "big.bin").await.expect("the step printed its sha256");
    let sha = printed.body.expect("body").split_whitespace().next().expect("sha").to_string();

    let Fleet::Http { base, .. } = &fleet else { unreachable!("an HTTP fleet") };
    let (_, viewer) = runlane_tests::api::token(&t.pool, "viewer", None).await;
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(format!("{base}/v1/runs/{run}/artifacts"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let artifact = &list["artifacts"][0];
    assert_eq!((artifact["name"].as_str(), artifact["size_bytes"].as_i64()), (Some("big.bin"), Some(1 << 20)));
    assert_eq!(artifact["sha256"].as_str(), Some(sha.as_str()), "recorded as the step computed it");
    let url = format!("{base}{}", artifact["url"].as_str().expect("url"));
    let bytes = client.get(url).send().await.expect("download").bytes().await.expect("bytes");
    use sha2::Digest;
    assert_eq!(runlane_core::artifacts::hex(&sha2::Sha256::digest(&bytes)), sha, "the bytes downloaded match");
}
