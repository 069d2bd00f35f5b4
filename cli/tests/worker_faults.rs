//! Faults with real processes: kill -9 of a worker, a restarted PostgreSQL, a worker cut off from
//! the database. Each asserts that nothing was lost and nothing ran twice.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, WorkerProc, processes_in_group, wait_until};
use runlane_tests::proxy::Proxy;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

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
    wait_until("attempt 1 to start", Duration::from_secs(20), || body_event(&t, run, "begin 1")).await;
    let _survivor = fleet.worker(Path::new(BIN), "survivor", &[]);
    doomed.signal("KILL");
    let killed = Instant::now();
    doomed.wait_exit(Duration::from_secs(5));

    wait_until("attempt 2 to start", Duration::from_secs(20), || body_event(&t, run, "begin 2")).await;
    let moved = killed.elapsed();
    // lease 2 s + sweep every 0.25 s (± jitter) + claim wake-up.
    assert!(moved < Duration::from_millis(2000 + 300 + 700), "running elsewhere {moved:?} after kill -9");
    let rec = wait_status(&t, run, "succeeded", Duration::from_secs(20)).await;
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
    let t = TestDb::new().await;
    let ledger = std::env::temp_dir().join(format!("runlane-ledger-{}", uuid::Uuid::new_v4().simple()));
    t.apply(
        "ledgered",
        json!({"params": {"type": "object", "required": ["ledger"], "properties": {"ledger": {"type": "string"}}},
               "steps": [{"name": "s", "kind": "shell",
                          "command": "sleep 0.4; echo $RUNLANE_RUN_ID >> ${{ params.ledger }}; echo recorded"}]}),
    )
    .await;
    let env = [("RUNLANE__WORKER__LEASE_MS", "10000"), ("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", "1000")];
    let _w1 = WorkerProc::spawn(Path::new(BIN), &t.url, "r1", &env);
    let _w2 = WorkerProc::spawn(Path::new(BIN), &t.url, "r2", &env);
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
    wait_until("some runs to finish while others run", Duration::from_secs(20), || async {
        let done = t.count("SELECT count(*) FROM runlane.runs WHERE status = 'succeeded'").await;
        let running = t.count("SELECT count(*) FROM runlane.runs WHERE status = 'running'").await;
        (done >= 4 && running >= 2).then_some(())
    })
    .await;
    let cluster = t.cluster();
    let restarted = tokio::task::block_in_place(|| cluster.restart());
    restarted.expect("pg_ctl restart");

    let pool = t.new_pool(2).await;
    wait_until("every run to succeed", Duration::from_secs(60), || async {
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
    let t = TestDb::new().await;
    t.apply(
        "cutoff",
        json!({"steps": [{"name": "s", "kind": "shell",
                          "command": "echo pgid $$ attempt $RUNLANE_ATTEMPT; sleep 4; echo end $RUNLANE_ATTEMPT"}]}),
    )
    .await;
    let upstream = format!("127.0.0.1:{}", t.cluster().port()).parse().expect("addr");
    let proxy = Proxy::start(upstream).await;
    let cut_url = t.url.replace(&format!(":{}/", t.cluster().port()), &format!(":{}/", proxy.addr.port()));
    let isolated = WorkerProc::spawn(Path::new(BIN), &cut_url, "isolated", &[]);
    let run = t.enqueue("cutoff", Lane::D).await;
    let first = wait_until("attempt 1 to start", Duration::from_secs(20), || body_event(&t, run, "attempt 1")).await;
    let pgid: u32 = first.body.expect("body").split_whitespace().nth(1).expect("pgid").parse().expect("pgid");
    let _healthy = WorkerProc::spawn(Path::new(BIN), &t.url, "healthy", &[]);

    proxy.set_blackholed(true);
    let cut = Instant::now();
    // The isolated worker gives the step up once no heartbeat got through for a whole lease.
    wait_until("the isolated worker to kill its step", Duration::from_secs(8), || async {
        (processes_in_group(pgid) == 0).then_some(())
    })
    .await;
    assert!(cut.elapsed() < Duration::from_secs(2 + 1 + 2), "step killed {:?} after the cut", cut.elapsed());
    let rec = wait_status(&t, run, "succeeded", Duration::from_secs(30)).await;
    assert_eq!((rec.attempt, rec.crash_count), (2, 1));

    proxy.set_blackholed(false);
    tokio::time::sleep(Duration::from_secs(2)).await; // let the isolated worker's late calls through
    let evs = events(&t, run).await;
    let requeued_at = evs.iter().find(|e| e.kind == "run.requeued").expect("requeued").seq;
    let late: Vec<_> = evs.iter().filter(|e| e.attempt == 1 && e.seq > requeued_at).collect();
    assert!(late.is_empty(), "writes from the cut-off attempt landed after the requeue: {late:?}");
    assert!(!evs.iter().any(|e| e.body.as_deref() == Some("end 1")), "attempt 1 never finished its step");
    assert!(rec.worker_id.is_some());
    assert!(isolated.log().contains("lease"), "the isolated worker logged the lost lease:\n{}", isolated.log());
}
