//! `runlane lanes`: pause, resume, list, history and aging from the command line; and the emergency stop
//! with `--cancel-running` against real worker processes (over PostgreSQL and over the executor
//! API): every running run ends cancelled with its processes gone, the queued run waits in its
//! paused lane, and a resume lets it run.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::process::{Fleet, PATIENCE, processes_in_group, wait_until};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// `runlane lanes ARGS…` against the test's database: (success, stdout, stderr).
fn lanes(t: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("lanes").args(args).env("DATABASE_URL", &t.url).output().expect("runlane lanes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_pause_resume_list_and_history_from_the_command_line() {
    let t = TestDb::new().await;
    let me: String = sqlx::query_scalar("SELECT session_user::text").fetch_one(&t.pool).await.expect("user");

    let (ok, stdout, stderr) = lanes(&t, &["pause", "b", "--reason", "canary failing"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("lane B paused (since ") && stdout.contains(&format!("by {me}: canary failing")),
        "{stdout}"
    );
    let (_, stdout, _) = lanes(&t, &["pause", "B", "--reason", "again"]);
    assert!(stdout.starts_with("lane B was already paused"), "{stdout}");

    let (ok, stdout, _) = lanes(&t, &["--json"]);
    assert!(ok);
    let listed = json_lines(&stdout);
    assert_eq!(listed.len(), 4);
    let b = &listed[1];
    assert_eq!(
        (&b["lane"], &b["paused"], &b["paused_by"], &b["pause_reason"]),
        (&json!("B"), &json!(true), &json!(me), &json!("canary failing"))
    );
    assert_eq!(listed[0]["paused"], false);
    let (_, text, _) = lanes(&t, &[]);
    let b_line = text.lines().find(|l| l.starts_with("B ")).expect("lane B's line");
    assert!(b_line.contains("paused since") && b_line.ends_with(&format!("by {me}: canary failing")), "{text}");
    assert!(text.lines().find(|l| l.starts_with("A ")).expect("lane A").ends_with("open"), "{text}");

    for (args, needle) in [
        (&["pause", "E", "--reason", "x"][..], "unknown lane 'E'"),
        (&["pause", "B"][..], "--reason"),
        (&["resume", "B", "--reason", " "][..], "a reason is required"),
        (&["stop"][..], "--reason"),
    ] {
        let (ok, _, stderr) = lanes(&t, args);
        assert!(!ok && stderr.contains(needle), "{args:?}: {stderr}");
    }

    let (ok, stdout, _) = lanes(&t, &["resume", "B", "--reason", "canary green", "--json"]);
    assert!(ok);
    let resumed: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!((&resumed["paused"], &resumed["changed"]), (&json!(false), &json!(true)));
    let (ok, stdout, _) = lanes(&t, &["history", "--lane", "B", "--json"]);
    assert!(ok);
    let seen: Vec<(String, String, String)> = json_lines(&stdout)
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").into(),
                e["actor"].as_str().unwrap_or("").into(),
                e["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("resume".into(), me.clone(), "canary green".into()), ("pause".into(), me.clone(), "canary failing".into())]
    );
    let (_, text, _) = lanes(&t, &["history"]);
    let pause_line = text.lines().find(|l| l.contains(" pause B ")).expect("the pause's line");
    assert!(pause_line.ends_with(&format!("by {me}: canary failing")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_stop_with_cancel_leaves_nothing_running() {
    emergency_stop_leaves_nothing_running(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_stop_with_cancel_leaves_nothing_running_on_http_workers() {
    emergency_stop_leaves_nothing_running(true).await;
}

async fn emergency_stop_leaves_nothing_running(http: bool) {
    let t = TestDb::new().await;
    t.apply(
        "hold",
        json!({"steps": [
            {"name": "hold", "kind": "shell", "command": "echo pgid $$; sleep 300"},
            {"name": "cleanup", "kind": "shell", "always": true, "command": "echo cleaned up"}
        ]}),
    )
    .await;
    t.apply("quick", json!({"steps": [{"name": "s", "kind": "shell", "command": "echo done"}]})).await;
    let fleet = Fleet::of(Path::new(BIN), &t, http).await;
    // Three slots: the three held runs fill them; once they are cancelled the worker has room again.
    let _w = fleet.worker(Path::new(BIN), "stopper", &[("RUNLANE__WORKER__SLOTS", "3")]);
    let mut held = Vec::new();
    for lane in [Lane::A, Lane::B, Lane::C] {
        held.push(t.enqueue("hold", lane).await);
    }
    let mut groups = Vec::new();
    for run in &held {
        let line = wait_until("the step to print its process group", PATIENCE, || async {
            let events = db::read_events(&t.pool, *run, 0, 100).await.expect("events");
            events.into_iter().find_map(|e| e.body.filter(|b| b.starts_with("pgid ")))
        })
        .await;
        let pgid: u32 = line.trim_start_matches("pgid ").trim().parse().expect("pgid");
        assert!(processes_in_group(pgid) >= 1, "the step runs");
        groups.push(pgid);
    }
    let waiting = t.enqueue("quick", Lane::D).await;
    assert_eq!(t.status(waiting).await, "queued", "every slot is taken");

    let (ok, stdout, stderr) = lanes(&t, &["stop", "--reason", "incident 9", "--cancel-running", "--json"]);
    assert!(ok, "{stderr}");
    let stop: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!((&stop["paused"], &stop["cancel_requested"]), (&json!(["A", "B", "C", "D"]), &json!(3)));

    for run in &held {
        let rec = wait_until("the run to end", PATIENCE, || async {
            let rec = db::get_run(&t.pool, *run).await.expect("run");
            (rec.status != "running").then_some(rec)
        })
        .await;
        assert_eq!(rec.status, "cancelled", "{rec:?}");
        let events = db::read_events(&t.pool, *run, 0, 1000).await.expect("events");
        assert!(events.iter().any(|e| e.body.as_deref() == Some("cleaned up")), "the always step ran");
    }
    for pgid in groups {
        wait_until("the step's processes to be gone", PATIENCE, || async {
            (processes_in_group(pgid) == 0).then_some(())
        })
        .await;
    }
    assert_eq!(t.count("SELECT count(*) FROM runlane.runs WHERE status = 'running'").await, 0, "nothing runs");

    // The queued run waited in its paused lane, with free slots beside it, until the resume.
    let (ok, _, stderr) = lanes(&t, &["resume", "D", "--reason", "all clear"]);
    assert!(ok, "{stderr}");
    let resumed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT at FROM runlane.lane_events WHERE action = 'resume' AND lane = 'D'")
            .fetch_one(&t.pool)
            .await
            .expect("the resume is recorded");
    let rec = wait_until("the resumed lane's run to finish", PATIENCE, || async {
        let rec = db::get_run(&t.pool, waiting).await.expect("run");
        (rec.status != "queued" && rec.status != "running").then_some(rec)
    })
    .await;
    assert_eq!(rec.status, "succeeded", "{rec:?}");
    assert!(rec.claimed_at.expect("claimed") >= resumed_at, "claimed after the resume, not before: {rec:?}");
    let stops =
        t.count("SELECT count(*) FROM runlane.lane_events WHERE action = 'stop' AND reason = 'incident 9'").await;
    assert_eq!(stops, 1, "the stop is recorded");
}

#[tokio::test]
async fn lanes_aging_from_the_command_line() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    t.enqueue("noop", Lane::C).await;
    let (ok, stdout, stderr) = lanes(&t, &["aging", "c", "--per-point", "1.5s"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "lane C ages its runs: one priority point per 1500ms of waiting; a priority -100 run is passed only by runs \
         that became claimable less than 5m after it (1 waiting or running runs took the rate)"
    );
    let (_, text, _) = lanes(&t, &[]);
    let c_line = text.lines().find(|l| l.starts_with("C ")).expect("lane C's line");
    assert!(c_line.contains(" 1500ms/pt ") && c_line.ends_with("open"), "{text}");
    assert!(text.lines().next().unwrap_or("").contains("AGING"), "{text}");
    let (ok, stdout, _) = lanes(&t, &["--json"]);
    assert!(ok);
    assert_eq!(json_lines(&stdout)[2]["aging_ms_per_point"], json!(1500));

    let (ok, stdout, _) = lanes(&t, &["aging", "C", "--off", "--json"]);
    assert!(ok);
    let off: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(off, json!({"lane": "C", "aging_ms_per_point": null, "rekeyed": 1}));
    for (args, needle) in [
        (&["aging", "C"][..], "--per-point"),
        (&["aging", "C", "--per-point", "1s", "--off"][..], "cannot be used with"),
        (&["aging", "C", "--per-point", "2d"][..], "not a duration"),
        (&["aging", "C", "--per-point", "25h"][..], "out of range"),
        (&["aging", "E", "--per-point", "1s"][..], "unknown lane 'E'"),
    ] {
        let (ok, _, stderr) = lanes(&t, args);
        assert!(!ok && stderr.contains(needle), "{args:?}: {stderr}");
    }
}
