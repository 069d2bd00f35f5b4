//! The worker process: registers, claims runs into free slots (woken by NOTIFY, with a fallback
//! poll), runs each in its own task, keeps its `workers` row alive, and drains on shutdown:
//! stop claiming, let runs finish within the grace, then interrupt and hand them back. A worker the
//! sweeper marked gone (silent past the worker timeout) registers again under a fresh id.

use crate::metrics::uptime_ms;
use crate::run_task::{self, RunSignals, Shared};
use runlane_core::broker::{Broker, MAX_CLAIM};
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{Completion, RunOps, StepFinish};
use runlane_core::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
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
    /// What the worker registers with; kept current (reloads, capabilities), so registering again
    /// after being marked gone announces the worker as it is now.
    registration: Arc<tokio::sync::Mutex<WorkerRegistration>>,
    /// Cancel tokens of the runs in flight, for cancel notices.
    running: Arc<Mutex<HashMap<RunId, CancellationToken>>>,
    slots: Arc<Semaphore>,
    /// Wakes the claim loop: a lane notice, a freed slot.
    wake: Arc<Notify>,
    tracker: TaskTracker,
}

impl<B: Broker> Worker<B> {
    /// Registers a fresh worker id for this process.
    pub async fn register(shared: Shared<B>, capabilities: Vec<String>) -> Result<Worker<B>> {
        let s = &shared.settings;
        let reg = WorkerRegistration {
            host: s.host.clone().unwrap_or_else(|| {
                hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
            }),
            lanes: s.lanes.clone(),
            slots: s.slots,
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities,
            lease_ms: u32::try_from(s.lease_ms).unwrap_or(u32::MAX),
            kill_grace_ms: u32::try_from(s.lease_loss_grace_ms).unwrap_or(u32::MAX),
        };
        let id = shared.broker.register_worker(&reg).await?;
        *shared.worker_id.write().unwrap_or_else(|p| p.into_inner()) = id;
        shared.metrics.slots_total.set(i64::from(s.slots));
        shared.metrics.queue_contact(true);
        // The registration is the first heartbeat that got through: liveness counts from it.
        shared.metrics.last_heartbeat_ok_ms.set(uptime_ms());
        let slots = Arc::new(Semaphore::new(s.slots as usize));
        tracing::info!(worker_id = %id, lanes = ?reg.lanes, slots = reg.slots, "worker registered");
        Ok(Worker {
            shared: Arc::new(shared),
            registration: Arc::new(tokio::sync::Mutex::new(reg)),
            running: Arc::default(),
            slots,
            wake: Arc::new(Notify::new()),
            tracker: TaskTracker::new(),
        })
    }

    pub fn id(&self) -> WorkerId {
        self.shared.worker_id()
    }

    /// Runs until shutdown, then drains. `capacity` carries reloads (SIGHUP).
    pub async fn run(self, shutdown: Shutdown, mut capacity: watch::Receiver<Capacity>) -> Result<()> {
        let mut lanes = capacity.borrow().lanes.clone();
        let mut notices = self.subscribe(&lanes).await;
        let liveness =
            tokio::spawn(liveness_loop(self.shared.clone(), self.registration.clone(), shutdown.stop_claiming.clone()));
        self.shared.metrics.ready.set(1);
        let poll = Duration::from_millis(self.shared.settings.poll_interval_ms);
        let mut reloadable = true;
        loop {
            if self.slots.available_permits() > 0 {
                match self.claim_once(&lanes, &shutdown).await {
                    Ok(n) if n > 0 && self.slots.available_permits() > 0 => continue,
                    Ok(_) => {}
                    Err(Error::WorkerGone(m)) => {
                        tracing::warn!(reason = %m, "this worker was marked gone; registering again");
                        register_again(&self.shared, &self.registration).await;
                        continue;
                    }
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
        let free = (self.slots.available_permits() as u32).min(MAX_CLAIM);
        if free == 0 {
            return Ok(0);
        }
        let session = self.shared.settings.session;
        // The lease of each claimed run can expire no earlier than `lease_ms` after this moment.
        let sent = Instant::now();
        // A claim stuck on a dead connection gives way after a lease: whatever it claimed has expired.
        let limit = Duration::from_millis(self.shared.settings.lease_ms);
        let claimed = tokio::time::timeout(limit, self.shared.broker.claim_runs(self.id(), lanes, free, session))
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable("the claim got no answer within a lease".into())));
        self.shared.metrics.queue_contact(!matches!(&claimed, Err(e) if e.is_retryable()));
        let runs = claimed?;
        let n = runs.len();
        for run in runs {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // Cannot happen: we claimed at most `free` and only this loop takes permits. Hand
                // the run straight back rather than run it over capacity (the claim started its first
                // step: end that too).
                let back = Completion { outcome: Outcome::Interrupted, result: None, error: None };
                let unstarted = StepFinish {
                    step: 0,
                    status: StepStatus::Cancelled,
                    exit_code: None,
                    error: Some("handed back: no free slot".into()),
                };
                let item = RunOps {
                    lease: run.lease(),
                    op: 1,
                    events: vec![],
                    finish: Some(unstarted),
                    start: None,
                    complete: Some(back),
                };
                let _ = self.shared.batcher.submit(item).await;
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
                let end = run_task::execute(shared.clone(), run, signals, sent).await;
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
            Some(Notice::Events(_)) | None => {}
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
        {
            let mut reg = self.registration.lock().await;
            reg.lanes = next.lanes.clone();
            reg.slots = next.slots;
        }
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

/// Registers this process again under a fresh id, once, however many tasks noticed it was gone.
async fn register_again<B: Broker>(shared: &Shared<B>, registration: &tokio::sync::Mutex<WorkerRegistration>) {
    let gone = shared.worker_id();
    let reg = registration.lock().await;
    if shared.worker_id() != gone {
        return; // another task already did
    }
    match shared.broker.register_worker(&reg).await {
        Ok(id) => {
            *shared.worker_id.write().unwrap_or_else(|p| p.into_inner()) = id;
            shared.metrics.queue_contact(true);
            shared.metrics.last_heartbeat_ok_ms.set(uptime_ms());
            tracing::info!(worker_id = %id, previous = %gone, "registered again");
        }
        Err(e) => tracing::warn!(error = %e, "could not register again; will retry"),
    }
}

/// Keeps the `workers` row fresh, records when the queue last answered (liveness), pings the
/// systemd watchdog while it does, refreshes the fleet-wide lane gauges, and re-announces the
/// worker's capabilities when its Docker engine comes or goes (runs needing Docker are then claimed
/// only by workers whose engine answers).
async fn liveness_loop<B: Broker>(
    shared: Arc<Shared<B>>,
    registration: Arc<tokio::sync::Mutex<WorkerRegistration>>,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(shared.settings.heartbeat_interval_ms);
    loop {
        let state = if stop.is_cancelled() { WorkerState::Draining } else { WorkerState::Active };
        let now = current_capabilities(&shared).await;
        let known = registration.lock().await.capabilities.clone();
        let update = WorkerUpdate { capabilities: (now != known).then(|| now.clone()), ..Default::default() };
        let beat = shared.broker.worker_heartbeat(shared.worker_id(), state, &update);
        let beat = tokio::time::timeout(every, beat)
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable("the heartbeat got no answer in time".into())));
        match beat {
            Ok(()) => {
                shared.metrics.queue_contact(true);
                shared.metrics.last_heartbeat_ok_ms.set(uptime_ms());
                if update.capabilities.is_some() {
                    tracing::warn!(capabilities = ?now, "capabilities changed");
                    registration.lock().await.capabilities = now;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(Error::WorkerGone(m)) => {
                tracing::warn!(reason = %m, "this worker was marked gone; registering again");
                register_again(&shared, &registration).await;
            }
            Err(e) => {
                shared.metrics.heartbeat_failures.inc();
                shared.metrics.queue_contact(!e.is_retryable());
                tracing::warn!(error = %e, "worker heartbeat failed");
            }
        }
        // Bounded like the heartbeat: a call that hangs must not stop the next heartbeat.
        if let Ok(Ok(stats)) = tokio::time::timeout(every, shared.broker.lane_stats()).await {
            for s in stats {
                if let Ok(lane) = s.lane.parse::<Lane>() {
                    let i = lane as usize;
                    shared.metrics.queue_depth[i].set(s.queued);
                    shared.metrics.running[i].set(s.running);
                    shared.metrics.oldest_queued_ms[i].set((s.oldest_queued_s * 1000.0) as i64);
                    shared.metrics.lane_paused[i].set(i64::from(s.paused));
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The capabilities declared in `worker.capabilities`, and `docker` while this worker has a Docker
/// engine that answers.
pub async fn current_capabilities<B>(shared: &Shared<B>) -> Vec<String> {
    let up = match &shared.executors.docker {
        Some(d) => crate::containers::answers(d.docker()).await,
        None => false,
    };
    shared.metrics.docker_available.set(i64::from(up));
    capabilities(&shared.settings.capabilities, up)
}

/// Sorted, so that a change is told from the same set in another order.
fn capabilities(declared: &[String], docker_up: bool) -> Vec<String> {
    let mut all: Vec<String> = declared.to_vec();
    if docker_up {
        all.push("docker".to_string());
    }
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_capabilities_and_docker_while_it_answers() {
        let declared = vec!["gpu".to_string(), "fra1".to_string()];
        assert_eq!(capabilities(&declared, false), ["fra1", "gpu"]);
        assert_eq!(capabilities(&declared, true), ["docker", "fra1", "gpu"]);
        assert!(capabilities(&[], false).is_empty());
    }
}
