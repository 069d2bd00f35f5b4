//! Pausing a lane and stopping the fleet, in SQL: a paused lane claims nothing while the others flow,
//! a resume wakes its workers and its queued runs are claimed, running runs go on to their end, an
//! emergency stop pauses every lane and asks every running run to cancel (also one claimed while the
//! stop waited), and who did each and why is kept on the lane and in the history. Viewers and workers
//! may not pause.

use runlane_core::db;
use runlane_core::lanes::LaneEvent;
use runlane_core::model::*;
use runlane_core::{Error, lanes::LanePause};
use runlane_tests::TestDb;
use runlane_tests::process::{PATIENCE, wait_until};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};

async fn claim(t: &TestDb, worker: WorkerId, lanes: &[Lane]) -> Vec<ClaimedRun> {
    db::claim_runs(&t.pool, worker, lanes, 100, None).await.expect("claim")
}

fn lanes_of(claimed: &[ClaimedRun]) -> Vec<&str> {
    claimed.iter().map(|c| c.lane.as_str()).collect()
}

async fn enqueue_n(t: &TestDb, lane: Lane, n: usize) -> Vec<RunId> {
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(t.enqueue("noop", lane).await);
    }
    runs
}

async fn stats_of(t: &TestDb, lane: Lane) -> LaneStats {
    let stats = db::lane_stats(&t.pool).await.expect("lane stats");
    stats.into_iter().find(|s| s.lane == lane.as_str()).expect("the lane's row")
}

async fn history(t: &TestDb) -> Vec<LaneEvent> {
    let mut events = db::lane_events(&t.pool, None, 1000).await.expect("lane history");
    events.reverse();
    events
}

async fn session_user(t: &TestDb) -> String {
    sqlx::query_scalar("SELECT session_user::text").fetch_one(&t.pool).await.expect("session user")
}

#[tokio::test]
async fn a_paused_lane_claims_nothing_while_other_lanes_flow_and_a_resume_wakes_and_feeds_its_workers() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let a_runs = enqueue_n(&t, Lane::A, 3).await;
    let b_runs = enqueue_n(&t, Lane::B, 2).await;
    let worker = t.register(&Lane::ALL, 60_000).await;
    let me = session_user(&t).await;

    let paused = db::pause_lane(&t.pool, Lane::A, "  flaky deploy target  ", None).await.expect("pause A");
    assert_eq!(
        (paused.lane.as_str(), paused.paused, paused.changed, paused.paused_by.as_deref()),
        ("A", true, true, Some(me.as_str()))
    );
    assert_eq!(paused.pause_reason.as_deref(), Some("flaky deploy target"), "the reason, trimmed");

    let claimed = claim(&t, worker, &[Lane::A, Lane::B]).await;
    assert_eq!(lanes_of(&claimed), ["B", "B"], "lane A comes first for this worker, yet only B's runs came");
    let mut got: Vec<RunId> = claimed.iter().map(|c| c.run_id).collect();
    got.sort();
    assert_eq!(got, b_runs);
    for run in &a_runs {
        assert_eq!(t.status(*run).await, "queued", "a paused lane's runs stay queued");
    }
    let a = stats_of(&t, Lane::A).await;
    assert_eq!((a.queued, a.paused, a.paused_by.as_deref()), (3, true, Some(me.as_str())));
    assert_eq!((a.paused_at, a.pause_reason.as_deref()), (paused.paused_at, Some("flaky deploy target")));
    let b = stats_of(&t, Lane::B).await;
    assert_eq!((b.running, b.paused, b.paused_at, b.paused_by), (2, false, None, None));

    let again = db::pause_lane(&t.pool, Lane::A, "once more", None).await.expect("pause A again");
    assert_eq!(again, LanePause { changed: false, ..paused.clone() }, "pausing a paused lane keeps its first pause");

    // A resume wakes the lane's workers at once (the NOTIFY enqueue sends), and the runs are claimed.
    let mut listener = PgListener::connect(&t.url).await.expect("listener");
    listener.listen("runlane_lane_a").await.expect("listen");
    let resumed = db::resume_lane(&t.pool, Lane::A, "target fixed", None).await.expect("resume A");
    assert_eq!((resumed.paused, resumed.changed, resumed.paused_at), (false, true, None));
    let woken = tokio::time::timeout(PATIENCE, listener.recv()).await.expect("a wake-up in time").expect("notice");
    assert_eq!(woken.channel(), "runlane_lane_a");
    let claimed = claim(&t, worker, &[Lane::A, Lane::B]).await;
    assert_eq!(lanes_of(&claimed), ["A", "A", "A"], "the queued runs are picked up");
    assert!(!stats_of(&t, Lane::A).await.paused);
    let not_paused = db::resume_lane(&t.pool, Lane::A, "again", None).await.expect("resume A again");
    assert!(!not_paused.changed, "resuming an open lane changes nothing");

    let h = history(&t).await;
    let seen: Vec<(&str, Option<&str>, &str, &str)> =
        h.iter().map(|e| (e.action.as_str(), e.lane.as_deref(), e.actor.as_str(), e.reason.as_str())).collect();
    assert_eq!(
        seen,
        [("pause", Some("A"), me.as_str(), "flaky deploy target"), ("resume", Some("A"), me.as_str(), "target fixed")],
        "each change recorded once, with who and why; the calls that changed nothing are not"
    );
    assert_eq!(h[1].data["pause_reason"], "flaky deploy target", "a resume keeps the pause it ended");
    assert_eq!(h[1].data["paused_by"], me.as_str());
}

#[tokio::test]
async fn a_run_running_in_a_lane_that_gets_paused_goes_on_to_its_end() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let runs = enqueue_n(&t, Lane::C, 2).await;
    let worker = t.register(&Lane::ALL, 60_000).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::C], 1, None).await.expect("claim one");
    assert_eq!(claimed.len(), 1);
    let lease = claimed[0].lease();

    db::pause_lane(&t.pool, Lane::C, "hold deploys", None).await.expect("pause C");
    let beat = db::heartbeat_run(&t.pool, lease).await.expect("the lease still renews");
    assert!(!beat.cancel_requested, "a pause cancels nothing");
    db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("finish the step");
    let status = db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("complete");
    assert_eq!(status, RunStatus::Succeeded);
    assert!(claim(&t, worker, &Lane::ALL).await.is_empty(), "the other run of lane C stays queued");
    assert_eq!(t.status(runs[1]).await, "queued");
    let c = stats_of(&t, Lane::C).await;
    assert_eq!((c.queued, c.running, c.paused), (1, 0, true));
}

/// Each running run's cancel request: (run, reason, by, fleet_stop) from its events.
async fn cancel_requests(t: &TestDb, run: RunId) -> Vec<serde_json::Value> {
    let events = db::read_events(&t.pool, run, 0, 1000).await.expect("events");
    events.into_iter().filter(|e| e.kind == "run.cancel_requested").map(|e| e.data.expect("data")).collect()
}

#[tokio::test]
async fn an_emergency_stop_pauses_every_lane_and_asks_every_running_run_to_cancel() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let me = session_user(&t).await;
    let worker = t.register(&Lane::ALL, 60_000).await;
    for lane in [Lane::A, Lane::B, Lane::D] {
        enqueue_n(&t, lane, 1).await;
    }
    let running: Vec<ClaimedRun> = claim(&t, worker, &Lane::ALL).await;
    assert_eq!(running.len(), 3);
    let waiting = enqueue_n(&t, Lane::B, 2).await;
    let d_pause = db::pause_lane(&t.pool, Lane::D, "disk maintenance", None).await.expect("pause D");

    let stop = db::stop_fleet(&t.pool, "incident 42", true, None).await.expect("stop");
    assert_eq!(stop.paused, ["A", "B", "C"], "the lanes not paused yet");
    assert_eq!(stop.cancel_requested, 3);
    for c in &running {
        let rec = db::get_run(&t.pool, c.run_id).await.expect("run");
        assert_eq!(rec.status, "running", "a cancel is asked for; the worker ends the run");
        assert!(rec.cancel_requested_at.is_some());
        let beat = db::heartbeat_run(&t.pool, c.lease()).await.expect("heartbeat");
        assert!(beat.cancel_requested, "the worker hears it on its next heartbeat too");
        let asked = cancel_requests(&t, c.run_id).await;
        assert_eq!(asked.len(), 1);
        assert_eq!(
            (asked[0]["reason"].as_str(), asked[0]["by"].as_str(), asked[0]["fleet_stop"].as_bool()),
            (Some("fleet stop: incident 42"), Some(me.as_str()), Some(true))
        );
    }
    for run in &waiting {
        assert_eq!(t.status(*run).await, "queued", "queued runs wait in their paused lane");
    }
    assert!(claim(&t, worker, &Lane::ALL).await.is_empty(), "nothing is claimed anywhere");
    for lane in Lane::ALL {
        assert!(stats_of(&t, lane).await.paused, "lane {lane} paused");
    }
    let d = stats_of(&t, Lane::D).await;
    assert_eq!(
        (d.paused_at, d.pause_reason.as_deref()),
        (d_pause.paused_at, Some("disk maintenance")),
        "a lane paused before keeps its own pause"
    );
    let b = stats_of(&t, Lane::B).await;
    assert_eq!((b.paused_by.as_deref(), b.pause_reason.as_deref()), (Some(me.as_str()), Some("incident 42")));

    // A second stop finds every lane paused and every cancel already asked for.
    let again = db::stop_fleet(&t.pool, "still on fire", true, None).await.expect("stop again");
    assert_eq!((again.paused.len(), again.cancel_requested), (0, 0));
    for c in &running {
        assert_eq!(cancel_requests(&t, c.run_id).await.len(), 1, "one request per run");
    }

    let h = history(&t).await;
    let seen: Vec<(&str, Option<&str>, &str)> =
        h.iter().map(|e| (e.action.as_str(), e.lane.as_deref(), e.reason.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("pause", Some("D"), "disk maintenance"),
            ("pause", Some("A"), "incident 42"),
            ("pause", Some("B"), "incident 42"),
            ("pause", Some("C"), "incident 42"),
            ("stop", None, "incident 42"),
            ("stop", None, "still on fire"),
        ]
    );
    assert!(h.iter().all(|e| e.actor == me && e.db_user == me));
    assert_eq!(h[1].data["fleet_stop"], true);
    assert_eq!(h[4].id, stop.event_id);
    assert_eq!(
        h[4].data,
        serde_json::json!({"paused": ["A", "B", "C"], "cancel_running": true, "cancel_requested": 3})
    );
    let only_b: Vec<(String, Option<String>)> = db::lane_events(&t.pool, Some(Lane::B), 10)
        .await
        .expect("B's history")
        .into_iter()
        .map(|e| (e.action, e.lane))
        .collect();
    assert_eq!(
        only_b,
        [("stop".into(), None), ("stop".into(), None), ("pause".into(), Some("B".into()))],
        "a lane's history: its own entries and the fleet's stops, newest first"
    );
}

#[tokio::test]
async fn a_stop_without_cancel_lets_running_runs_finish() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    enqueue_n(&t, Lane::A, 1).await;
    let worker = t.register(&Lane::ALL, 60_000).await;
    let running = claim(&t, worker, &Lane::ALL).await;
    let stop = db::stop_fleet(&t.pool, "freeze for the audit", false, None).await.expect("stop");
    assert_eq!((stop.paused.len(), stop.cancel_requested), (4, 0));
    let lease = running[0].lease();
    assert!(!db::heartbeat_run(&t.pool, lease).await.expect("heartbeat").cancel_requested);
    db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("finish");
    assert_eq!(
        db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("done"),
        RunStatus::Succeeded
    );
    assert!(cancel_requests(&t, lease.run_id).await.is_empty());
}

/// The stop waits for a claim that started before it and cancels what that claim took; claims
/// after it find every lane paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_a_claim_in_flight_and_cancels_what_it_claimed() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let runs = enqueue_n(&t, Lane::A, 2).await;
    let worker = t.register(&Lane::ALL, 60_000).await;

    let mut claimer = PgConnection::connect(&t.url).await.expect("connect");
    let mut tx = claimer.begin().await.expect("begin");
    let in_flight = db::claim_runs(&mut *tx, worker, &[Lane::A], 1, None).await.expect("claim in flight");
    assert_eq!(in_flight.len(), 1);

    let stopper = t.new_pool(1).await;
    let stop = tokio::spawn(async move { db::stop_fleet(&stopper, "incident", true, None).await });
    wait_until("the stop to wait for the claim's transaction", PATIENCE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%stop_fleet%'",
        )
        .fetch_one(&t.pool)
        .await
        .expect("activity");
        (waiting == 1).then_some(())
    })
    .await;
    tx.commit().await.expect("the claim commits");
    let stop = stop.await.expect("stop task").expect("stop");
    assert_eq!(stop.cancel_requested, 1, "the run claimed in flight was running when the stop looked");
    let rec = db::get_run(&t.pool, in_flight[0].run_id).await.expect("run");
    assert!(rec.cancel_requested_at.is_some(), "{rec:?}");
    assert!(claim(&t, worker, &Lane::ALL).await.is_empty());
    let other = runs.iter().find(|r| **r != in_flight[0].run_id).expect("the other run");
    assert_eq!(t.status(*other).await, "queued");
}

/// A login's URL for this test's database.
fn login_url(t: &TestDb, user: &str) -> String {
    let mut url = reqwest::Url::parse(&t.url).expect("url");
    url.set_username(user).expect("user");
    url.set_password(Some("pw")).expect("password");
    url.to_string()
}

#[tokio::test]
async fn who_paused_is_the_login_that_called_or_the_api_token_it_acted_for() {
    let t = TestDb::new().await;
    let alice = format!("alice_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let fleet_operator: String =
        sqlx::query_scalar("SELECT runlane.fleet_role('operator')").fetch_one(&t.pool).await.expect("role name");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {alice} LOGIN PASSWORD 'pw' IN ROLE {fleet_operator}")))
        .execute(&t.pool)
        .await
        .expect("create a login");
    let as_alice = sqlx::PgPool::connect(&login_url(&t, &alice)).await.expect("connect as the login");

    let p = db::pause_lane(&as_alice, Lane::B, "canary failing", None).await.expect("alice pauses B");
    assert_eq!(p.paused_by.as_deref(), Some(alice.as_str()));
    let h = history(&t).await;
    assert_eq!((h[0].actor.as_str(), h[0].db_user.as_str()), (alice.as_str(), alice.as_str()));

    // Only the API may say it acts for a token; the token's name is recorded, and the login too.
    let (token_id, _) = runlane_tests::api::token(&t.pool, "operator", None).await;
    match db::resume_lane(&as_alice, Lane::B, "fixed", Some(token_id)).await {
        Err(Error::Database(e)) => assert!(e.to_string().contains("only the executor API"), "{e}"),
        other => panic!("an operator login acting for a token: {other:?}"),
    }
    let resumed = db::resume_lane(&t.pool, Lane::B, "fixed", Some(token_id)).await.expect("resume for a token");
    assert!(resumed.changed);
    let last = history(&t).await.pop().expect("the resume");
    assert_eq!((last.actor.as_str(), last.db_user), ("token:test", session_user(&t).await));
    match db::pause_lane(&t.pool, Lane::B, "x", Some(uuid::Uuid::new_v4())).await {
        Err(Error::NotFound(m)) => assert!(m.contains("unknown token"), "{m}"),
        other => panic!("an unknown token: {other:?}"),
    }

    // Bad input is refused, naming what is wrong, and nothing is recorded.
    for (lane, reason, needle) in
        [("B", "", "a reason is required"), ("B", "   ", "a reason is required"), ("E", "x", "unknown lane 'E'")]
    {
        let err = sqlx::query("SELECT runlane.pause_lane($1, $2)")
            .bind(lane)
            .bind(reason)
            .execute(&t.pool)
            .await
            .map_err(Error::from)
            .expect_err("refused");
        match err {
            Error::Invalid { message, .. } => assert!(message.contains(needle), "{message}"),
            other => panic!("{lane} {reason:?}: {other:?}"),
        }
    }
    let long = "x".repeat(4097);
    assert!(matches!(db::stop_fleet(&t.pool, &long, false, None).await, Err(Error::Invalid { .. })));
    assert_eq!(history(&t).await.len(), 2, "refused calls record nothing");
    as_alice.close().await;
}

/// Runs `sql` as `role`; the SQLSTATE of its error, or None.
async fn as_role(t: &TestDb, role: &str, sql: &str) -> Option<String> {
    let mut conn = PgConnection::connect(&t.url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {role}"))).execute(&mut conn).await.expect("set role");
    match sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().map(|c| c.into_owned()).unwrap_or_default()),
        Err(e) => panic!("{role}: {sql}: {e}"),
    }
}

#[tokio::test]
async fn operators_pause_resume_and_stop_viewers_read_workers_do_neither() {
    let t = TestDb::new().await;
    let denied = Some("42501");
    let pause = "SELECT runlane.pause_lane('A', 'why')";
    let resume = "SELECT runlane.resume_lane('A', 'why')";
    let stop = "SELECT runlane.stop_fleet('why', true)";
    let history = "SELECT count(*) FROM runlane.lane_events";
    let stats = "SELECT * FROM runlane.lane_stats()";
    for role in ["runlane_viewer", "runlane_worker"] {
        for call in [pause, resume, stop] {
            assert_eq!(as_role(&t, role, call).await.as_deref(), denied, "{role}: {call}");
        }
        assert_eq!(as_role(&t, role, stats).await, None, "{role} reads lane_stats");
    }
    assert!(!stats_of(&t, Lane::A).await.paused, "nothing was paused by the refused calls");
    assert_eq!(as_role(&t, "runlane_viewer", history).await, None, "viewers read the history");
    assert_eq!(as_role(&t, "runlane_worker", history).await.as_deref(), denied, "workers read no table");
    assert_eq!(as_role(&t, "runlane_operator", pause).await, None);
    assert!(stats_of(&t, Lane::A).await.paused);
    assert_eq!(as_role(&t, "runlane_operator", resume).await, None);
    assert_eq!(as_role(&t, "runlane_operator", stop).await, None);
    assert_eq!(as_role(&t, "runlane_operator", history).await, None);
    assert_eq!(
        as_role(&t, "runlane_operator", "UPDATE runlane.lanes SET paused_at = NULL").await.as_deref(),
        denied,
        "no direct writes"
    );
}

#[tokio::test]
async fn the_claim_and_lane_stats_keep_their_planner_settings() {
    let t = TestDb::new().await;
    for (function, wanted) in
        [("claim_runs", &["jit=off", "plan_cache_mode=force_generic_plan"][..]), ("lane_stats", &["jit=off"][..])]
    {
        let config: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(proconfig, '{}') FROM pg_proc WHERE proname = $1 AND pronamespace = 'runlane'::regnamespace",
        )
        .bind(function)
        .fetch_one(&t.pool)
        .await
        .expect("proconfig");
        for w in wanted {
            assert!(config.iter().any(|c| c == w), "{function}: {config:?} lacks {w}");
        }
    }
}
