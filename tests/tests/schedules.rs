//! Schedules through SQL: catch-up after an outage, pause and resume, bad input refused, who may do
//! what, one tick at a time. Which instants an expression names: cron_slots.rs.
//! The tick is driven with `tick_schedules_at` (the owner's clock), never by waiting.

use chrono::{DateTime, Duration, Utc};
use runlane_core::db::{self, NewSchedule};
use runlane_core::model::Event;
use runlane_core::{Error, model::Lane};
use runlane_tests::TestDb;
use serde_json::json;
use sqlx::{Connection, PgConnection};

fn every_second(name: &str) -> NewSchedule {
    NewSchedule {
        name: name.into(),
        template: "noop".into(),
        cron: "* * * * * *".into(),
        lane: Some(Lane::A),
        params: json!({}),
        ..Default::default()
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

/// The schedule's runs as (idempotency key, run_at), oldest slot first.
async fn runs_of(t: &TestDb, id: uuid::Uuid) -> Vec<(String, DateTime<Utc>, runlane_core::model::RunId)> {
    sqlx::query_as("SELECT idempotency_key, run_at, id FROM runlane.runs WHERE idempotency_key LIKE $1 ORDER BY run_at")
        .bind(format!("schedule:{id}:%"))
        .fetch_all(&t.pool)
        .await
        .expect("runs")
}

async fn caught_up(t: &TestDb, run: runlane_core::model::RunId) -> Vec<Event> {
    let events = db::read_events(&t.pool, run, 0, 100).await.expect("events");
    events.into_iter().filter(|e| e.kind == "run.caught_up").collect()
}

fn key(id: uuid::Uuid, slot: DateTime<Utc>) -> String {
    format!("schedule:{id}:{}", slot.format("%Y-%m-%dT%H:%M:%SZ"))
}

#[tokio::test]
async fn a_ten_minute_outage_enqueues_one_catch_up_run_that_counts_the_missed_slots() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let id = db::add_schedule(&t.pool, &every_second("beat")).await.expect("add");
    let first = db::get_schedule(&t.pool, "beat").await.expect("schedule").next_due.expect("a first slot");

    let report = db::tick_schedules_at(&t.pool, first, 100).await.expect("tick");
    assert_eq!((report.skipped, report.enqueued, report.caught_up), (false, 1, 0), "{report:?}");

    // Nobody ticks for ten minutes; then one tick.
    let back = first + Duration::minutes(10);
    let report = db::tick_schedules_at(&t.pool, back, 100).await.expect("tick after the outage");
    assert_eq!((report.enqueued, report.caught_up, report.missed), (1, 1, 599), "{report:?}");
    let again = db::tick_schedules_at(&t.pool, back, 100).await.expect("tick again");
    assert_eq!(again.enqueued, 0, "a slot is enqueued once: {again:?}");

    let runs = runs_of(&t, id).await;
    let slots: Vec<_> = runs.iter().map(|(k, run_at, _)| (k.clone(), *run_at)).collect();
    assert_eq!(
        slots,
        vec![(key(id, first), first), (key(id, back), back)],
        "one run for the outage: the newest slot's"
    );
    assert!(caught_up(&t, runs[0].2).await.is_empty(), "the first slot was on time");
    let events = caught_up(&t, runs[1].2).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let data = events[0].data.as_ref().expect("data");
    assert_eq!(data["schedule"], "beat");
    assert_eq!(data["missed"], 599);
    assert_eq!(data["from"].as_str().map(at), Some(first + Duration::seconds(1)));
    assert_eq!(data["to"].as_str().map(at), Some(back - Duration::seconds(1)));
    assert!(data.get("at_least").is_none(), "counted exactly: {data}");

    let s = db::get_schedule(&t.pool, "beat").await.expect("schedule");
    assert_eq!(s.next_due, Some(back + Duration::seconds(1)));
    assert_eq!((s.last_slot, s.last_run_id), (Some(back), Some(runs[1].2)));
    db::remove_schedule(&t.pool, "beat").await.expect("remove");

    // Every minute: enqueued at 10:00, ticked again at 10:10:30 → the 10:10 slot, 10:01 to 10:09 missed.
    let minutely = NewSchedule { name: "minutely".into(), cron: "* * * * *".into(), ..every_second("") };
    let id = db::add_schedule(&t.pool, &minutely).await.expect("add");
    let first = db::get_schedule(&t.pool, "minutely").await.expect("schedule").next_due.expect("a first slot");
    assert_eq!(db::tick_schedules_at(&t.pool, first, 100).await.expect("tick").enqueued, 1);
    let report = db::tick_schedules_at(&t.pool, first + Duration::seconds(630), 100).await.expect("tick");
    assert_eq!((report.enqueued, report.missed), (1, 9), "{report:?}");
    let runs = runs_of(&t, id).await;
    assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![first, first + Duration::minutes(10)]);
    let events = caught_up(&t, runs[1].2).await;
    let data = events[0].data.as_ref().expect("data");
    assert_eq!(data["from"].as_str().map(at), Some(first + Duration::minutes(1)));
    assert_eq!(data["to"].as_str().map(at), Some(first + Duration::minutes(9)));
}

#[tokio::test]
async fn a_paused_schedule_enqueues_nothing_and_resumes_from_its_next_slot_without_catching_up() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let id = db::add_schedule(&t.pool, &every_second("beat")).await.expect("add");
    let first = db::get_schedule(&t.pool, "beat").await.expect("schedule").next_due.expect("a first slot");
    assert_eq!(db::tick_schedules_at(&t.pool, first, 100).await.expect("tick").enqueued, 1);

    db::pause_schedule(&t.pool, "beat", Some("maintenance window")).await.expect("pause");
    db::pause_schedule(&t.pool, "beat", Some("again")).await.expect("pausing a paused schedule");
    let paused = db::get_schedule(&t.pool, "beat").await.expect("schedule");
    assert!(!paused.enabled);
    assert_eq!(paused.pause_reason.as_deref(), Some("maintenance window"), "the first pause is kept");
    let me: String = sqlx::query_scalar("SELECT session_user::text").fetch_one(&t.pool).await.expect("user");
    assert_eq!(paused.paused_by, Some(me), "who paused it");
    let report = db::tick_schedules_at(&t.pool, first + Duration::hours(1), 100).await.expect("tick while paused");
    assert_eq!(report.enqueued, 0, "{report:?}");
    assert_eq!(runs_of(&t, id).await.len(), 1);

    let next = db::resume_schedule(&t.pool, "beat").await.expect("resume").expect("a next slot");
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&t.pool).await.expect("now");
    assert!(next > first && next > now, "from the next slot after now: {next} (first {first}, now {now})");
    assert_eq!(db::resume_schedule(&t.pool, "beat").await.expect("resume again"), Some(next));
    let s = db::get_schedule(&t.pool, "beat").await.expect("schedule");
    assert!(s.enabled && s.paused_at.is_none() && s.pause_reason.is_none());

    let report = db::tick_schedules_at(&t.pool, next, 100).await.expect("tick after resume");
    assert_eq!((report.enqueued, report.caught_up), (1, 0), "slots passed while paused are not caught up");
    let runs = runs_of(&t, id).await;
    assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![first, next]);
    assert!(caught_up(&t, runs[1].2).await.is_empty());

    match db::pause_schedule(&t.pool, "bead", None).await {
        Err(Error::NotFound(m)) => assert!(m.contains("unknown schedule 'bead'") && m.contains("beat"), "{m}"),
        other => panic!("expected not found, got {other:?}"),
    }
    db::remove_schedule(&t.pool, "beat").await.expect("remove");
    assert_eq!(runs_of(&t, id).await.len(), 2, "its runs stay");
    assert!(matches!(db::remove_schedule(&t.pool, "beat").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_what_is_wrong_and_nothing_is_written() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    t.apply(
        "deploy",
        json!({"params": {"type": "object", "required": ["env"], "properties": {"env": {"type": "string"}}},
               "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    db::add_schedule(&t.pool, &every_second("taken")).await.expect("add");
    let with = |f: &dyn Fn(&mut NewSchedule)| {
        let mut s = every_second("nightly");
        f(&mut s);
        s
    };
    let cases: Vec<(NewSchedule, &[&str])> = vec![
        (
            with(&|s| s.cron = "61 * * * *".into()),
            &["cron expression '61 * * * *'", "minute field", "out of range (0-59)"],
        ),
        (with(&|s| s.cron = "* * * *".into()), &["needs 5 fields", "got 4"]),
        (with(&|s| s.cron = "*/0 * * * *".into()), &["step '0'"]),
        (with(&|s| s.cron = "0 3 * FOO *".into()), &["month field 'FOO'", "unknown name 'FOO'"]),
        (with(&|s| s.cron = "0 3 * * MON-SUNDAY".into()), &["day-of-week field", "unknown name 'SUNDAY'"]),
        (with(&|s| s.cron = "0 0 30 2 *".into()), &["matches no time in the next 8 years"]),
        (with(&|s| s.time_zone = Some("Europe/Pari".into())), &["unknown time zone 'Europe/Pari'", "'Europe/Paris'"]),
        (with(&|s| s.time_zone = Some("Mars/Olympus".into())), &["unknown time zone 'Mars/Olympus'", "IANA"]),
        (with(&|s| s.template = "nop".into()), &["unknown template 'nop'", "'noop'"]),
        (
            with(&|s| s.template = "deploy".into()),
            &["invalid params for template 'deploy'", "missing required param 'env'"],
        ),
        (
            with(&|s| {
                s.template = "deploy".into();
                s.params = json!({"env": 3});
            }),
            &["param 'env' must be string"],
        ),
        (with(&|s| s.priority = Some(500)), &["priority 500 is out of range"]),
        (with(&|s| s.name = "Nightly Backup".into()), &["invalid schedule name 'Nightly Backup'"]),
        (with(&|s| s.name = "taken".into()), &["schedule 'taken' exists"]),
    ];
    for (schedule, needles) in cases {
        let err = db::add_schedule(&t.pool, &schedule).await.expect_err(&format!("{schedule:?} must be refused"));
        let message = err.to_string();
        for needle in needles {
            assert!(message.contains(needle), "'{message}' should say '{needle}'");
        }
        match (&err, needles[0]) {
            (Error::NotFound(_), n) => assert!(n.starts_with("unknown template")),
            (Error::Conflict(_), n) => assert!(n.starts_with("schedule 'taken'")),
            (Error::Invalid { .. }, _) => {}
            (other, _) => panic!("unexpected error kind: {other:?}"),
        }
    }
    // An unknown lane, as psql would send it.
    let err = sqlx::query("SELECT runlane.add_schedule('nightly', 'noop', '@daily', 'UTC', '{}', 'E')")
        .execute(&t.pool)
        .await
        .map_err(Error::from)
        .expect_err("lane E");
    assert!(err.to_string().contains("unknown lane 'E'"), "{err}");

    assert_eq!(t.count("SELECT count(*) FROM runlane.schedules").await, 1, "only the first schedule");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 0, "checking a schedule enqueues nothing");
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_events").await, 0);
}

#[tokio::test]
async fn a_slot_the_template_no_longer_accepts_is_recorded_on_the_schedule_and_the_next_one_follows() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    db::add_schedule(&t.pool, &every_second("beat")).await.expect("add");
    let first = db::get_schedule(&t.pool, "beat").await.expect("schedule").next_due.expect("slot");
    // The template now requires a param the schedule does not give.
    t.apply(
        "noop",
        json!({"params": {"type": "object", "required": ["who"], "properties": {"who": {"type": "string"}}},
               "steps": [{"name": "noop", "kind": "noop"}]}),
    )
    .await;
    let report = db::tick_schedules_at(&t.pool, first, 100).await.expect("tick");
    assert_eq!(report.enqueued, 0);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!((report.failed[0].schedule.as_str(), report.failed[0].slot), ("beat", first));
    let s = db::get_schedule(&t.pool, "beat").await.expect("schedule");
    let error = s.last_error.expect("the refusal is kept");
    assert!(error.contains("missing required param 'who'"), "{error}");
    assert_eq!(s.next_due, Some(first + Duration::seconds(1)), "the schedule moves on");
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs").await, 0);
}

#[tokio::test]
async fn a_schedule_whose_slots_cannot_be_computed_is_paused_and_does_not_stall_the_others() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    db::add_schedule(&t.pool, &every_second("broken")).await.expect("add");
    db::add_schedule(&t.pool, &every_second("fine")).await.expect("add");
    // A zone the time zone database no longer has (as after an upgrade that dropped it).
    sqlx::query("UPDATE runlane.schedules SET time_zone = 'Atlantis/Capital' WHERE name = 'broken'")
        .execute(&t.pool)
        .await
        .expect("break it");
    let due: DateTime<Utc> =
        sqlx::query_scalar("SELECT max(next_due) FROM runlane.schedules").fetch_one(&t.pool).await.expect("due");
    let report = db::tick_schedules_at(&t.pool, due, 100).await.expect("tick");
    assert_eq!(report.enqueued, 1, "the other schedule's slot: {report:?}");
    assert_eq!(report.failed.iter().map(|f| f.schedule.as_str()).collect::<Vec<_>>(), ["broken"]);
    let broken = db::get_schedule(&t.pool, "broken").await.expect("schedule");
    assert!(!broken.enabled, "paused");
    let reason = broken.pause_reason.expect("why");
    assert!(reason.contains("its slots cannot be computed") && reason.contains("Atlantis/Capital"), "{reason}");
    assert_eq!(broken.paused_by.as_deref(), Some("runlane"));
    let again = db::tick_schedules_at(&t.pool, due + Duration::seconds(1), 100).await.expect("tick");
    assert!(again.failed.is_empty(), "{again:?}");
}

/// Runs `sql` as `role` on a fresh connection; the SQLSTATE of its error, or None.
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
async fn operators_manage_schedules_viewers_read_them_without_params_and_workers_only_tick() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let add = |name: &str| format!("SELECT runlane.add_schedule('{name}', 'noop', '@hourly')");
    let denied = Some("42501".to_string());
    assert_eq!(as_role(&t, "runlane_viewer", &add("v")).await, denied, "a viewer cannot add a schedule");
    assert_eq!(as_role(&t, "runlane_worker", &add("w")).await, denied);
    assert_eq!(as_role(&t, "runlane_operator", &add("o")).await, None);
    for role in ["runlane_viewer", "runlane_worker"] {
        for call in ["pause_schedule('o')", "resume_schedule('o')", "remove_schedule('o')"] {
            assert_eq!(as_role(&t, role, &format!("SELECT runlane.{call}")).await, denied, "{role}: {call}");
        }
    }
    let read = "SELECT name, next_due FROM runlane.schedules";
    assert_eq!(as_role(&t, "runlane_viewer", read).await, None);
    assert_eq!(as_role(&t, "runlane_viewer", "SELECT * FROM runlane.list_schedules()").await, None);
    assert_eq!(as_role(&t, "runlane_viewer", "SELECT * FROM runlane.schedule_slots('o')").await, None);
    assert_eq!(as_role(&t, "runlane_viewer", "SELECT params FROM runlane.schedules").await, denied, "secrets");
    assert_eq!(as_role(&t, "runlane_worker", read).await, denied);
    let tick = "SELECT runlane.tick_schedules()";
    assert_eq!(as_role(&t, "runlane_worker", tick).await, None);
    assert_eq!(as_role(&t, "runlane_operator", tick).await, denied);
    let moved = "SELECT runlane.tick_schedules_at(now() + interval '1 day')";
    for role in ["runlane_worker", "runlane_operator", "runlane_viewer"] {
        assert_eq!(as_role(&t, role, moved).await, denied, "only the owner moves the tick's clock ({role})");
        assert_eq!(as_role(&t, role, "UPDATE runlane.schedules SET enabled = false").await, denied, "{role}");
    }
    assert_eq!(as_role(&t, "runlane_operator", "SELECT runlane.pause_schedule('o')").await, None);
    assert!(!db::get_schedule(&t.pool, "o").await.expect("schedule").enabled);
}

#[tokio::test]
async fn list_schedules_masks_the_values_of_secret_params() {
    let t = TestDb::new().await;
    t.apply(
        "rotate",
        json!({"params": {"type": "object", "properties": {"token": {"type": "string", "secret": true},
                                                           "env": {"type": "string"}}},
               "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let s = NewSchedule {
        name: "rotate-keys".into(),
        template: "rotate".into(),
        cron: "0 4 * * SUN".into(),
        time_zone: Some("europe/paris".into()),
        params: json!({"token": "s3cret", "env": "prod"}),
        ..Default::default()
    };
    db::add_schedule(&t.pool, &s).await.expect("add");
    let listed = db::list_schedules(&t.pool).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].params, json!({"token": "***", "env": "prod"}));
    assert_eq!(listed[0].time_zone, "Europe/Paris", "the zone's name as the time zone database spells it");
    let slots = db::schedule_slots(&t.pool, "rotate-keys", 3).await.expect("slots");
    assert_eq!(slots.len(), 3);
    for slot in &slots {
        assert_eq!(slot.format("%H:%M:%S").to_string(), "04:00:00", "local wall-clock time: {slot}");
        assert!(["+01:00", "+02:00"].contains(&slot.offset().to_string().as_str()), "{slot}");
    }
}

#[tokio::test]
async fn one_tick_at_a_time_a_second_leader_is_skipped_while_the_first_holds_the_lock() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let id = db::add_schedule(&t.pool, &every_second("beat")).await.expect("add");
    let first = db::get_schedule(&t.pool, "beat").await.expect("schedule").next_due.expect("slot");

    // The first leader's tick, its transaction still open (as if it were slow, or about to lose its
    // connection: a transaction-scoped lock is gone with the transaction).
    let mut leader = t.pool.begin().await.expect("begin");
    let report = db::tick_schedules_at(&mut *leader, first, 100).await.expect("first tick");
    assert_eq!((report.skipped, report.enqueued), (false, 1));
    let other = db::tick_schedules_at(&t.pool, first, 100).await.expect("second tick");
    assert!(other.skipped, "the lock is held: {other:?}");
    leader.rollback().await.expect("the first leader goes away");

    let report = db::tick_schedules_at(&t.pool, first, 100).await.expect("tick after");
    assert_eq!((report.skipped, report.enqueued), (false, 1), "its slot was not enqueued: now it is");
    let mut leader = t.pool.begin().await.expect("begin");
    assert_eq!(db::tick_schedules_at(&mut *leader, first, 100).await.expect("tick").enqueued, 0);
    leader.commit().await.expect("commit");
    assert_eq!(runs_of(&t, id).await.len(), 1, "one run for the slot");
}
