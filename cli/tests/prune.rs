//! `runlane prune`: `--dry-run --json` counts, template by template, exactly what the prune then
//! deletes, and writes nothing; a viewer's login may look but not prune; an operator's prunes.

use chrono::Duration;
use runlane_core::db;
use runlane_core::model::{Lane, PruneReport};
use runlane_core::retention::PrunePreview;
use runlane_tests::TestDb;
use runlane_tests::retention::*;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// `runlane ARGS…` against `url`: (succeeded, stdout, stderr).
fn runlane(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).env("DATABASE_URL", url).output().expect("runlane");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A URL for a new login holding the fleet's `role` (viewer, operator …).
async fn login(t: &TestDb, role: &str) -> String {
    let fleet_role: String =
        sqlx::query_scalar("SELECT runlane.fleet_role($1)").bind(role).fetch_one(&t.pool).await.expect("role");
    let name = format!("{role}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {name} LOGIN IN ROLE {fleet_role}")))
        .execute(&t.pool)
        .await
        .expect("login");
    let (scheme_user, rest) = t.url.split_once('@').expect("url has a user");
    let scheme = scheme_user.split_once("//").expect("scheme").0;
    format!("{scheme}//{name}@{rest}")
}

/// A preview's entry: template, versions, retention_s, retention_from, runs, artifacts, stored bytes.
type Entry<'a> = (&'a str, Vec<i32>, i64, &'a str, u64, u64, u64);

fn preview_of(stdout: &str) -> PrunePreview {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("a preview: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_dry_run_counts_what_prune_then_deletes_and_writes_nothing() {
    let t = TestDb::new().await;
    apply_kept(&t, "hourly", Some(3_600)).await;
    apply_kept(&t, "monthly", Some(30 * 86_400)).await;
    apply_kept(&t, "plain", None).await; // the fleet's week
    let (store, dir) = local_store("prune-cli");
    let worker = t.register(&[Lane::A], 60_000).await;
    let both: &[(&str, usize)] = &[("notes.txt", 100), ("dump.bin", 300_000)];
    let large: &[(&str, usize)] = &[("dump.bin", 400_000)];
    for (template, arts, end, age) in [
        ("hourly", both, End::Succeeded, Duration::hours(2)),
        ("monthly", large, End::Cancelled, Duration::days(31)),
        ("plain", &both[..1], End::Failed, Duration::days(8)),
        ("hourly", both, End::Succeeded, Duration::minutes(30)),
        ("monthly", large, End::Succeeded, Duration::days(10)),
        ("plain", both, End::Failed, Duration::days(6)),
    ] {
        finished_run(&t, worker, template, &store, arts, end, age).await;
    }
    let old_session = db::create_session(&t.pool, "last month").await.expect("session");
    sqlx::query("UPDATE runlane.sessions SET created_at = now() - interval '30 days' WHERE id = $1")
        .bind(old_session)
        .execute(&t.pool)
        .await
        .expect("age the session");
    let gone = t.register(&[Lane::D], 60_000).await;
    sqlx::query("UPDATE runlane.workers SET state = 'gone', last_seen_at = now() - interval '30 days' WHERE id = $1")
        .bind(gone)
        .execute(&t.pool)
        .await
        .expect("a worker long gone");
    let before = row_counts(&t).await;

    let (ok, stdout, stderr) = runlane(&t.url, &["prune", "--dry-run", "--json"]);
    assert!(ok, "{stderr}");
    let preview = preview_of(&stdout);
    let per_template: Vec<Entry> = preview
        .templates
        .iter()
        .map(|e| {
            (
                e.template.as_str(),
                e.versions.clone(),
                e.retention_s,
                e.retention_from.as_str(),
                e.runs,
                e.artifacts,
                e.stored_bytes,
            )
        })
        .collect();
    assert_eq!(
        per_template,
        [
            ("hourly", vec![1], 3_600, "template", 1, 2, 300_000),
            ("monthly", vec![1], 30 * 86_400, "template", 1, 1, 400_000),
            ("plain", vec![1], 7 * 86_400, "fleet", 1, 1, 0),
        ]
    );
    assert_eq!((preview.runs, preview.stored_objects, preview.workers, preview.sessions), (3, 2, 1, 1));
    assert_eq!(row_counts(&t).await, before, "a dry run writes nothing");

    let (ok, text, stderr) = runlane(&t.url, &["prune", "--dry-run"]);
    assert!(ok, "{stderr}");
    let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
    assert!(line("hourly ").contains("1h (template)") && line("plain ").contains("7d (fleet)"), "{text}");
    assert!(text.contains("would delete 3 runs,") && text.contains("(2 stored objects, 700000 bytes)"), "{text}");

    let viewer = login(&t, "viewer").await;
    let (ok, stdout, stderr) = runlane(&viewer, &["prune", "--dry-run", "--json"]);
    assert!(ok, "a viewer may look: {stderr}");
    assert_eq!(preview_of(&stdout).templates, preview.templates);
    let (ok, _, stderr) = runlane(&viewer, &["prune"]);
    assert!(
        !ok && stderr.contains("a viewer may only --dry-run") && stderr.contains("permission denied"),
        "a viewer cannot prune: {stderr}"
    );
    assert_eq!(row_counts(&t).await, before, "nothing went");

    let operator = login(&t, "operator").await;
    let (ok, stdout, stderr) = runlane(&operator, &["prune", "--json"]);
    assert!(ok, "{stderr}");
    let report: PruneReport = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let after = row_counts(&t).await;
    let gone_rows = |i: usize| (before[i] - after[i]) as u64;
    assert_eq!(
        [
            gone_rows(0),
            gone_rows(1),
            gone_rows(2),
            gone_rows(3),
            (after[4] - before[4]) as u64,
            gone_rows(5),
            gone_rows(6)
        ],
        [
            preview.runs,
            preview.events,
            preview.steps,
            preview.artifacts,
            preview.stored_objects,
            preview.workers,
            preview.sessions
        ],
        "the preview counted what the prune deleted (stored objects: queued for the store's holder)"
    );
    assert_eq!(
        [
            report.pruned,
            report.events_pruned,
            report.steps_pruned,
            report.artifacts_pruned,
            report.stored_objects,
            report.stored_bytes,
            report.workers_pruned,
            report.sessions_pruned
        ],
        [
            preview.runs,
            preview.events,
            preview.steps,
            preview.artifacts,
            preview.stored_objects,
            preview.stored_bytes,
            preview.workers,
            preview.sessions
        ],
        "{report:?}"
    );
    assert!(preview.events >= 3 && preview.steps >= 2, "the counts are of real rows: {preview:?}");

    let (ok, stdout, _) = runlane(&t.url, &["prune", "--dry-run", "--json"]);
    assert!(ok);
    let again = preview_of(&stdout);
    assert_eq!((again.runs, again.templates.len()), (0, 0), "nothing past its retention is left");
    let (ok, text, _) = runlane(&t.url, &["prune", "--dry-run"]);
    assert!(ok && text.contains("no finished run is past its retention"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
