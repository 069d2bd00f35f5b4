//! Retention: each finished run is pruned after its template version's retention, or the fleet's
//! where the template sets none, with its events, steps and artifacts; a run that is not finished is
//! never pruned; the objects of pruned artifacts leave the object store (the sweeper's prune round);
//! the preview counts what a prune then deletes; viewers may preview but not prune.

use chrono::Duration;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::retention::PrunePreview;
use runlane_tests::TestDb;
use runlane_tests::process::wait_until;
use runlane_tests::retention::*;
use sqlx::{Connection, PgConnection};
use std::collections::BTreeSet;
use std::sync::Arc;

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// Prunes as of now with `limit` runs a call until no more waits, checking each call kept to it.
async fn prune_in_chunks(t: &TestDb, limit: u32) -> PruneReport {
    let mut total = PruneReport::default();
    loop {
        let opts = PruneOptions { limit: Some(limit), ..Default::default() };
        let report = db::prune_at(&t.pool, &opts).await.expect("prune");
        assert!(!report.skipped && report.pruned <= u64::from(limit), "{report:?}");
        total.add(&report);
        if !report.more {
            return total;
        }
    }
}

async fn run_ids(t: &TestDb) -> BTreeSet<RunId> {
    sqlx::query_scalar("SELECT id FROM runlane.runs").fetch_all(&t.pool).await.expect("runs").into_iter().collect()
}

/// (template, versions, retention_s, retention_from, runs) of each entry of a preview.
fn entries(p: &PrunePreview) -> Vec<(String, Vec<i32>, i64, String, u64)> {
    p.templates
        .iter()
        .map(|e| (e.template.clone(), e.versions.clone(), e.retention_s, e.retention_from.clone(), e.runs))
        .collect()
}

#[tokio::test]
async fn each_finished_run_is_kept_for_its_template_versions_retention_or_the_fleets() {
    let t = TestDb::new().await;
    let week = SweepPolicyChange { retention_s: Some(7 * DAY as u64), ..Default::default() };
    db::set_sweep_policy(&t.pool, &week).await.expect("fleet retention");
    apply_kept(&t, "hourly", Some(HOUR)).await;
    apply_kept(&t, "monthly", Some(30 * DAY)).await;
    apply_kept(&t, "plain", None).await;
    let (store, dir) = local_store("retention-sql");
    let worker = t.register(&[Lane::A], 60_000).await;
    let arts: &[(&str, usize)] = &[("small.txt", 10), ("large.bin", 300_000)];
    let run = |template: &'static str, end: End, age: Duration| {
        let (t, store) = (&t, &store);
        async move { finished_run(t, worker, template, store, arts, end, age).await }
    };

    let hourly_old = run("hourly", End::Succeeded, Duration::hours(2)).await;
    let hourly_new = run("hourly", End::Failed, Duration::minutes(30)).await;
    let monthly_old = run("monthly", End::Cancelled, Duration::days(31)).await;
    let monthly_mid = run("monthly", End::Succeeded, Duration::days(10)).await; // past the fleet's week
    let plain_old = run("plain", End::Failed, Duration::days(8)).await;
    let plain_new = run("plain", End::Succeeded, Duration::days(6)).await;
    // A newer version of `hourly` that sets no retention: its runs are kept for the fleet's week.
    assert_eq!(apply_kept(&t, "hourly", None).await, 2);
    let hourly_v2 = run("hourly", End::Cancelled, Duration::hours(2)).await;
    let expired = [hourly_old, monthly_old, plain_old];
    let kept = [hourly_new, monthly_mid, plain_new, hourly_v2];

    let preview = db::prune_preview(&t.pool, None, None).await.expect("preview");
    assert_eq!(
        entries(&preview),
        [
            ("hourly".into(), vec![1], HOUR, "template".into(), 1),
            ("monthly".into(), vec![1], 30 * DAY, "template".into(), 1),
            ("plain".into(), vec![1], 7 * DAY, "fleet".into(), 1),
        ],
        "{preview:?}"
    );
    let kept_events = rows_of(&t, "run_events", &kept).await;
    let before = row_counts(&t).await;

    let report = prune_in_chunks(&t, 1).await;
    assert_eq!(run_ids(&t).await, kept.into_iter().collect(), "exactly the expired runs went: {report:?}");
    for table in ["run_events", "run_steps", "artifacts"] {
        assert_eq!(rows_of(&t, table, &expired).await, 0, "{table} of pruned runs");
    }
    assert_eq!(rows_of(&t, "run_events", &kept).await, kept_events, "kept runs keep their history");
    let after = row_counts(&t).await;
    assert_eq!(
        (report.pruned, report.events_pruned, report.steps_pruned, report.artifacts_pruned),
        (3, (before[1] - after[1]) as u64, (before[2] - after[2]) as u64, 6),
        "the report counts what went"
    );
    assert_eq!((report.stored_objects, report.stored_bytes), (3, 900_000));
    assert_eq!(
        (preview.runs, preview.events, preview.steps, preview.artifacts, preview.stored_objects, preview.stored_bytes),
        (
            report.pruned,
            report.events_pruned,
            report.steps_pruned,
            report.artifacts_pruned,
            report.stored_objects,
            report.stored_bytes
        ),
        "the preview counted what the prune deleted"
    );
    assert_eq!(after[4] - before[4], 3, "each stored object is queued for deletion from the store");

    // A retention given in the owner's call stands in for the fleet's, not for a template's own.
    let five_days = PruneOptions { retention_s: Some(5 * DAY as u64), ..Default::default() };
    assert_eq!(db::prune_at(&t.pool, &five_days).await.expect("prune").pruned, 1);
    assert_eq!(run_ids(&t).await, [hourly_new, monthly_mid, hourly_v2].into_iter().collect());

    // The fleet's retention, as workers prune by it (prune()): an hour now.
    let hour = SweepPolicyChange { retention_s: Some(HOUR as u64), ..Default::default() };
    db::set_sweep_policy(&t.pool, &hour).await.expect("fleet retention");
    assert_eq!(db::prune(&t.pool).await.expect("prune").pruned, 1);
    assert_eq!(run_ids(&t).await, [hourly_new, monthly_mid].into_iter().collect(), "monthly keeps its 30 days");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_run_that_is_not_finished_is_never_pruned_however_old() {
    let t = TestDb::new().await;
    apply_kept(&t, "brief", Some(60)).await;
    let (store, dir) = local_store("retention-live");
    let worker = t.register(&[Lane::A, Lane::B, Lane::C], 60_000).await;
    let enqueue = |lane: Lane, run_at: Option<chrono::DateTime<chrono::Utc>>| {
        let req = EnqueueRequest {
            template: "brief".into(),
            params: serde_json::json!({}),
            lane: Some(lane),
            run_at,
            ..Default::default()
        };
        let pool = t.pool.clone();
        async move { db::enqueue_run(&pool, &req).await.expect("enqueue") }
    };
    let queued = enqueue(Lane::B, None).await;
    let scheduled = enqueue(Lane::B, Some(chrono::Utc::now() + Duration::days(1))).await;
    let running = enqueue(Lane::C, None).await;
    let cancelling = enqueue(Lane::C, None).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::C], 2, None).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(db::cancel_run(&t.pool, cancelling, Some("stop")).await.expect("cancel"), "cancel_requested");
    // Finished once, retried: queued again. And a finished run beside them, which the prune deletes.
    let retried = finished_run(&t, worker, "brief", &store, &[], End::Failed, Duration::days(1)).await;
    let done = finished_run(&t, worker, "brief", &store, &[], End::Succeeded, Duration::days(1)).await;
    db::retry_run(&t.pool, retried).await.expect("retry");
    let live = [queued, scheduled, running, cancelling, retried];
    // Older than any retention by every clock: created, due and even "finished" ten years ago.
    sqlx::query(
        "UPDATE runlane.runs SET created_at = now() - interval '10 years', run_at = least(run_at, now()) - interval '10 years',
                                 finished_at = now() - interval '10 years'
         WHERE id = ANY($1) AND status <> 'scheduled'",
    )
    .bind(&live[..])
    .execute(&t.pool)
    .await
    .expect("age the runs");
    sqlx::query("UPDATE runlane.runs SET created_at = now() - interval '10 years', finished_at = now() - interval '10 years' WHERE id = $1")
        .bind(scheduled)
        .execute(&t.pool)
        .await
        .expect("age the scheduled run");
    let statuses = |ids: Vec<RunId>| {
        let t = &t;
        async move {
            let mut s = Vec::new();
            for id in ids {
                s.push(t.status(id).await);
            }
            s
        }
    };
    let before = statuses(live.to_vec()).await;
    assert_eq!(before, ["queued", "scheduled", "running", "running", "queued"]);
    let events_before = rows_of(&t, "run_events", &live).await;

    let much_later = Some(chrono::Utc::now() + Duration::days(365 * 100));
    let preview = db::prune_preview(&t.pool, much_later, Some(0)).await.expect("preview");
    assert_eq!(preview.runs, 1, "only the finished run: {preview:?}");
    let everything = PruneOptions { now: much_later, retention_s: Some(0), ..Default::default() };
    let report = db::prune_at(&t.pool, &everything).await.expect("prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    assert_eq!(run_ids(&t).await, live.into_iter().collect(), "the finished run went ({done}), no other");
    assert_eq!(statuses(live.to_vec()).await, before);
    assert_eq!(rows_of(&t, "run_events", &live).await, events_before, "their history is whole");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweepers_prune_deletes_pruned_artifacts_files_and_inline_ones_go_with_the_row() {
    let t = TestDb::new().await;
    apply_kept(&t, "hourly", Some(HOUR)).await;
    apply_kept(&t, "plain", None).await;
    let (store, dir) = local_store("retention-files");
    let worker = t.register(&[Lane::A], 60_000).await;
    let arts: &[(&str, usize)] = &[("notes.txt", 100), ("dump.bin", 300_000)];
    let expired = finished_run(&t, worker, "hourly", &store, arts, End::Succeeded, Duration::hours(2)).await;
    let kept = finished_run(&t, worker, "plain", &store, arts, End::Succeeded, Duration::days(1)).await;
    let key_of = |run: RunId| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT store_key FROM runlane.artifacts WHERE run_id = $1 AND store_key IS NOT NULL",
            )
            .bind(run)
            .fetch_one(&pool)
            .await
            .expect("store key")
        }
    };
    let (expired_file, kept_file) = (dir.join(key_of(expired).await), dir.join(key_of(kept).await));
    assert!(expired_file.is_file() && kept_file.is_file());
    assert_eq!(files_under(&dir).len(), 2, "the inline artifacts are not files");
    let inline: i64 = sqlx::query_scalar("SELECT count(*) FROM runlane.artifacts WHERE inline_data IS NOT NULL")
        .fetch_one(&t.pool)
        .await
        .expect("inline");
    assert_eq!(inline, 2);

    // The sweeper loop a worker (or the API) runs: prune by the fleet's policy, then delete the objects.
    let stop = tokio_util::sync::CancellationToken::new();
    let sweeping = runlane_core::settings::SweeperSettings { enabled: true, interval_ms: 50, prune_interval_ms: 50 };
    let metrics = Arc::new(runlane_worker::metrics::Metrics::default());
    let sweeper = tokio::spawn(runlane_worker::sweeper::run(t.pool.clone(), store, sweeping, metrics, stop.clone()));
    wait_until("the expired run's file to leave the store", std::time::Duration::from_secs(30), || async {
        (!expired_file.exists()).then_some(())
    })
    .await;
    stop.cancel();
    sweeper.await.expect("sweeper");

    assert_eq!(run_ids(&t).await, [kept].into_iter().collect());
    assert_eq!(rows_of(&t, "artifacts", &[expired]).await, 0, "its inline artifact went with the row");
    assert_eq!(files_under(&dir), [kept_file], "the kept run's file stays");
    assert_eq!(t.count("SELECT count(*) FROM runlane.doomed_objects").await, 0, "nothing left to delete");
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `sql` as `role`; the SQLSTATE of its error, if any.
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
async fn viewers_and_operators_may_preview_only_workers_and_operators_prune() {
    let t = TestDb::new().await;
    apply_kept(&t, "hourly", Some(HOUR)).await;
    let (store, dir) = local_store("retention-roles");
    let worker = t.register(&[Lane::A], 60_000).await;
    let expired = finished_run(&t, worker, "hourly", &store, &[], End::Succeeded, Duration::hours(2)).await;
    let denied = Some("42501");
    for sql in
        ["SELECT runlane.prune()", "SELECT runlane.prune_at(now())", "SELECT runlane.template_retentions('1 day')"]
    {
        assert_eq!(as_role(&t, "runlane_viewer", sql).await.as_deref(), denied, "a viewer: {sql}");
    }
    assert_eq!(as_role(&t, "runlane_viewer", "SELECT runlane.prune_preview()").await, None);
    assert_eq!(as_role(&t, "runlane_operator", "SELECT runlane.prune_preview(now() + interval '1 day')").await, None);
    assert_eq!(
        as_role(&t, "runlane_worker", "SELECT runlane.prune_preview()").await.as_deref(),
        denied,
        "a worker prunes by the policy but reads no history"
    );
    assert_eq!(run_ids(&t).await, [expired].into_iter().collect(), "nothing was pruned by those who may not");
    assert_eq!(as_role(&t, "runlane_operator", "SELECT runlane.prune()").await, None);
    assert!(run_ids(&t).await.is_empty(), "an operator prunes by the fleet's policy");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_preview_writes_nothing() {
    let t = TestDb::new().await;
    let volatility: String =
        sqlx::query_scalar("SELECT provolatile::text FROM pg_proc WHERE oid = 'runlane.prune_preview'::regproc")
            .fetch_one(&t.pool)
            .await
            .expect("volatility");
    assert_eq!(volatility, "s", "STABLE: PostgreSQL refuses a write in it");
    apply_kept(&t, "hourly", Some(HOUR)).await;
    let (store, dir) = local_store("retention-preview");
    let worker = t.register(&[Lane::A], 60_000).await;
    finished_run(&t, worker, "hourly", &store, &[("dump.bin", 300_000)], End::Succeeded, Duration::hours(2)).await;
    let before = row_counts(&t).await;
    let preview = db::prune_preview(&t.pool, None, None).await.expect("preview");
    assert_eq!((preview.runs, preview.stored_objects, preview.stored_bytes), (1, 1, 300_000));
    assert_eq!(row_counts(&t).await, before);
    let _ = std::fs::remove_dir_all(dir);
}
