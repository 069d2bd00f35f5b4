//! Finished runs of a known age, with artifacts in a real object store, for the retention tests
//! (SQL, the sweeper, S3 and `runlane prune`).

use crate::TestDb;
use runlane_core::artifacts::{ArtifactBytes, ArtifactStore};
use runlane_core::db;
use runlane_core::model::{ArtifactId, Lane, Outcome, RunId, StepStatus, WorkerId};
use runlane_core::settings::ArtifactSettings;

/// How a test run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its step succeeded, then the run.
    Succeeded,
    /// Its step failed, then the run (templates here have one attempt).
    Failed,
    /// Cancelled while its step ran.
    Cancelled,
}

/// A one-step no-op template kept for `retention_s` (None: the fleet's retention).
pub async fn apply_kept(t: &TestDb, name: &str, retention_s: Option<i64>) -> i32 {
    let mut spec = serde_json::json!({"lane": "A", "steps": [{"name": "noop", "kind": "noop"}]});
    if let Some(s) = retention_s {
        spec["retention_s"] = s.into();
    }
    t.apply(name, spec).await
}

/// A local object store in a fresh directory under the system's temporary one (removed by the test).
pub fn local_store(what: &str) -> (ArtifactStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("runlane-{what}-{}", uuid::Uuid::new_v4().simple()));
    let settings = ArtifactSettings { local_dir: dir.clone(), ..Default::default() };
    (ArtifactStore::from_settings(&settings).expect("artifact store"), dir)
}

/// Every file under `dir`.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { found.push(path) }
        }
    }
    found
}

/// A run of `template` (lane A) claimed by `worker`, its artifacts saved through `store` (each
/// `(name, size)`: larger than the store's inline limit goes to the object store), ended as `end`,
/// and finished `age` ago: the owner moves `finished_at` back, as time would.
pub async fn finished_run(
    t: &TestDb,
    worker: WorkerId,
    template: &str,
    store: &ArtifactStore,
    artifacts: &[(&str, usize)],
    end: End,
    age: chrono::Duration,
) -> RunId {
    let run = t.enqueue(template, Lane::A).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.run_id).collect::<Vec<_>>(), [run], "lane A holds only this run");
    let lease = claimed[0].lease();
    for (name, size) in artifacts {
        let bytes = ArtifactBytes {
            id: ArtifactId(uuid::Uuid::new_v4()),
            step: Some(0),
            name,
            content_type: "application/octet-stream",
            bytes: vec![7u8; *size],
        };
        store.save(&t.pool, lease, &bytes).await.expect("save artifact");
    }
    match end {
        End::Succeeded => {
            db::finish_step(&t.pool, lease, 0, StepStatus::Succeeded, Some(0), None).await.expect("finish step");
            db::complete_run(&t.pool, lease, Outcome::Succeeded, None, None).await.expect("complete");
        }
        End::Failed => {
            db::finish_step(&t.pool, lease, 0, StepStatus::Failed, Some(1), Some("exit 1")).await.expect("finish step");
            db::complete_run(&t.pool, lease, Outcome::Failed, None, Some("step failed")).await.expect("complete");
        }
        End::Cancelled => {
            db::complete_run(&t.pool, lease, Outcome::Cancelled, None, None).await.expect("complete");
        }
    }
    let want = match end {
        End::Succeeded => "succeeded",
        End::Failed => "failed",
        End::Cancelled => "cancelled",
    };
    assert_eq!(t.status(run).await, want);
    set_finished_ago(t, run, age).await;
    run
}

/// Moves a run's `finished_at` to `age` before now (the owner's write).
pub async fn set_finished_ago(t: &TestDb, run: RunId, age: chrono::Duration) {
    sqlx::query("UPDATE runlane.runs SET finished_at = now() - make_interval(secs => $2) WHERE id = $1")
        .bind(run)
        .bind(age.num_seconds() as f64)
        .execute(&t.pool)
        .await
        .expect("move finished_at back");
}

/// How many rows each table pruning touches holds: runs, run_events, run_steps, artifacts,
/// doomed_objects, workers, sessions.
pub async fn row_counts(t: &TestDb) -> [i64; 7] {
    let mut counts = [0; 7];
    for (i, table) in
        ["runs", "run_events", "run_steps", "artifacts", "doomed_objects", "workers", "sessions"].iter().enumerate()
    {
        counts[i] = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM runlane.{table}")))
            .fetch_one(&t.pool)
            .await
            .expect("count rows");
    }
    counts
}

/// Rows of `table` that belong to `runs`.
pub async fn rows_of(t: &TestDb, table: &str, runs: &[RunId]) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM runlane.{table} WHERE run_id = ANY($1)")))
        .bind(runs)
        .fetch_one(&t.pool)
        .await
        .expect("count rows")
}
