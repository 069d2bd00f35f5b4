//! The docker executor when the engine is unreachable: the step fails with an error naming the
//! engine; nothing hangs.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_tests::proxy::UnixProxy;
use runlane_worker::executors::docker::DockerExecutor;
use runlane_worker::executors::{Executor, StepContext};
use runlane_worker::output::{Masker, RunOutput};
use runlane_worker::run_writer::WriterOptions;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_unreachable_engine_fails_the_step_naming_the_engine() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 15_000).await;
    let claimed = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim").remove(0);
    let engine = UnixProxy::start("/var/run/docker.sock").await;
    let docker = bollard::Docker::connect_with_unix(&engine.path.to_string_lossy(), 5, bollard::API_DEFAULT_VERSION)
        .expect("client");
    engine.cut();

    let opts = WriterOptions { flush_interval: Duration::from_millis(10), batch_max: 100 };
    let dir = std::env::temp_dir().join(format!("runlane-docker-unreachable-{}", uuid::Uuid::new_v4().simple()));
    let writer = t.run_writer(claimed.lease(), opts, CancellationToken::new());
    let output = RunOutput::new(writer, Masker::default(), 1 << 20, Duration::from_millis(50));
    let ctx = StepContext {
        run_id: run,
        attempt: claimed.attempt,
        worker_id: worker,
        step: 0,
        step_name: "c".into(),
        params: serde_json::json!({}),
        work_dir: dir.clone(),
        artifacts_dir: dir.join("artifacts"),
        private_dir: dir.join("private"),
        env: vec![],
        param_files: vec![],
        output: output.for_step(0),
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(30),
        grace: Duration::from_secs(1),
        lease_lost: CancellationToken::new(),
        lease_loss_grace: Duration::from_millis(500),
    };
    let spec: runlane_core::steps::DockerStep =
        serde_json::from_value(serde_json::json!({"image": "runlane-busybox:latest", "command": ["true"]}))
            .expect("spec");
    let executor = DockerExecutor::new(docker, "test-fleet".into(), &[], &[]);
    let outcome = tokio::time::timeout(Duration::from_secs(20), executor.run(&spec, &ctx)).await.expect("no hang");
    assert_eq!(outcome.status, StepStatus::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(error.starts_with("docker engine:"), "{error}");
    ctx.output.finish().await.expect("flush");
    let events = db::read_events(&t.pool, run, 0, 100).await.expect("events");
    assert!(events.iter().any(|e| e.body.as_deref().is_some_and(|b| b.contains("docker engine"))), "{events:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
