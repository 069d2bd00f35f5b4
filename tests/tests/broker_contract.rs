//! The `Broker` contract, run against every broker (as a driver test suite runs against every
//! driver): PostgreSQL directly, and the executor API over HTTP. A worker cannot tell them apart.

use runlane_core::Error;
use runlane_core::artifacts::ArtifactBytes;
use runlane_core::broker::Broker;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{Completion, RunOps, StepFinish};
use runlane_tests::TestDb;
use runlane_tests::api::{TestApi, token};
use runlane_tests::process::PATIENCE;
use runlane_worker::http_broker::HttpBroker;

fn registration(lanes: &[Lane]) -> WorkerRegistration {
    WorkerRegistration {
        host: "contract".into(),
        lanes: lanes.to_vec(),
        slots: 4,
        version: "test".into(),
        capabilities: vec![],
        lease_ms: 60_000,
        kill_grace_ms: 0,
    }
}

/// Registers, claims from its lanes only and up to its limit, and renews what it claimed.
async fn claims_and_renewals(t: &TestDb, broker: &impl Broker) {
    t.apply_noop().await;
    let runs = [t.enqueue("noop", Lane::A).await, t.enqueue("noop", Lane::A).await, t.enqueue("noop", Lane::B).await];
    let worker = broker.register_worker(&registration(&[Lane::A])).await.expect("register");
    broker.worker_heartbeat(worker, WorkerState::Active, &WorkerUpdate::default()).await.expect("alive");
    let first = broker.claim_runs(worker, &[Lane::A], 1, None).await.expect("claim");
    assert_eq!((first.len(), first[0].run_id, first[0].attempt), (1, runs[0], 1), "oldest first, up to the limit");
    let second = broker.claim_runs(worker, &[Lane::A], 5, None).await.expect("claim");
    assert_eq!(second.iter().map(|c| c.run_id).collect::<Vec<_>>(), [runs[1]], "only its lanes");
    assert!(broker.claim_runs(worker, &[Lane::A], 5, None).await.expect("claim").is_empty());

    let reply = broker.heartbeat_run(first[0].lease()).await.expect("renew");
    assert!(!reply.cancel_requested);
    db::cancel_run(&t.pool, runs[0], Some("contract")).await.expect("cancel");
    assert!(broker.heartbeat_run(first[0].lease()).await.expect("renew").cancel_requested, "the cancel is heard");
    let stale = Lease { run_id: runs[1], token: uuid::Uuid::new_v4() };
    assert!(matches!(broker.heartbeat_run(stale).await, Err(Error::LeaseLost(_))), "a stale lease is lost");

    let attempts = broker.running_attempts(&[runs[0], runs[1], runs[2]]).await.expect("running attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.contains(&(runs[1], 1)));
    let stats = broker.lane_stats().await.expect("lane stats");
    let b = stats.iter().find(|s| s.lane == "B").expect("lane B");
    assert_eq!((b.queued, b.running), (1, 0));
    assert_ne!(broker.fleet_id().await.expect("fleet"), uuid::Uuid::nil());
}

/// Items applied, answered in order; a replay is answered as the first time; the end is the run's.
async fn items_and_replays(t: &TestDb, broker: &impl Broker) {
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::C).await;
    let worker = broker.register_worker(&registration(&[Lane::C])).await.expect("register");
    let lease = broker.claim_runs(worker, &[Lane::C], 1, None).await.expect("claim")[0].lease();
    let out = RunOps {
        lease,
        op: 1,
        events: vec![NewEvent::output(0, Stream::Stdout, "one"), NewEvent::output(0, Stream::Stderr, "two")],
        finish: None,
        start: None,
        complete: None,
    };
    let first = broker.apply_ops(std::slice::from_ref(&out)).await.expect("apply");
    assert_eq!(
        (first[0].code.as_str(), first[0].last_seq),
        ("ok", Some(5)),
        "after run.queued, run.claimed, step.started"
    );
    let again = broker.apply_ops(std::slice::from_ref(&out)).await.expect("replay");
    assert_eq!((again[0].code.as_str(), again[0].last_seq), ("replay", Some(5)));
    let end = RunOps {
        lease,
        op: 2,
        events: vec![],
        finish: Some(StepFinish { step: 0, status: StepStatus::Succeeded, exit_code: Some(0), error: None }),
        start: None,
        complete: Some(Completion { outcome: Outcome::Succeeded, result: None, error: None }),
    };
    let ended = broker.apply_ops(&[end]).await.expect("apply").remove(0).into_result().expect("ended");
    assert_eq!(ended.status, Some(RunStatus::Succeeded));
    let bodies: Vec<_> =
        db::read_events(&t.pool, run, 0, 100).await.expect("events").into_iter().filter_map(|e| e.body).collect();
    assert_eq!(bodies, ["one", "two"], "written once");
}

/// An artifact is stored once under its id, and refused on a stale lease.
async fn artifacts(t: &TestDb, broker: &impl Broker) {
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = broker.register_worker(&registration(&[Lane::A])).await.expect("register");
    let lease = broker.claim_runs(worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let bytes = ArtifactBytes {
        id: ArtifactId(uuid::Uuid::now_v7()),
        step: Some(0),
        name: "report.txt",
        content_type: "text/plain",
        bytes: b"all well".to_vec(),
    };
    let id = broker.put_artifact(lease, &bytes).await.expect("upload");
    assert_eq!(broker.put_artifact(lease, &bytes).await.expect("upload again"), id, "the same artifact");
    let stored = db::list_artifacts(&t.pool, run).await.expect("artifacts");
    assert_eq!((stored.len(), stored[0].size_bytes), (1, 8));
    let stale = Lease { run_id: run, token: uuid::Uuid::new_v4() };
    let refused = broker.put_artifact(stale, &ArtifactBytes { name: "other.txt", ..bytes.clone() }).await;
    assert!(refused.is_err_and(|e| e.is_lease_lost()), "a stale lease uploads nothing");
}

/// Notices: a lane's wake-up and a cancel reach the subscriber; a worker marked gone hears it.
async fn notices_and_gone(t: &TestDb, broker: &impl Broker) {
    t.apply_noop().await;
    let mut notices = broker.subscribe(&[Lane::D]).await.expect("subscribe");
    let worker = broker.register_worker(&registration(&[Lane::D])).await.expect("register");
    let run = t.enqueue("noop", Lane::D).await;
    let woken = tokio::time::timeout(PATIENCE, async {
        loop {
            match notices.recv().await {
                Some(Notice::LaneReady(Lane::D)) => return,
                Some(_) => continue,
                None => panic!("the notices ended"),
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "the lane's wake-up arrived");
    broker.claim_runs(worker, &[Lane::D], 1, None).await.expect("claim");
    db::cancel_run(&t.pool, run, None).await.expect("cancel");
    let cancelled = tokio::time::timeout(PATIENCE, async {
        loop {
            match notices.recv().await {
                Some(Notice::Cancel(r)) if r == run => return,
                Some(_) => continue,
                None => panic!("the notices ended"),
            }
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the cancel arrived");

    let later = SweepOptions { now: Some(chrono::Utc::now() + chrono::Duration::hours(1)), ..Default::default() };
    loop {
        if !db::sweep_at(&t.pool, &later).await.expect("sweep").skipped {
            break;
        }
    }
    let beat = broker.worker_heartbeat(worker, WorkerState::Active, &WorkerUpdate::default()).await;
    assert!(matches!(beat, Err(Error::WorkerGone(_))), "{beat:?}");
    assert!(matches!(broker.claim_runs(worker, &[Lane::D], 1, None).await, Err(Error::WorkerGone(_))));
}

/// The executor API over the test's database, and a worker token's broker.
async fn over_http(t: &TestDb) -> (TestApi, HttpBroker) {
    let api = TestApi::start(t.pool.clone(), |_| {}).await;
    let (_, worker_token) = token(&t.pool, "worker", None).await;
    let broker = HttpBroker::new(&api.base, &worker_token).expect("http broker");
    (api, broker)
}

macro_rules! both_brokers {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                let t = runlane_tests::TestDb::new().await;
                super::$case(&t, &t.broker()).await;
            })*
        }
        mod executor_api {
            $(#[tokio::test]
            async fn $case() {
                let t = runlane_tests::TestDb::new().await;
                let (_api, broker) = super::over_http(&t).await;
                super::$case(&t, &broker).await;
            })*
        }
    };
}

both_brokers!(claims_and_renewals, items_and_replays, artifacts, notices_and_gone);
