//! The shell and http executors driven directly: real processes and signals, a real local HTTP
//! server, and their output written through the event writer into a real PostgreSQL, where every
//! assertion on output reads it back.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Router, body::Bytes, extract::State, routing::get, routing::post};
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::steps::{HttpStep, ShellStep, StepAction, parse_steps};
use runlane_tests::TestDb;
use runlane_tests::process::{PATIENCE, wait_until};
use runlane_worker::executors::{
    ArtifactData, Executor, StepContext, StepOutcome, http::HttpExecutor, shell::ShellExecutor,
};
use runlane_worker::run_writer::WriterOptions;
use runlane_worker::step_files;
use runlane_worker::{output::Masker, output::RunOutput, process_group::processes_in_group};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, atomic::AtomicUsize, atomic::Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(5);

/// A directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One claimed run with a one-step template, and the context its step runs with.
struct Harness {
    pool: sqlx::PgPool,
    run: RunId,
    ctx: StepContext,
    _dir: TempDir,
}

/// Applies a one-step template, enqueues and claims its run, starts the event writer and builds
/// the step's context (own work and artifact directories; output masked for `secrets`; `limits`:
/// the step's timeout and grace).
async fn harness(t: &TestDb, step: &Value, params: Value, secrets: &[&str], limits: (Duration, Duration)) -> Harness {
    let template = format!("t-{}", Uuid::new_v4().simple());
    t.apply(&template, json!({ "steps": [step] })).await;
    let req = EnqueueRequest { template, params: params.clone(), lane: Some(Lane::A), ..Default::default() };
    let run = db::enqueue_run(&t.pool, &req).await.expect("enqueue");
    let worker = t.register(&[Lane::A], 60_000).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim");
    let claimed = claimed.into_iter().find(|c| c.run_id == run).expect("our run is claimed");
    db::start_step(&t.pool, claimed.lease(), 0).await.expect("start step");
    let opts = WriterOptions { flush_interval: Duration::from_millis(20), batch_max: 256 };
    let dir = TempDir(std::env::temp_dir().join(format!("runlane-exec-{}", Uuid::new_v4().simple())));
    let writer = t.run_writer(claimed.lease(), opts, CancellationToken::new());
    let masker = Masker::new(secrets.iter().map(|s| s.to_string()));
    let output = RunOutput::new(writer, masker, 1 << 20, Duration::from_millis(50));
    let work_dir = dir.0.join("work");
    let dirs = step_files::prepare_step_dirs(&work_dir, 0).await.expect("step dirs");
    let mut env = vec![("RUNLANE_RUN_ID".to_string(), run.to_string())];
    let (param_env, param_files) = step_files::param_env(&params, &dirs.private).await.expect("params");
    env.extend(param_env);
    let ctx = StepContext {
        run_id: run,
        attempt: claimed.attempt,
        worker_id: worker,
        step: 0,
        step_name: "s".into(),
        params,
        work_dir,
        artifacts_dir: dirs.artifacts,
        private_dir: dirs.private,
        env,
        param_files,
        output: output.for_step(0),
        cancel: CancellationToken::new(),
        timeout: limits.0,
        grace: limits.1,
        lease_lost: CancellationToken::new(),
        lease_loss_grace: Duration::from_millis(500),
    };
    Harness { pool: t.pool.clone(), run, ctx, _dir: dir }
}

impl Harness {
    /// Runs the step to its end, writes out its output, and reads back what PostgreSQL stored.
    async fn run<E: Executor>(&self, ex: &E, spec: &E::Spec) -> (StepOutcome, Vec<Event>) {
        let outcome = ex.run(spec, &self.ctx).await;
        self.ctx.output.finish().await.expect("output written");
        (outcome, self.events().await)
    }

    async fn events(&self) -> Vec<Event> {
        db::read_events(&self.pool, self.run, 0, 10_000).await.expect("read events")
    }
}

/// The step's action, parsed the way the run task parses a run's frozen steps.
fn action(step: &Value) -> StepAction {
    parse_steps(&json!([step])).expect("step parses").remove(0).action
}

fn shell_spec(step: &Value) -> ShellStep {
    let StepAction::Shell(s) = action(step) else { panic!("not a shell step") };
    s
}

fn http_spec(step: &Value) -> HttpStep {
    let StepAction::Http(h) = action(step) else { panic!("not an http step") };
    h
}

/// Runs one shell step with these params and limits.
async fn shell(t: &TestDb, step: Value, params: Value, timeout: Duration) -> (StepOutcome, Vec<Event>) {
    let h = harness(t, &step, params, &[], (timeout, GRACE)).await;
    h.run(&ShellExecutor, &shell_spec(&step)).await
}

fn sh(command: &str) -> Value {
    json!({"name": "s", "kind": "shell", "command": command})
}

/// The stored output lines of one stream, in order.
fn lines(events: &[Event], stream: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "step.output" && e.stream.as_deref() == Some(stream))
        .filter_map(|e| e.body.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_output_is_stored_per_stream_and_the_exit_decides() {
    let t = TestDb::new().await;
    let (ok, events) = shell(&t, sh("echo out1; echo err1 >&2; printf partial"), json!({}), LONG).await;
    assert_eq!((ok.status, ok.exit_code, ok.error.as_deref()), (StepStatus::Succeeded, Some(0), None));
    assert_eq!(lines(&events, "stdout"), ["out1", "partial"]);
    assert_eq!(lines(&events, "stderr"), ["err1"]);

    let (three, _) = shell(&t, sh("exit 3"), json!({}), LONG).await;
    assert_eq!((three.status, three.exit_code), (StepStatus::Failed, Some(3)));
    assert_eq!(three.error.as_deref(), Some("exit code 3"));

    let (killed, _) = shell(&t, sh("kill -9 $$"), json!({}), LONG).await;
    assert_eq!((killed.status, killed.exit_code), (StepStatus::Failed, None));
    assert_eq!(killed.error.as_deref(), Some("killed by signal 9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_param_cannot_inject_shell_syntax_and_arrives_as_env() {
    let t = TestDb::new().await;
    let marker = std::path::PathBuf::from(format!("/tmp/runlane-pwned-{}", Uuid::new_v4().simple()));
    let evil = format!("\"; touch {}; echo \"", marker.display());
    let step = sh(r#"echo ${{ params.x }}; printf '%s\n' "$RUNLANE_PARAM_X""#);
    let (outcome, events) = shell(&t, step, json!({ "x": evil }), LONG).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{outcome:?}");
    assert!(!marker.exists(), "the injected command ran");
    assert_eq!(lines(&events, "stdout"), [evil.clone(), evil], "printed literally, once as a word, once from env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_environment_never_reaches_the_step() {
    let t = TestDb::new().await;
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO_")), "the test process has CARGO_* to leak");
    let step = json!({"name": "s", "kind": "shell", "command": "env; pwd",
                      "env": {"GREETING": "hi ${{ params.who }}"}, "working_dir": "sub/dir"});
    let h = harness(&t, &step, json!({"who": "o'neil"}), &[], (LONG, GRACE)).await;
    let (outcome, events) = h.run(&ShellExecutor, &shell_spec(&step)).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{outcome:?}");
    let out = lines(&events, "stdout");
    // Names only in messages: the values of a leaked environment do not belong in a test log.
    let names: Vec<&str> = out.iter().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    let known = ["PATH", "HOME", "LANG", "PWD", "OLDPWD", "SHLVL", "_", "GREETING"];
    let leaked: Vec<&&str> = names.iter().filter(|n| !known.contains(n) && !n.starts_with("RUNLANE_")).collect();
    assert!(leaked.is_empty(), "variables of the worker reached the step: {leaked:?}");
    let has = |line: String| assert!(out.contains(&line), "missing {line:?} in the step's environment");
    has(format!("HOME={}", h.ctx.work_dir.display()));
    has(format!("RUNLANE_ARTIFACTS={}", h.ctx.artifacts_dir.display()));
    has(format!("RUNLANE_RUN_ID={}", h.run));
    has("RUNLANE_PARAM_WHO=o'neil".into());
    has("GREETING=hi o'neil".into());
    has("LANG=C.UTF-8".into());
    has(h.ctx.work_dir.join("sub/dir").display().to_string());

    for bad in ["../escape", "/etc"] {
        let step = json!({"name": "s", "kind": "shell", "command": "true", "working_dir": bad});
        let (refused, events) = shell(&t, step, json!({}), LONG).await;
        assert_eq!((refused.status, refused.exit_code), (StepStatus::Failed, None), "{bad}");
        assert!(refused.error.as_deref().is_some_and(|e| e.contains(bad)), "{refused:?}");
        assert!(lines(&events, "stderr").iter().any(|l| l.contains(bad)), "the refusal is in the output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_terms_then_kills_the_whole_group_within_the_grace() {
    let t = TestDb::new().await;
    let grace = Duration::from_secs(1);
    let step = sh("echo $$; echo started; trap '' TERM; sleep 300 & sleep 300; wait");
    let h = harness(&t, &step, json!({}), &[], (LONG, grace)).await;
    let spec = shell_spec(&step);
    let run = async {
        let outcome = h.run(&ShellExecutor, &spec).await;
        (outcome, Instant::now())
    };
    let cancel = async {
        // The shell and its two sleeps, in their own group.
        let pgid = wait_until("the step to start", PATIENCE, || async {
            let out = lines(&h.events().await, "stdout");
            let pgid = out.first().and_then(|l| l.parse::<u32>().ok())?;
            (out.iter().any(|l| l == "started") && processes_in_group(pgid) == 3).then_some(pgid)
        })
        .await;
        h.ctx.cancel.cancel();
        (pgid, Instant::now())
    };
    let (((outcome, _events), ended), (pgid, cancelled_at)) = tokio::join!(run, cancel);
    assert_eq!(outcome.status, StepStatus::Cancelled, "{outcome:?}");
    let took = ended - cancelled_at;
    assert!(took >= grace - Duration::from_millis(100), "SIGTERM is ignored, so the grace is waited: {took:?}");
    assert_eq!(processes_in_group(pgid), 0, "SIGKILL took every process of the step's group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_given_up_cuts_the_grace_short() {
    let t = TestDb::new().await;
    // A step that ignores SIGTERM, with a grace longer than this test may take.
    let step = sh("echo $$; echo started; trap '' TERM; sleep 300 & sleep 300; wait");
    let mut h = harness(&t, &step, json!({}), &[], (LONG, Duration::from_secs(3600))).await;
    h.ctx.lease_loss_grace = Duration::from_millis(200);
    let spec = shell_spec(&step);
    let give_up = async {
        let pgid = wait_until("the step to start", PATIENCE, || async {
            let out = lines(&h.events().await, "stdout");
            let pgid = out.first().and_then(|l| l.parse::<u32>().ok())?;
            (out.iter().any(|l| l == "started") && processes_in_group(pgid) == 3).then_some(pgid)
        })
        .await;
        // What the run task does when no heartbeat got through: lease lost, then abort.
        h.ctx.lease_lost.cancel();
        h.ctx.cancel.cancel();
        pgid
    };
    let run = tokio::time::timeout(PATIENCE, h.run(&ShellExecutor, &spec));
    let (outcome, pgid) = tokio::join!(run, give_up);
    let (outcome, _) = outcome.expect("the step was killed after the short grace, not the step's hour");
    assert_eq!(outcome.status, StepStatus::Cancelled, "{outcome:?}");
    assert_eq!(processes_in_group(pgid), 0, "SIGKILL took every process of the step's group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_step_and_background_children_do_not_hold_it() {
    let t = TestDb::new().await;
    let step = sh("trap 'echo got-term; exit 0' TERM; sleep 30 & wait");
    let (outcome, events) = shell(&t, step, json!({}), Duration::from_millis(300)).await;
    assert_eq!(outcome.status, StepStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300 ms"));
    assert_eq!(lines(&events, "stdout"), vec!["got-term"], "the timeout sent SIGTERM and the step ended on it");

    // The background sleep keeps stdout open after the shell exits; the step must not wait for it
    // (it would for 300 s, past this test's patience).
    let step = shell(&t, sh("echo $$; sleep 300 & echo done"), json!({}), LONG);
    let (outcome, events) = tokio::time::timeout(PATIENCE, step).await.expect("the step ended with its shell");
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Succeeded, Some(0)));
    let out = lines(&events, "stdout");
    assert_eq!(out.get(1).map(String::as_str), Some("done"), "{out:?}");
    let pgid: u32 = out[0].parse().expect("pgid");
    assert_eq!(processes_in_group(pgid), 0, "the background sleep was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_in_the_artifact_dir_become_artifacts_even_on_failure() {
    let t = TestDb::new().await;
    let step = sh(r#"echo hello > "$RUNLANE_ARTIFACTS/report.txt"; mkdir -p "$RUNLANE_ARTIFACTS/sub";
                     printf x > "$RUNLANE_ARTIFACTS/sub/a.bin"; ln -s /etc/passwd "$RUNLANE_ARTIFACTS/link.txt"; exit 1"#);
    let h = harness(&t, &step, json!({}), &[], (LONG, GRACE)).await;
    let (outcome, _) = h.run(&ShellExecutor, &shell_spec(&step)).await;
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Failed, Some(1)));
    let found: Vec<(&str, &str)> =
        outcome.artifacts.iter().map(|a| (a.name.as_str(), a.content_type.as_str())).collect();
    assert_eq!(found, [("report.txt", "text/plain"), ("sub/a.bin", "application/octet-stream")], "symlink skipped");
    let ArtifactData::File(path) = &outcome.artifacts[0].data else { panic!("a file artifact") };
    assert_eq!(path, &h.ctx.artifacts_dir.join("report.txt"));
    assert_eq!(std::fs::read_to_string(path).expect("report"), "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_split_across_two_writes_is_never_stored() {
    let t = TestDb::new().await;
    let step = sh(r"printf 'pass=hunter2'; sleep 0.3; printf -- '-secret done\n'");
    let h = harness(&t, &step, json!({}), &["hunter2-secret"], (LONG, GRACE)).await;
    let (outcome, events) = h.run(&ShellExecutor, &shell_spec(&step)).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{outcome:?}");
    let text = events.iter().map(|e| format!("{:?} {:?}", e.body, e.data)).collect::<Vec<_>>().join("\n");
    assert!(!text.contains("hunter2"), "a piece of the secret was stored:\n{text}");
    assert!(text.contains("***"), "the secret is masked:\n{text}");
    assert!(lines(&events, "stdout").len() >= 2, "the partial line was flushed during the pause:\n{text}");
}

/// What the local server saw.
#[derive(Debug, Default)]
struct Seen {
    flaky: AtomicUsize,
    authorized: AtomicUsize,
    posted: Mutex<Option<(String, Value)>>,
}

/// A local server: /flaky answers 503 twice then 200 (401 without the bearer token), /ok 200,
/// /echo keeps the JSON it was sent, /slow answers after 30 s.
async fn server() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/flaky", get(flaky))
        .route("/ok", get(|| async { "fine" }))
        .route("/echo", post(echo))
        .route("/slow", get(|| async { tokio::time::sleep(LONG).await }))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

async fn flaky(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok-123") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    seen.authorized.fetch_add(1, Ordering::SeqCst);
    if seen.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    ([("x-test", "yes"), ("content-type", "application/json")], r#"{"ok":true}"#).into_response()
}

async fn echo(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    *seen.posted.lock().expect("lock") = Some((ct, json));
    StatusCode::CREATED
}

async fn http(t: &TestDb, step: Value, params: Value, timeout: Duration) -> (StepOutcome, Vec<Event>, Harness) {
    let h = harness(t, &step, params, &[], (timeout, GRACE)).await;
    let ex = HttpExecutor::new().expect("http client");
    let (outcome, events) = h.run(&ex, &http_spec(&step)).await;
    (outcome, events, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_retries_503_with_backoff_and_keeps_the_answer() {
    let t = TestDb::new().await;
    let (base, seen) = server().await;
    let step = json!({"name": "s", "kind": "http", "url": format!("{base}/flaky"), "retries": 3, "retry_backoff_ms": 50,
                      "headers": {"authorization": "Bearer ${{ params.token }}"}});
    let (outcome, events, _h) = http(&t, step, json!({"token": "tok-123"}), LONG).await;
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Succeeded, Some(200)), "{outcome:?}");
    assert_eq!(seen.flaky.load(Ordering::SeqCst), 3);
    assert_eq!(seen.authorized.load(Ordering::SeqCst), 3, "every try carried the substituted token");
    let out = lines(&events, "stdout");
    assert!(out.first().is_some_and(|l| l.starts_with("HTTP 200 OK (")), "{out:?}");
    assert!(out.iter().any(|l| l == "< x-test: yes"), "{out:?}");
    assert!(out.iter().any(|l| l == "body: 11 bytes saved as artifact 'response'"), "{out:?}");
    assert_eq!(
        lines(&events, "stderr"),
        ["try 1/4: 503 Service Unavailable; retrying in 50 ms", "try 2/4: 503 Service Unavailable; retrying in 100 ms"]
    );
    let [artifact] = outcome.artifacts.as_slice() else { panic!("one artifact: {:?}", outcome.artifacts) };
    assert_eq!((artifact.name.as_str(), artifact.content_type.as_str()), ("response", "application/json"));
    assert_eq!(artifact.data, ArtifactData::Bytes(br#"{"ok":true}"#.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_unexpected_status_and_refused_connections_fail_with_their_cause() {
    let t = TestDb::new().await;
    let (base, _) = server().await;
    let step = json!({"name": "s", "kind": "http", "url": format!("{base}/ok"), "expect_status": [201]});
    let (outcome, _, _h) = http(&t, step, json!({}), LONG).await;
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Failed, Some(200)));
    assert_eq!(outcome.error.as_deref(), Some("unexpected status 200 OK (expected 201)"));
    assert_eq!(outcome.artifacts[0].data, ArtifactData::Bytes(b"fine".to_vec()), "the body is kept on failure too");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", closed.local_addr().expect("addr"));
    drop(closed);
    let step = json!({"name": "s", "kind": "http", "url": url, "retries": 1, "retry_backoff_ms": 10});
    let (outcome, events, _h) = http(&t, step, json!({}), LONG).await;
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Failed, None), "{outcome:?}");
    assert!(outcome.error.as_deref().is_some_and(|e| e.contains("try 2/2")), "{outcome:?}");
    let err = lines(&events, "stderr");
    assert!(err.first().is_some_and(|l| l.starts_with("try 1/2: ") && l.ends_with("retrying in 10 ms")), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_bodies_are_filled_with_params_and_sent_as_json() {
    let t = TestDb::new().await;
    let (base, seen) = server().await;
    let step = json!({"name": "s", "kind": "http", "method": "POST", "url": format!("{base}/echo"), "expect_status": [201],
                      "body": {"service": "${{ params.name }}", "n": 2, "tags": ["${{ params.name }}-x", true]}});
    let (outcome, _, _h) = http(&t, step, json!({"name": "api \"v2\""}), LONG).await;
    assert_eq!((outcome.status, outcome.exit_code), (StepStatus::Succeeded, Some(201)), "{outcome:?}");
    let posted = seen.posted.lock().expect("lock").clone();
    let expected = json!({"service": "api \"v2\"", "n": 2, "tags": ["api \"v2\"-x", true]});
    assert_eq!(posted, Some(("application/json".to_string(), expected)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cancel_and_timeout_end_a_slow_request() {
    let t = TestDb::new().await;
    let (base, _) = server().await;
    // /slow answers after 30 s: only a timeout or a cancel ends the step without its answer.
    let step = json!({"name": "s", "kind": "http", "url": format!("{base}/slow")});
    let (outcome, _, _h) = http(&t, step.clone(), json!({}), Duration::from_millis(300)).await;
    assert_eq!(outcome.status, StepStatus::TimedOut, "{outcome:?}");

    let h = harness(&t, &step, json!({}), &[], (LONG, GRACE)).await;
    let ex = HttpExecutor::new().expect("http client");
    let spec = http_spec(&step);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.ctx.cancel.cancel();
    };
    let ((outcome, _), ()) = tokio::join!(h.run(&ex, &spec), cancel);
    assert_eq!(outcome.status, StepStatus::Cancelled, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_param_too_large_for_the_environment_reaches_the_step_as_a_file() {
    let t = TestDb::new().await;
    // Over the kernel's 128 KiB for one environment string, and spliced into the command too.
    let big = "p".repeat(200 * 1024);
    let step = sh(
        r#"wc -c < "$RUNLANE_PARAM_BIG_FILE"; printf %s ${{ params.big }} | wc -c; echo "${RUNLANE_PARAM_BIG:-absent}""#,
    );
    let (outcome, events) = shell(&t, step, json!({"big": big, "small": "s"}), LONG).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{outcome:?}");
    assert_eq!(lines(&events, "stdout"), vec!["204800", "204800", "absent"]);
}
