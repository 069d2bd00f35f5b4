//! The worker process: registers, claims runs into free slots (woken by NOTIFY, with a fallback
//! poll), runs each in its own task, keeps its `workers` row alive, and drains on shutdown:
//! stop claiming, let runs finish within the grace, then interrupt and hand them back.

use crate::run_task::{self, RunSignals, Shared};
use runlane_core::Result;
use runlane_core::broker::{Broker, Notice};
use runlane_core::model::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the process asks the worker to stop: first stop claiming (drain), then interrupt runs.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub stop_claiming: CancellationToken,
    pub interrupt: CancellationToken,
}

/// Lanes and slots, changeable at run time (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub lanes: Vec<Lane>,
    pub slots: u32,
}

/// A registered worker.
#[derive(Debug)]
pub struct Worker<B> {
    shared: Arc<Shared<B>>,
    /// Cancel tokens of the runs in flight, for cancel notices.
    running: Arc<Mutex<HashMap<RunId, CancellationToken>>>,
    slots: Arc<Semaphore>,
    /// Wakes the claim loop: a lane notice, a freed slot.
    wake: Arc<Notify>,
    tracker: TaskTracker,
    capabilities: Vec<String>,
}

impl<B: Broker> Worker<B> {
    /// Registers a fresh worker id for this process.
    pub async fn register(mut shared: Shared<B>, capabilities: Vec<String>) -> Result<Worker<B>> {
        let s = &shared.settings;
        let reg = WorkerRegistration {
            host: s.host.clone().unwrap_or_else(|| {
                hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
            }),
            lanes: s.lanes.clone(),
            slots: s.slots,
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: capabilities.clone(),
            lease_ms: u32::try_from(s.lease_ms).unwrap_or(u32::MAX),
        };
        shared.worker_id = shared.broker.register_worker(&reg).await?;
        shared.metrics.slots_total.set(i64::from(s.slots));
        let slots = Arc::new(Semaphore::new(s.slots as usize));
        tracing::info!(worker_id = %shared.worker_id, lanes = ?reg.lanes, slots = reg.slots, "worker registered");
        Ok(Worker {
            shared: Arc::new(shared),
            running: Arc::default(),
            slots,
            wake: Arc::new(Notify::new()),
            tracker: TaskTracker::new(),
            capabilities,
        })
    }

    pub fn id(&self) -> WorkerId {
        self.shared.worker_id
    }

    /// Runs until shutdown, then drains. `capacity` carries reloads (SIGHUP).
    pub async fn run(self, shutdown: Shutdown, mut capacity: watch::Receiver<Capacity>) -> Result<()> {
        let mut lanes = capacity.borrow().lanes.clone();
        let mut notices = self.subscribe(&lanes).await;
        let liveness =
            tokio::spawn(liveness_loop(self.shared.clone(), shutdown.stop_claiming.clone(), self.capabilities.clone()));
        self.shared.metrics.ready.set(1);
        let poll = Duration::from_millis(self.shared.settings.poll_interval_ms);
        let mut reloadable = true;
        loop {
            if self.slots.available_permits() > 0 {
                match self.claim_once(&lanes, &shutdown).await {
                    Ok(n) if n > 0 && self.slots.available_permits() > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "claim failed; retrying after the poll interval"),
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.stop_claiming.cancelled() => break,
                changed = capacity.changed(), if reloadable => {
                    if changed.is_err() {
                        reloadable = false; // nobody can send a reload any more
                        continue;
                    }
                    let next = capacity.borrow().clone();
                    self.resize(&next).await;
                    if next.lanes != lanes {
                        lanes = next.lanes;
                        notices = self.subscribe(&lanes).await;
                    }
                }
                notice = recv(&mut notices) => self.on_notice(notice),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        self.shared.metrics.ready.set(0);
        tracing::info!(in_flight = self.tracker.len(), "draining: no new claims; running runs may finish");
        let _ = self.shared.broker.worker_heartbeat(self.id(), WorkerState::Draining, &WorkerUpdate::default()).await;
        self.tracker.close();
        // Cancel notices keep flowing while runs finish.
        loop {
            tokio::select! {
                _ = self.tracker.wait() => break,
                notice = recv(&mut notices) => self.on_notice(notice),
            }
        }
        liveness.abort();
        let _ = self.shared.broker.worker_heartbeat(self.id(), WorkerState::Gone, &WorkerUpdate::default()).await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Claims into the free slots once and starts a task per run. Returns how many were claimed.
    pub async fn claim_once(&self, lanes: &[Lane], shutdown: &Shutdown) -> Result<usize> {
        let free = self.slots.available_permits() as u32;
        if free == 0 {
            return Ok(0);
        }
        let session = self.shared.settings.session;
        let runs = self.shared.broker.claim_runs(self.id(), lanes, free, session).await?;
        let n = runs.len();
        for run in runs {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // Cannot happen: we claimed at most `free` and only this loop takes permits. Hand
                // the run straight back rather than run it over capacity.
                let _ = self.shared.broker.complete_run(run.lease(), Outcome::Interrupted, None, None).await;
                continue;
            };
            self.shared.metrics.claimed(&run.lane);
            self.shared.metrics.slots_in_use.add(1);
            let cancel = CancellationToken::new();
            self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(run.run_id, cancel.clone());
            let signals = RunSignals { cancel, interrupt: shutdown.interrupt.clone() };
            let (shared, running, wake) = (self.shared.clone(), self.running.clone(), self.wake.clone());
            let run_id = run.run_id;
            self.tracker.spawn(async move {
                let end = run_task::execute(shared.clone(), run, signals).await;
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);
                shared.metrics.slots_in_use.add(-1);
                drop(permit);
                wake.notify_one();
                end
            });
        }
        Ok(n)
    }

    fn on_notice(&self, notice: Option<Notice>) {
        match notice {
            Some(Notice::Cancel(run)) => {
                if let Some(token) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(&run) {
                    tracing::info!(run_id = %run, "cancel requested (notify)");
                    token.cancel();
                }
            }
            Some(Notice::LaneReady(_) | Notice::Resumed) => self.wake.notify_one(),
            None => {}
        }
    }

    async fn subscribe(&self, lanes: &[Lane]) -> Option<mpsc::Receiver<Notice>> {
        match self.shared.broker.subscribe(lanes).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "no notifications (polling only until the next reload)");
                None
            }
        }
    }

    async fn resize(&self, next: &Capacity) {
        let current = self.shared.metrics.slots_total.get() as u32;
        if next.slots > current {
            self.slots.add_permits((next.slots - current) as usize);
        } else if next.slots < current {
            let fewer = current - next.slots;
            // Takes the permits as runs free them; the claim loop never claims past the new size.
            if let Ok(p) = self.slots.clone().acquire_many_owned(fewer).await {
                p.forget();
            }
        }
        self.shared.metrics.slots_total.set(i64::from(next.slots));
        let update = WorkerUpdate { lanes: Some(next.lanes.clone()), slots: Some(next.slots), capabilities: None };
        if let Err(e) = self.shared.broker.worker_heartbeat(self.id(), WorkerState::Active, &update).await {
            tracing::warn!(error = %e, "could not record the new lanes and slots");
        }
        tracing::info!(lanes = ?next.lanes, slots = next.slots, "reloaded");
    }
}

async fn recv(notices: &mut Option<mpsc::Receiver<Notice>>) -> Option<Notice> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the `workers` row fresh, pings the systemd watchdog while the queue answers, refreshes
/// the fleet-wide lane gauges, and re-announces the worker's capabilities when its Docker engine
/// comes or goes (runs needing Docker are then claimed only by workers whose engine answers).
async fn liveness_loop<B: Broker>(shared: Arc<Shared<B>>, stop: CancellationToken, mut capabilities: Vec<String>) {
    let every = Duration::from_millis(shared.settings.heartbeat_interval_ms);
    loop {
        let state = if stop.is_cancelled() { WorkerState::Draining } else { WorkerState::Active };
        let now = current_capabilities(&shared).await;
        let update = WorkerUpdate { capabilities: (now != capabilities).then(|| now.clone()), ..Default::default() };
        match shared.broker.worker_heartbeat(shared.worker_id, state, &update).await {
            Ok(()) => {
                if update.capabilities.is_some() {
                    tracing::warn!(capabilities = ?now, "capabilities changed");
                    capabilities = now;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(e) => {
                shared.metrics.heartbeat_failures.inc();
                tracing::warn!(error = %e, "worker heartbeat failed");
            }
        }
        if let Ok(stats) = shared.broker.lane_stats().await {
            for s in stats {
                if let Ok(lane) = s.lane.parse::<Lane>() {
                    let i = lane as usize;
                    shared.metrics.queue_depth[i].set(s.queued);
                    shared.metrics.running[i].set(s.running);
                    shared.metrics.oldest_queued_ms[i].set((s.oldest_queued_s * 1000.0) as i64);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// `docker` while this worker has a Docker engine that answers.
pub async fn current_capabilities<B>(shared: &Shared<B>) -> Vec<String> {
    let up = match &shared.executors.docker {
        Some(d) => crate::containers::answers(d.docker()).await,
        None => false,
    };
    shared.metrics.docker_available.set(i64::from(up));
    if up { vec!["docker".to_string()] } else { Vec::new() }
}
