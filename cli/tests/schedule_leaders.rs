//! A schedule every second, ticked by two real `runlane worker` processes and two more tickers in
//! this test, all racing, with PostgreSQL stopped and started again in the middle: every slot is
//! enqueued once, except the slots that passed while the database was down, which are caught up by
//! one run recording them.

use chrono::{DateTime, Duration, Utc};
use runlane_core::db::{self, NewSchedule};
use runlane_core::model::{Lane, RunId};
use runlane_tests::TestDb;
use runlane_tests::process::{PATIENCE, WorkerProc, wait_until};
use sqlx::PgPool;
use std::path::Path;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// Ticks as fast as it can (a little pause between ticks, a longer one while the database is away)
/// until `stop`; returns (ticks that ran, ticks skipped because another leader held the lock).
async fn racer(url: String, stop: CancellationToken) -> (u64, u64) {
    let (mut ran, mut skipped) = (0, 0);
    let mut pool: Option<PgPool> = None;
    while !stop.is_cancelled() {
        if pool.is_none() {
            pool = db::connect(&url, 1, "racer").await.ok();
        }
        let pause = match &pool {
            Some(p) => match db::tick_schedules(p).await {
                Ok(report) if report.skipped => {
                    skipped += 1;
                    5
                }
                Ok(_) => {
                    ran += 1;
                    5
                }
                Err(_) => {
                    pool = None;
                    50
                }
            },
            None => 50,
        };
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    (ran, skipped)
}

/// Runs of the schedule: (idempotency key, slot, run id), by slot. The slot is read from the key, not
/// from `run_at`: a run whose worker lost PostgreSQL mid-run is handed back and queued again with a
/// new `run_at`, while its key keeps naming its slot.
async fn runs_of(pool: &PgPool, id: uuid::Uuid) -> Option<Vec<(String, DateTime<Utc>, RunId)>> {
    let prefix = format!("schedule:{id}:");
    let rows: Vec<(String, RunId)> =
        sqlx::query_as("SELECT idempotency_key, id FROM runlane.runs WHERE idempotency_key LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(pool)
            .await
            .ok()?;
    let mut runs: Vec<_> = rows
        .into_iter()
        .map(|(key, run)| {
            let slot =
                key.strip_prefix(&prefix).and_then(|s| s.parse::<DateTime<Utc>>().ok()).expect("a slot in the key");
            (key, slot, run)
        })
        .collect();
    runs.sort_by_key(|(_, slot, _)| *slot);
    Some(runs)
}

async fn now(pool: &PgPool) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_racing_across_a_postgres_restart_enqueue_each_slot_once_and_catch_up_the_outage() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let every_second = NewSchedule {
        name: "heartbeat".into(),
        template: "noop".into(),
        cron: "* * * * * *".into(),
        lane: Some(Lane::A),
        params: serde_json::json!({}),
        ..Default::default()
    };
    let id = db::add_schedule(&t.pool, &every_second).await.expect("add");
    let first = db::get_schedule(&t.pool, "heartbeat").await.expect("schedule").next_due.expect("a first slot");

    let _w1 = WorkerProc::spawn(Path::new(BIN), &t.url, "leader-1", &[]);
    let _w2 = WorkerProc::spawn(Path::new(BIN), &t.url, "leader-2", &[]);
    let stop = CancellationToken::new();
    let racers = [tokio::spawn(racer(t.url.clone(), stop.clone())), tokio::spawn(racer(t.url.clone(), stop.clone()))];

    wait_until("four slots enqueued", PATIENCE, || async {
        runs_of(&t.pool, id).await.filter(|r| r.len() >= 4).map(|_| ())
    })
    .await;
    let cluster = t.cluster();
    let went_down = now(&t.pool).await.expect("the database's clock");
    tokio::task::block_in_place(|| cluster.stop()).expect("pg_ctl stop");
    // Down for long enough that at least two slots pass with nobody to enqueue them.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    tokio::task::block_in_place(|| cluster.restart()).expect("pg_ctl start");

    let pool = t.new_pool(2).await;
    let back = now(&pool).await.expect("the database's clock");
    wait_until("four slots enqueued after the restart", PATIENCE, || async {
        runs_of(&pool, id).await.filter(|r| r.iter().filter(|(_, slot, _)| *slot > back).count() >= 4).map(|_| ())
    })
    .await;
    db::pause_schedule(&pool, "heartbeat", Some("end of the test")).await.expect("pause");
    stop.cancel();
    for r in racers {
        let (ran, skipped) = r.await.expect("racer");
        assert!(ran + skipped > 0, "a racer ticked");
        eprintln!("racer: {ran} ticks ran, {skipped} skipped (another leader held the lock)");
    }

    let runs = runs_of(&pool, id).await.expect("runs");
    let mut covered_from = first;
    let mut caught_up = 0;
    for (key, slot, run) in &runs {
        assert_eq!(key, &format!("schedule:{id}:{}", slot.format("%Y-%m-%dT%H:%M:%SZ")), "the key names the slot");
        assert!(*slot >= covered_from, "slot {slot} enqueued twice, or out of order");
        let events = db::read_events(&pool, *run, 0, 100).await.expect("events");
        let catch_up: Vec<_> = events.iter().filter(|e| e.kind == "run.caught_up").collect();
        if *slot == covered_from {
            assert!(catch_up.is_empty(), "slot {slot} was on time: {catch_up:?}");
        } else {
            // Slots from covered_from to just before this one passed unenqueued: this run says so.
            assert_eq!(catch_up.len(), 1, "slots {covered_from} to {slot} are missing, and no run records them");
            let data = catch_up[0].data.as_ref().expect("data");
            let missed = (*slot - covered_from).num_seconds();
            assert_eq!(data["missed"], missed, "{data}");
            assert_eq!(data["from"].as_str().map(|s| s.parse::<DateTime<Utc>>().expect("time")), Some(covered_from));
            assert_eq!(
                data["to"].as_str().map(|s| s.parse::<DateTime<Utc>>().expect("time")),
                Some(*slot - Duration::seconds(1))
            );
            caught_up += 1;
        }
        covered_from = *slot + Duration::seconds(1);
    }
    let outage: Vec<_> =
        runs.iter().filter(|(_, slot, _)| *slot > went_down && *slot <= back + Duration::seconds(5)).collect();
    assert!(caught_up >= 1, "the slots of the outage ({went_down} to {back}) were caught up by one run: {outage:?}");
    assert!(runs.iter().filter(|(_, slot, _)| *slot > back).count() >= 4, "slots kept coming after the restart");
}
