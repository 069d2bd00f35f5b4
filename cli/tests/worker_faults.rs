//! Faults with real processes: kill -9 of a worker, a restarted PostgreSQL, a worker cut off from
//! its queue (the database, or the executor API). Each runs over both brokers and asserts that
//! nothing was lost and nothing ran twice.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, PATIENCE, processes_in_group, wait_until};
use runlane_tests::proxy::Proxy;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

async fn events(t: &TestDb, run: RunId) -> Vec<Event> {
    db::read_events(&t.pool, run, 0, 10_000).await.expect("events")
}

async fn body_event(t: &TestDb, run: RunId, needle: &str) -> Option<Event> {
    events(t, run).await.into_iter().find(|e| e.body.as_deref().is_some_and(|b| b.contains(needle)))
}

async fn wait_status(t: &TestDb, run: RunId, status: &str, limit: Duration) -> RunRecord {
    wait_until(&format!("run {run} to be {status}"), limit, || async {
        let rec = db::get_run(&t.pool, run).await.expect("run");
        (rec.status == status).then_some(rec)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_step_moves_the_run_to_another_worker() {
    kill_9_mid_step(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_http_worker_moves_the_run_to_another() {
    kill_9_mid_step(true).await;
}

async fn kill_9_mid_step(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    t.apply("slow", json!({"steps": [{"name": "s", "kind": "shell", "command": "echo begin $RUNLANE_ATTEMPT; sleep 2; echo end $RUNLANE_ATTEMPT"}]}))
        .await;
    let mut doomed = fleet.worker(Path::new(BIN), "doomed", &[]);
    let run = t.enqueue("slow", Lane::A).await;
    wait_until("attempt 1 to start", PATIENCE, || body_event(&t, run, "begin 1")).await;
    let _survivor = fleet.worker(Path::new(BIN), "survivor", &[]);
    doomed.signal("KILL");
    doomed.wait_exit(PATIENCE);

    // How fast the run moves is `runlane bench`'s recovery_s; here: that it moves, once.
    wait_until("attempt 2 to start", PATIENCE, || body_event(&t, run, "begin 2")).await;
    let rec = wait_status(&t, run, "succeeded", PATIENCE).await;
    assert_eq!((rec.crash_count, rec.attempt, rec.failed_attempts), (1, 2, 0));
    let evs = events(&t, run).await;
    assert!(evs.iter().any(|e| e.attempt == 1 && e.body.as_deref() == Some("begin 1")), "attempt 1's events kept");
    let requeue = evs.iter().find(|e| e.kind == "run.requeued").expect("the crash is marked");
    assert_eq!(requeue.data.as_ref().expect("data")["reason"], "lease_expired");
    assert_eq!(requeue.attempt, 1);
    assert_eq!(
        evs.iter().filter(|e| e.body.as_deref().is_some_and(|b| b.starts_with("end"))).count(),
        1,
        "ran to the end once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_postgres_loses_no_run_and_runs_none_twice() {
    restarted_postgres(false).await;
}

/// The `runlane api` process stays up across the restart and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_postgres_behind_the_api_loses_no_run_and_runs_none_twice() {
    restarted_postgres(true).await;
}

async fn restarted_postgres(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let ledger = std::env::temp_dir().join(format!("runlane-ledger-{}", uuid::Uuid::new_v4().simple()));
    t.apply(
        "ledgered",
        json!({"params": {"type": "object", "required": ["ledger"], "properties": {"ledger": {"type": "string"}}},
               "steps": [{"name": "s", "kind": "shell",
                          "command": "sleep 0.4; echo $RUNLANE_RUN_ID >> ${{ params.ledger }}; echo recorded"}]}),
    )
    .await;
    let env = [("RUNLANE__WORKER__LEASE_MS", "10000"), ("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", "1000")];
    let _w1 = fleet.worker(Path::new(BIN), "r1", &env);
    let _w2 = fleet.worker(Path::new(BIN), "r2", &env);
    let mut runs = Vec::new();
    for _ in 0..24 {
        let req = EnqueueRequest {
            template: "ledgered".into(),
            params: json!({"ledger": ledger.to_string_lossy()}),
            lane: Some(Lane::B),
            ..Default::default()
        };
        runs.push(db::enqueue_run(&t.pool, &req).await.expect("enqueue"));
    }
    wait_until("some runs to finish while others run", PATIENCE, || async {
        let done = t.count("SELECT count(*) FROM runlane.runs WHERE status = 'succeeded'").await;
        let running = t.count("SELECT count(*) FROM runlane.runs WHERE status = 'running'").await;
        (done >= 4 && running >= 2).then_some(())
    })
    .await;
    let cluster = t.cluster();
    let restarted = tokio::task::block_in_place(|| cluster.restart());
    restarted.expect("pg_ctl restart");

    let pool = t.new_pool(2).await;
    wait_until("every run to succeed", PATIENCE, || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM runlane.runs WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (done == 24).then_some(())
    })
    .await;
    let lines = std::fs::read_to_string(&ledger).expect("ledger");
    let _ = std::fs::remove_file(&ledger);
    for run in &runs {
        let n = lines.lines().filter(|l| *l == run.to_string()).count();
        assert_eq!(n, 1, "run {run} executed {n} times");
    }
    let crashes = t.count("SELECT coalesce(sum(crash_count), 0)::bigint FROM runlane.runs").await;
    assert_eq!(crashes, 0, "no lease expired across the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_past_its_lease_stops_its_step_and_the_run_finishes_elsewhere() {
    cut_off_past_its_lease(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_api_past_its_lease_stops_its_step_and_the_run_finishes_elsewhere() {
    cut_off_past_its_lease(true).await;
}

async fn cut_off_past_its_lease(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    t.apply(
        "cutoff",
        json!({"steps": [{"name": "s", "kind": "shell",
                          "command": "echo pgid $$ attempt $RUNLANE_ATTEMPT; sleep 4; echo end $RUNLANE_ATTEMPT"}]}),
    )
    .await;
    let proxy = Proxy::start(fleet.upstream()).await;
    let isolated = fleet.worker_via(Path::new(BIN), "isolated", &[], proxy.addr);
    let run = t.enqueue("cutoff", Lane::D).await;
    let first = wait_until("attempt 1 to start", PATIENCE, || body_event(&t, run, "attempt 1")).await;
    let pgid: u32 = first.body.expect("body").split_whitespace().nth(1).expect("pgid").parse().expect("pgid");
    let _healthy = fleet.worker(Path::new(BIN), "healthy", &[]);

    proxy.set_blackholed(true);
    // The isolated worker gives the step up before its lease can expire.
    wait_until("the isolated worker to kill its step", PATIENCE, || async {
        (processes_in_group(pgid) == 0).then_some(())
    })
    .await;
    let rec = wait_status(&t, run, "succeeded", PATIENCE).await;
    assert_eq!((rec.attempt, rec.crash_count), (2, 1));

    proxy.set_blackholed(false);
    // Whatever the isolated worker had in flight reaches its queue now; its run task ends without
    // writing more (it gave the lease up), and says so.
    wait_until("the isolated worker to end its run task", PATIENCE, || async {
        isolated.log().contains("lease lost: the run was aborted here").then_some(())
    })
    .await;
    let evs = events(&t, run).await;
    let requeued_at = evs.iter().find(|e| e.kind == "run.requeued").expect("requeued").seq;
    let late: Vec<_> = evs.iter().filter(|e| e.attempt == 1 && e.seq > requeued_at).collect();
    assert!(late.is_empty(), "writes from the cut-off attempt landed after the requeue: {late:?}");
    assert!(!evs.iter().any(|e| e.body.as_deref() == Some("end 1")), "attempt 1 never finished its step");
    assert!(rec.worker_id.is_some());
    assert!(isolated.log().contains("lease"), "the isolated worker logged the lost lease:\n{}", isolated.log());
}

/// One `tick ATTEMPT NANOS` line per 50 ms while a step runs.
fn ticks(ledger: &str, attempt: u32) -> Vec<u128> {
    ledger
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("tick") && parts.next()?.parse::<u32>().ok()? == attempt)
                .then(|| parts.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_postgres_stops_its_step_before_another_worker_starts_it() {
    cut_off_stops_before_another_starts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_api_stops_its_step_before_another_worker_starts_it() {
    cut_off_stops_before_another_starts(true).await;
}

async fn cut_off_stops_before_another_starts(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    let ledger = std::env::temp_dir().join(format!("runlane-ticks-{}", uuid::Uuid::new_v4().simple()));
    // The step ignores SIGTERM (the worst case: it runs until SIGKILL) and records a tick every 50 ms;
    // a whole attempt takes about 3 s. Its own grace is long: only the lease-loss grace cuts it.
    t.apply(
        "ticking",
        json!({"params": {"type": "object", "properties": {"ledger": {"type": "string"}}},
               "steps": [{"name": "s", "kind": "shell", "cancel_grace_ms": 60000,
                          "command": "trap '' TERM; for i in $(seq 1 60); do echo \"tick $RUNLANE_ATTEMPT $(date +%s%N)\" >> ${{ params.ledger }}; sleep 0.05; done; echo done $RUNLANE_ATTEMPT"}]}),
    )
    .await;
    let proxy = Proxy::start(fleet.upstream()).await;
    let _isolated = fleet.worker_via(Path::new(BIN), "isolated", &[], proxy.addr);
    let req = EnqueueRequest {
        template: "ticking".into(),
        params: json!({"ledger": ledger.to_string_lossy()}),
        lane: Some(Lane::A),
        ..Default::default()
    };
    let run = db::enqueue_run(&t.pool, &req).await.expect("enqueue");
    wait_until("attempt 1 to tick", PATIENCE, || async {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        (ticks(&text, 1).len() >= 3).then_some(())
    })
    .await;
    let _healthy = fleet.worker(Path::new(BIN), "healthy", &[]);
    proxy.set_blackholed(true);

    let rec = wait_status(&t, run, "succeeded", PATIENCE).await;
    assert_eq!((rec.attempt, rec.crash_count), (2, 1), "{rec:?}");
    let text = std::fs::read_to_string(&ledger).expect("ledger");
    let _ = std::fs::remove_file(&ledger);
    let (first, second) = (ticks(&text, 1), ticks(&text, 2));
    assert_eq!(second.len(), 60, "attempt 2 ran to its end");
    assert!(first.len() < 60, "attempt 1 was stopped");
    let (last_of_first, first_of_second) = (first.iter().max().expect("ticks"), second.iter().min().expect("ticks"));
    assert!(
        last_of_first < first_of_second,
        "the attempts overlapped: attempt 1 ticked until {last_of_first}, attempt 2 began at {first_of_second} \
         ({} ms of overlap)",
        (last_of_first - first_of_second) / 1_000_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_marked_gone_registers_again_and_keeps_working() {
    marked_gone_registers_again(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_worker_marked_gone_registers_again_and_keeps_working() {
    marked_gone_registers_again(true).await;
}

async fn marked_gone_registers_again(http: bool) {
    let t = TestDb::new().await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    t.apply("quick", json!({"steps": [{"name": "s", "kind": "shell", "command": "echo ok"}]})).await;
    let w = fleet.worker(Path::new(BIN), "revenant", &[]);
    let first = t.enqueue("quick", Lane::B).await;
    wait_status(&t, first, "succeeded", PATIENCE).await;
    // The sweeper, as if the worker had been silent for five minutes. The fleet's own sweeper (the
    // worker's, or the API's) holds the sweep lock now and then: a sweep it skipped did nothing.
    let opts = SweepOptions { now: Some(chrono::Utc::now() + chrono::Duration::minutes(5)), ..Default::default() };
    let swept = wait_until("a sweep that was not skipped", PATIENCE, || async {
        Some(db::sweep_at(&t.pool, &opts).await.expect("sweep")).filter(|r| !r.skipped)
    })
    .await;
    assert_eq!(swept.workers_gone, 1, "{swept:?}");
    let second = t.enqueue("quick", Lane::B).await;
    let rec = wait_status(&t, second, "succeeded", PATIENCE).await;
    let states: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM runlane.workers WHERE host = 'revenant' ORDER BY started_at")
            .fetch_all(&t.pool)
            .await
            .expect("workers");
    assert_eq!(states.len(), 2, "registered again: {states:?}");
    assert_eq!((states[0].1.as_str(), states[1].1.as_str()), ("gone", "active"), "{states:?}");
    assert_eq!(rec.worker_id.map(|w| w.0), Some(states[1].0), "the new registration ran the run");
    assert!(w.log().contains("registering again"), "{}", w.log());
}
