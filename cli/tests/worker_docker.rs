//! Docker steps through a real worker process against the real Docker engine (the test image is
//! imported from a static busybox; no registry is involved).

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::docker::{TEST_IMAGE, bridge_gateway, containers_of, docker_with_image};
use runlane_tests::process::{PATIENCE, WorkerProc, spawn_tail, wait_until};
use runlane_tests::proxy::{Proxy, UnixProxy};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_runlane");
const DOCKER_ENV: [(&str, &str); 2] =
    [("RUNLANE__DOCKER__REAP_INTERVAL_MS", "500"), ("RUNLANE__DOCKER__ALLOWED_NETWORKS", "bridge")];

fn step(command: &str, extra: Value) -> Value {
    let mut s = json!({"name": "c", "kind": "docker", "image": TEST_IMAGE, "pull_policy": "never",
                       "command": ["sh", "-c", command]});
    if let (Some(obj), Some(more)) = (s.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    s
}

async fn apply_docker(t: &TestDb, name: &str, command: &str, extra: Value) {
    t.apply(name, json!({"steps": [step(command, extra)]})).await;
}

async fn finished(t: &TestDb, run: RunId) -> RunRecord {
    wait_until("the run to finish", PATIENCE, || async {
        let rec = db::get_run(&t.pool, run).await.expect("run");
        RunStatus::is_final(rec.status.parse().expect("status")).then_some(rec)
    })
    .await
}

async fn lines(t: &TestDb, run: RunId) -> Vec<(String, String)> {
    let events = db::read_events(&t.pool, run, 0, 10_000).await.expect("events");
    events.into_iter().filter_map(|e| Some((e.stream?, e.body?))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_streams_both_outputs_live_and_fails_with_its_exit_code() {
    let docker = docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(
        &t,
        "chatty",
        "for i in $(seq 1 15); do echo out-$i; echo err-$i >&2; sleep 0.1; done; exit 3",
        json!({}),
    )
    .await;
    let _w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-chatty", &DOCKER_ENV);
    let run = t.enqueue("chatty", Lane::D).await;
    let mut tail = spawn_tail(Path::new(BIN), &t.url, run);
    let mut out = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut live = false;
    while let Some(line) = out.next_line().await.expect("tail output") {
        if line.ends_with("stdout | out-3") {
            let running = containers_of(&docker, run).await;
            live = running.iter().any(|c| c.state.as_ref().is_some_and(|s| s.to_string() == "running"));
        }
    }
    assert_eq!(tail.wait().await.expect("tail").code(), Some(1), "tail exits 1 for a failed run");
    assert!(live, "lines reached the tail while the container was still running");
    let got = lines(&t, run).await;
    let outs: Vec<_> = got.iter().filter(|(s, _)| s == "stdout").map(|(_, b)| b.clone()).collect();
    let errs: Vec<_> = got.iter().filter(|(s, _)| s == "stderr").map(|(_, b)| b.clone()).collect();
    assert_eq!(outs, (1..=15).map(|i| format!("out-{i}")).collect::<Vec<_>>());
    assert_eq!(errs, (1..=15).map(|i| format!("err-{i}")).collect::<Vec<_>>());
    let rec = finished(&t, run).await;
    assert_eq!(rec.status, "failed");
    assert!(rec.error.unwrap_or_default().contains("exit code 3"));
    let exit: Option<i32> = sqlx::query_scalar("SELECT exit_code FROM runlane.run_steps WHERE run_id = $1")
        .bind(run)
        .fetch_one(&t.pool)
        .await
        .expect("step");
    assert_eq!(exit, Some(3));
    assert!(containers_of(&docker, run).await.is_empty(), "the container was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pids_and_network_limits_hold() {
    docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(&t, "hog", "x=$(yes | head -c 50000000); echo ${#x}", json!({"memory_mb": 16})).await;
    apply_docker(
        &t,
        "forker",
        "for i in $(seq 1 30); do sleep 3 & done; wait; echo all-started",
        json!({"pids_limit": 8}),
    )
    .await;
    let probe = "nc -w 2 $RUNLANE_PARAM_HOST $RUNLANE_PARAM_PORT </dev/null && echo reached || echo unreachable";
    t.apply("probe-none", json!({"steps": [step(probe, json!({}))]})).await;
    t.apply("probe-bridge", json!({"steps": [step(probe, json!({"network": "bridge"}))]})).await;
    // The host's PostgreSQL, published on every interface so a container on the bridge could reach it.
    let pg = format!("127.0.0.1:{}", t.cluster().port()).parse().expect("addr");
    let published = Proxy::start_on("0.0.0.0:0", pg).await;
    let target = json!({"host": bridge_gateway(), "port": published.addr.port().to_string()});
    let _w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-limits", &DOCKER_ENV);

    let hog = t.enqueue("hog", Lane::D).await;
    let forker = t.enqueue("forker", Lane::D).await;
    let enqueue = |template: &str| {
        let req = EnqueueRequest {
            template: template.into(),
            params: target.clone(),
            lane: Some(Lane::D),
            ..Default::default()
        };
        let pool = t.pool.clone();
        async move { db::enqueue_run(&pool, &req).await.expect("enqueue") }
    };
    let isolated = enqueue("probe-none").await;
    let bridged = enqueue("probe-bridge").await;

    let rec = finished(&t, hog).await;
    assert_eq!(rec.status, "failed");
    assert!(rec.error.as_deref().unwrap_or_default().contains("OOM-killed"), "{:?}", rec.error);
    let rec = finished(&t, forker).await;
    assert_eq!(rec.status, "failed");
    let out = lines(&t, forker).await;
    assert!(out.iter().any(|(_, b)| b.contains("can't fork")), "{out:?}");
    assert!(!out.iter().any(|(_, b)| b == "all-started"), "{out:?}");
    finished(&t, isolated).await;
    finished(&t, bridged).await;
    assert!(
        lines(&t, bridged).await.iter().any(|(_, b)| b == "reached"),
        "control: the port is reachable over the bridge"
    );
    assert!(lines(&t, isolated).await.iter().any(|(_, b)| b == "unreachable"), "no network by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_leave_no_container_behind() {
    let docker = docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(&t, "long", "echo started; sleep 300", json!({"cancel_grace_ms": 1000})).await;
    apply_docker(&t, "slowpoke", "echo started; sleep 300", json!({"timeout_ms": 1500, "cancel_grace_ms": 1000})).await;
    let _w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-stopper", &DOCKER_ENV);
    let cancelled = t.enqueue("long", Lane::D).await;
    let timed_out = t.enqueue("slowpoke", Lane::D).await;
    wait_until("the container to start", PATIENCE, || async {
        lines(&t, cancelled).await.iter().any(|(_, b)| b == "started").then_some(())
    })
    .await;
    assert_eq!(containers_of(&docker, cancelled).await.len(), 1);
    db::cancel_run(&t.pool, cancelled, Some("test")).await.expect("cancel");
    assert_eq!(finished(&t, cancelled).await.status, "cancelled");
    let rec = finished(&t, timed_out).await;
    assert_eq!(rec.status, "failed");
    assert!(rec.error.unwrap_or_default().contains("timed out"));
    assert!(containers_of(&docker, cancelled).await.is_empty(), "no container after cancel");
    assert!(containers_of(&docker, timed_out).await.is_empty(), "no container after timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_docker_step_the_orphan_is_reaped_and_the_run_completes() {
    let docker = docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(
        &t,
        "resumable",
        "if [ \"$RUNLANE_ATTEMPT\" = 1 ]; then echo first; sleep 120; fi; echo done-$RUNLANE_ATTEMPT",
        json!({}),
    )
    .await;
    let mut doomed = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-doomed", &DOCKER_ENV);
    let run = t.enqueue("resumable", Lane::D).await;
    wait_until("attempt 1's container to run", PATIENCE, || async {
        lines(&t, run).await.iter().any(|(_, b)| b == "first").then_some(())
    })
    .await;
    doomed.signal("KILL");
    doomed.wait_exit(PATIENCE);
    assert_eq!(containers_of(&docker, run).await.len(), 1, "the orphan outlived its worker");

    let _next = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-next", &DOCKER_ENV);
    let rec = finished(&t, run).await;
    assert_eq!((rec.status.as_str(), rec.attempt, rec.crash_count), ("succeeded", 2, 1));
    assert!(lines(&t, run).await.iter().any(|(_, b)| b == "done-2"));
    wait_until("the orphan to be removed", PATIENCE, || async {
        containers_of(&docker, run).await.is_empty().then_some(())
    })
    .await;
}

/// name, sha256, size, inline bytes, object store key
type ArtifactRow = (String, String, i64, Option<Vec<u8>>, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_copied_out_of_the_container_match_their_sha256() {
    docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(
        &t,
        "reporter",
        "mkdir -p /work/out/sub; echo hello > /work/out/a.txt; yes | head -c 300000 > /work/out/sub/big.bin",
        json!({"artifacts": ["/work/out"]}),
    )
    .await;
    let w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-artifacts", &DOCKER_ENV);
    let run = t.enqueue("reporter", Lane::D).await;
    assert_eq!(finished(&t, run).await.status, "succeeded");
    let rows: Vec<ArtifactRow> = sqlx::query_as(
        "SELECT name, sha256, size_bytes, inline_data, store_key FROM runlane.artifacts WHERE run_id = $1 ORDER BY name",
    )
    .bind(run)
    .fetch_all(&t.pool)
    .await
    .expect("artifacts");
    let names: Vec<_> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["out/a.txt", "out/sub/big.bin"]);
    let small = &rows[0];
    assert_eq!(small.3.as_deref(), Some(&b"hello\n"[..]), "small artifacts are inline");
    assert_eq!(small.1, format!("{:x}", Sha256::digest(b"hello\n")));
    let big = &rows[1];
    let expected: Vec<u8> = b"y\n".repeat(150_000);
    assert_eq!(big.2, 300_000);
    assert_eq!(big.1, format!("{:x}", Sha256::digest(&expected)));
    let key = big.4.as_deref().expect("large artifacts go to the object store");
    let stored = std::fs::read(w.dir().join("artifacts").join(key)).expect("stored object");
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_steps_name_their_cause_and_the_worker_keeps_working() {
    let docker = docker_with_image().await;
    let t = TestDb::new().await;
    t.apply(
        "missing",
        json!({"steps": [{"name": "c", "kind": "docker", "image": "runlane-nonexistent:1", "pull_policy": "never"}]}),
    )
    .await;
    apply_docker(&t, "snoop", "cat /host-etc/passwd", json!({"mounts": [{"source": "/etc", "target": "/host-etc"}]}))
        .await;
    t.apply("shell", json!({"steps": [{"name": "s", "kind": "shell", "command": "echo still-working"}]})).await;
    let engine = UnixProxy::start("/var/run/docker.sock").await;
    let socket = format!("unix://{}", engine.path.display());
    let mut env = DOCKER_ENV.to_vec();
    env.extend([
        ("RUNLANE__DOCKER__SOCKET", socket.as_str()),
        ("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", "3000"),
        ("RUNLANE__WORKER__LEASE_MS", "10000"),
    ]);
    let w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-refusals", &env);

    let missing = t.enqueue("missing", Lane::D).await;
    let rec = finished(&t, missing).await;
    assert_eq!(rec.status, "failed");
    assert!(
        rec.error.unwrap_or_default().contains("image 'runlane-nonexistent:1' is not present and pull_policy is never")
    );
    let snoop = t.enqueue("snoop", Lane::D).await;
    let rec = finished(&t, snoop).await;
    assert!(rec.error.unwrap_or_default().contains("mount source '/etc' is outside docker.allowed_mounts"));
    assert!(containers_of(&docker, snoop).await.is_empty(), "refused before any container was created");

    // The engine goes away: the worker stops offering docker, says so, and keeps running shell steps.
    engine.cut();
    wait_until("the worker to drop its docker capability", PATIENCE, || async {
        let caps: Vec<String> =
            sqlx::query_scalar("SELECT unnest(capabilities) FROM runlane.workers WHERE host = 'docker-refusals'")
                .fetch_all(&t.pool)
                .await
                .ok()?;
        caps.is_empty().then_some(())
    })
    .await;
    let health =
        w.log().split("health=").nth(1).and_then(|r| r.split_whitespace().next()).expect("health address").to_string();
    let ready: Value =
        reqwest::get(format!("http://{health}/readyz")).await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["docker"], false, "{ready}");
    let metrics = reqwest::get(format!("http://{health}/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("runlane_docker_available 0"));
    let waiting = t.enqueue("missing", Lane::D).await;
    let shell = t.enqueue("shell", Lane::D).await;
    assert_eq!(finished(&t, shell).await.status, "succeeded", "shell runs still work");
    assert_eq!(
        db::get_run(&t.pool, waiting).await.expect("run").status,
        "queued",
        "a docker run waits for a worker with an engine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_param_too_large_for_the_environment_reaches_the_container_as_a_file() {
    docker_with_image().await;
    let t = TestDb::new().await;
    apply_docker(
        &t,
        "big-param",
        r#"wc -c < "$RUNLANE_PARAM_BIG_FILE"; echo "small=$RUNLANE_PARAM_SMALL big=${RUNLANE_PARAM_BIG:-absent}""#,
        json!({}),
    )
    .await;
    let _w = WorkerProc::spawn(Path::new(BIN), &t.url, "docker-params", &DOCKER_ENV);
    let req = EnqueueRequest {
        template: "big-param".into(),
        params: json!({"big": "q".repeat(200 * 1024), "small": "s"}),
        lane: Some(Lane::D),
        ..Default::default()
    };
    let run = db::enqueue_run(&t.pool, &req).await.expect("enqueue");
    let rec = finished(&t, run).await;
    assert_eq!(rec.status, "succeeded", "{rec:?}");
    let out: Vec<String> = lines(&t, run).await.into_iter().filter(|(s, _)| s == "stdout").map(|(_, b)| b).collect();
    assert_eq!(out, vec!["204800".to_string(), "small=s big=absent".to_string()]);
}
