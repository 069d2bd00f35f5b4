//! `runlane schedules add|list|show|pause|resume|rm` and `runlane enqueue --run-at` against a real
//! database: what an operator types, and the messages bad input gets.

use runlane_core::db;
use runlane_core::model::RunId;
use runlane_tests::TestDb;
use serde_json::Value;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

fn runlane(t: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("DATABASE_URL", &t.url).env("RUNLANE_LOG", "warn").output().expect("runlane")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON on stdout")
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_added_listed_shown_paused_resumed_and_removed() {
    let t = TestDb::new().await;
    t.apply(
        "backup",
        serde_json::json!({"params": {"type": "object", "required": ["db"], "properties": {"db": {"type": "string"}}},
                           "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let add = ["schedules", "add", "nightly", "--template", "backup", "--cron", "30 2 * * *", "--tz", "Europe/Paris"];
    let added =
        json(&runlane(&t, &[&add[..], &["--lane", "B", "--priority", "-5", "-p", "db=orders", "--json"]].concat()));
    assert_eq!(
        (added["name"].as_str(), added["lane"].as_str(), added["priority"].as_i64()),
        (Some("nightly"), Some("B"), Some(-5))
    );
    assert_eq!(added["params"]["db"], "orders");
    for slot in added["next_slots"].as_array().expect("slots") {
        assert!(slot.as_str().is_some_and(|s| s.contains("T02:30:00+0") || s.contains("T03:30:00+02:00")), "{slot}");
    }

    let list = json(&runlane(&t, &["schedules", "list", "--json"]));
    assert_eq!(list["schedules"].as_array().map(Vec::len), Some(1));
    let table = ok(&runlane(&t, &["schedules", "list"]));
    assert!(table.contains("nightly") && table.contains("Europe/Paris") && table.contains("enabled"), "{table}");

    ok(&runlane(&t, &["schedules", "pause", "nightly", "--reason", "restore drill"]));
    let shown = json(&runlane(&t, &["schedules", "show", "nightly", "--json"]));
    assert_eq!((shown["enabled"].as_bool(), shown["pause_reason"].as_str()), (Some(false), Some("restore drill")));
    let text = ok(&runlane(&t, &["schedules", "show", "nightly"]));
    assert!(text.contains("paused") && text.contains("restore drill") && text.contains("next slots:"), "{text}");
    let resumed = ok(&runlane(&t, &["schedules", "resume", "nightly"]));
    assert!(resumed.contains("resumed; next slot"), "{resumed}");
    assert!(db::get_schedule(&t.pool, "nightly").await.expect("schedule").enabled);

    ok(&runlane(&t, &["schedules", "rm", "nightly"]));
    let err = refused(&runlane(&t, &["schedules", "show", "nightly"]));
    assert!(err.contains("unknown schedule 'nightly'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_with_a_message_naming_the_problem() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let add = |extra: &[&str]| {
        let base = ["schedules", "add", "s", "--template", "noop", "--cron"];
        runlane(&t, &[&base[..], extra].concat())
    };
    for (args, needle) in [
        (&["0 9 * * MON-FRY"][..], "day-of-week field 'MON-FRY': unknown name 'FRY'"),
        (&["0 9 * *"][..], "needs 5 fields"),
        (
            &["0 9 * * *", "--tz", "Europe/Pariss"][..],
            "unknown time zone 'Europe/Pariss' (did you mean 'Europe/Paris'?)",
        ),
        (&["0 9 * * *", "--priority", "300"][..], "priority 300 is out of range"),
    ] {
        let err = refused(&add(args));
        assert!(err.contains(needle), "'{err}' should say '{needle}'");
    }
    let err = refused(&runlane(&t, &["schedules", "add", "t", "--template", "noope", "--cron", "@daily"]));
    assert!(err.contains("unknown template 'noope'") && err.contains("'noop'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_run_at_waits_as_scheduled_until_then() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let later = "2099-12-24T06:00:00Z";
    let out = runlane(&t, &["enqueue", "noop", "--lane", "D", "--run-at", later]);
    let run: RunId = ok(&out).trim().parse::<uuid::Uuid>().map(RunId).expect("a run id");
    let rec = db::get_run(&t.pool, run).await.expect("run");
    assert_eq!((rec.status.as_str(), rec.run_at.to_rfc3339()), ("scheduled", "2099-12-24T06:00:00+00:00".to_string()));
    let err = refused(&runlane(&t, &["enqueue", "noop", "--run-at", "tomorrow"]));
    assert!(err.contains("--run-at"), "{err}");
}
