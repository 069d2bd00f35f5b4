//! Wires a worker process over PostgreSQL: pool, executors, artifact store, registration, the claim
//! loop, the sweeper and the health endpoint. The binary only adds flags and signals.

use crate::batcher::{Batcher, BatcherOptions};
use crate::executors::docker::DockerExecutor;
use crate::executors::http::HttpExecutor;
use crate::executors::noop::NoopExecutor;
use crate::executors::shell::ShellExecutor;
use crate::metrics::Metrics;
use crate::run_task::{Executors, Shared};
use crate::worker::{Capacity, Shutdown, Worker};
use crate::{containers, health, schedule_ticker, sweeper};
use runlane_core::artifacts::ArtifactStore;
use runlane_core::broker::{Broker, PgBroker};
use runlane_core::model::WorkerId;
use runlane_core::settings::Settings;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started worker process.
#[derive(Debug)]
pub struct Daemon {
    pub worker_id: WorkerId,
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub health_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    task: JoinHandle<runlane_core::Result<()>>,
}

impl Daemon {
    /// A worker on PostgreSQL directly: registers and starts everything (the sweeper too);
    /// returns once the worker is claiming.
    pub async fn start(
        settings: Settings,
        pool: PgPool,
        shutdown: Shutdown,
        capacity: watch::Receiver<Capacity>,
    ) -> Result<Daemon, String> {
        runlane_core::db::check_schema(&pool).await.map_err(|e| e.to_string())?;
        let artifacts = ArtifactStore::from_settings(&settings.artifacts)?;
        let broker = Arc::new(PgBroker::new(pool.clone(), artifacts.clone()));
        Daemon::start_with(settings, broker, Some((pool, artifacts)), shutdown, capacity).await
    }

    /// A worker on any broker (the executor API, for one without database credentials). The
    /// sweeper runs only with a pool (and the artifact store whose pruned objects it deletes).
    pub async fn start_with<B: Broker>(
        settings: Settings,
        broker: Arc<B>,
        sweeper: Option<(PgPool, ArtifactStore)>,
        shutdown: Shutdown,
        capacity: watch::Receiver<Capacity>,
    ) -> Result<Daemon, String> {
        let metrics = Arc::new(Metrics::default());
        // Bound first: a second worker on a taken port stops here, before it registers.
        let listener = health::bind(&settings.worker.listen).await.map_err(|e| {
            format!("worker.listen {}: {e} (each worker on a host needs its own health port)", settings.worker.listen)
        })?;
        let health_addr = listener.local_addr().map_err(|e| format!("worker.listen: {e}"))?;
        let docker = connect_docker(&settings, &*broker).await;
        let executors = Executors { shell: ShellExecutor, http: HttpExecutor::new()?, noop: NoopExecutor, docker };
        std::fs::create_dir_all(&settings.worker.work_dir)
            .map_err(|e| format!("worker.work_dir {}: {e}", settings.worker.work_dir.display()))?;
        let secret_env_values = settings
            .worker
            .secret_env
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
            .collect();
        let (batcher, _batcher_task) = Batcher::spawn(broker.clone(), BatcherOptions::default(), metrics.clone());
        let shared = Shared {
            broker,
            batcher,
            worker_id: std::sync::RwLock::new(WorkerId(uuid::Uuid::nil())),
            settings: settings.worker.clone(),
            metrics: metrics.clone(),
            executors,
            secret_env_values,
        };
        let capabilities = crate::worker::current_capabilities(&shared).await;
        let broker = shared.broker.clone();
        let docker = shared.executors.docker.as_ref().map(|d| (d.docker().clone(), d.fleet().to_string()));
        let worker =
            Worker::register(shared, capabilities).await.map_err(|e| format!("registering the worker: {e}"))?;
        let worker_id = worker.id();
        let stopped = CancellationToken::new();
        let liveness_bound = std::time::Duration::from_millis(settings.worker.lease_ms);
        health::serve(listener, metrics.clone(), liveness_bound, stopped.clone());
        if let Some((docker, fleet)) = docker {
            let every = std::time::Duration::from_millis(settings.docker.reap_interval_ms);
            tokio::spawn(reap_loop(docker, broker, fleet, every, stopped.clone()));
        }
        if let Some((pool, store)) = sweeper.filter(|_| settings.sweeper.enabled) {
            let ticker = schedule_ticker::run(pool.clone(), settings.sweeper.clone(), metrics.clone(), stopped.clone());
            tokio::spawn(ticker);
            tokio::spawn(sweeper::run(pool, store, settings.sweeper.clone(), metrics.clone(), stopped.clone()));
        }
        let task = tokio::spawn(async move {
            let result = worker.run(shutdown, capacity).await;
            stopped.cancel();
            result
        });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        tracing::info!(%worker_id, health = %health_addr, "worker ready");
        Ok(Daemon { worker_id, health_addr, metrics, task })
    }

    /// Waits until the worker has drained and stopped.
    pub async fn wait(self) -> Result<(), String> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the worker task failed: {e}")),
        }
    }
}

async fn connect_docker<B: Broker>(settings: &Settings, broker: &B) -> Option<DockerExecutor> {
    if !settings.docker.enabled {
        return None;
    }
    let fleet = match broker.fleet_id().await {
        Ok(id) => id.to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "no fleet id: docker steps are not offered by this worker");
            return None;
        }
    };
    match containers::connect(&settings.docker).await {
        Ok(docker) => {
            Some(DockerExecutor::new(docker, fleet, &settings.docker.allowed_mounts, &settings.docker.allowed_networks))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no Docker engine: docker steps are not offered by this worker");
            None
        }
    }
}

/// Removes orphaned step containers at start and every `every`.
async fn reap_loop<B: Broker>(
    docker: bollard::Docker,
    broker: Arc<B>,
    fleet: String,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    loop {
        if let Err(e) = containers::reap_orphans(&docker, &*broker, &fleet).await {
            tracing::warn!(error = %e, "orphan reaping failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
