//! One run, from claim to completion: its steps in order, a heartbeat that renews the lease (and
//! learns of cancellation), `always` steps after a failure or cancel, and the attempt's end — every
//! write through the run's writer and the worker's batcher.
//! Nothing is held open in the database while a step runs: every write carries the lease, and every
//! write is safe to repeat after a lost reply. A step the queue could not record fails the run.

use crate::batcher::Batcher;
use crate::executors::docker::DockerExecutor;
use crate::executors::http::HttpExecutor;
use crate::executors::noop::NoopExecutor;
use crate::executors::shell::ShellExecutor;
use crate::executors::{Executor, StepContext, StepOutcome};
use crate::lease::{LeaseSignals, LeaseTimings, heartbeat_loop, link};
use crate::metrics::Metrics;
use crate::output::{Masker, RunOutput};
use crate::run_writer::{RunWriter, WriterOptions};
use crate::step_files;
use runlane_core::broker::Broker;
use runlane_core::model::*;
use runlane_core::ops::StepFinish;
use runlane_core::settings::WorkerSettings;
use runlane_core::steps::{self, StepAction, StepSpec};
use runlane_core::{Error, Result};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The step executors a worker has.
#[derive(Debug)]
pub struct Executors {
    pub shell: ShellExecutor,
    pub http: HttpExecutor,
    pub noop: NoopExecutor,
    /// None: Docker disabled or no engine at start.
    pub docker: Option<DockerExecutor>,
}

/// What every run task of a worker shares.
#[derive(Debug)]
pub struct Shared<B> {
    pub broker: Arc<B>,
    /// Every run task's writes go through it, in batches across runs.
    pub batcher: Batcher,
    /// This process's registration; replaced when the worker had to register again (it was marked
    /// gone). A std lock: read in a few places, written once in a long while, never across an await.
    pub worker_id: RwLock<WorkerId>,
    pub settings: WorkerSettings,
    pub metrics: Arc<Metrics>,
    pub executors: Executors,
    /// Values of the env vars named in `worker.secret_env`: masked like secret params.
    pub secret_env_values: Vec<String>,
}

impl<B> Shared<B> {
    pub fn worker_id(&self) -> WorkerId {
        *self.worker_id.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lease_timings(&self) -> LeaseTimings {
        LeaseTimings {
            heartbeat_interval: Duration::from_millis(self.settings.heartbeat_interval_ms),
            lease: Duration::from_millis(self.settings.lease_ms),
        }
    }
}

/// How the worker reaches a running run.
#[derive(Debug, Clone)]
pub struct RunSignals {
    /// Cancellation was requested (NOTIFY or heartbeat): stop normal steps, run `always` steps.
    pub cancel: CancellationToken,
    /// The drain grace is over: stop everything and hand the run back.
    pub interrupt: CancellationToken,
}

/// How a run task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// `complete_run` answered with this status.
    Completed(RunStatus),
    /// The lease was lost: the run is someone else's now; nothing more was written.
    LeaseLost,
}

/// Executes a claimed run to its end. `claim_sent`: when the claim that leased it was sent.
pub async fn execute<B: Broker>(
    shared: Arc<Shared<B>>,
    run: ClaimedRun,
    signals: RunSignals,
    claim_sent: Instant,
) -> RunEnd {
    let span = tracing::info_span!("run", run_id = %run.run_id, lane = %run.lane, attempt = run.attempt);
    execute_inner(shared, run, signals, claim_sent).instrument(span).await
}

async fn execute_inner<B: Broker>(
    shared: Arc<Shared<B>>,
    run: ClaimedRun,
    signals: RunSignals,
    claim_sent: Instant,
) -> RunEnd {
    let started = Instant::now();
    let lease = run.lease();
    let settings = &shared.settings;
    // abort: lease lost or interrupted — stop everything. signals.cancel stops normal steps only.
    let abort = signals.interrupt.child_token();
    let lease_lost = CancellationToken::new();
    let done = CancellationToken::new();
    tokio::spawn(link(lease_lost.clone(), abort.clone(), done.clone()));
    tokio::spawn(link(abort.clone(), signals.cancel.clone(), done.clone()));

    let opts = WriterOptions {
        flush_interval: Duration::from_millis(settings.event_flush_ms),
        batch_max: settings.event_batch_max,
    };
    let (writer, writer_task) =
        RunWriter::spawn(shared.batcher.clone(), lease, opts, lease_lost.clone(), shared.metrics.clone());
    let masker = Masker::new(
        run.secret_params
            .iter()
            .filter_map(|k| run.params.get(k).map(steps::param_text))
            .chain(shared.secret_env_values.iter().cloned()),
    );
    let output = RunOutput::new(writer.clone(), masker, settings.output_cap_bytes, Duration::from_millis(200));
    let lease_signals =
        LeaseSignals { cancel: signals.cancel.clone(), lease_lost: lease_lost.clone(), done: done.clone() };
    let heartbeat = tokio::spawn(heartbeat_loop(
        shared.broker.clone(),
        shared.metrics.clone(),
        shared.lease_timings(),
        lease,
        claim_sent,
        lease_signals,
    ));

    let work_dir = settings.work_dir.join(format!("{}-{}", run.run_id, run.attempt));
    let deadline = started + Duration::from_millis(u64::try_from(run.timeout_ms).unwrap_or(0));
    let mut made_dirs = false;
    let verdict = match steps::parse_steps(&run.steps) {
        Ok(specs) => {
            let mut steps = StepRunner {
                shared: &shared,
                run: &run,
                output: &output,
                work_dir: work_dir.clone(),
                deadline,
                lease_lost: lease_lost.clone(),
                unwritten_end: None,
                made_dirs: false,
            };
            let verdict = steps.run_all(&specs, &signals.cancel, &abort).await;
            made_dirs = steps.made_dirs;
            verdict
        }
        Err(e) => Verdict::Failed(format!("the run's steps are invalid: {e}")),
    };
    if made_dirs {
        step_files::remove_run_dirs(&work_dir).await;
    }
    let masker = output.masker().clone();
    drop(output);

    if lease_lost.is_cancelled() {
        done.cancel();
        let _ = heartbeat.await;
        drop(writer);
        let _ = writer_task.await;
        shared.metrics.leases_lost.inc();
        tracing::warn!("lease lost: the run was aborted here and is no longer this worker's");
        return RunEnd::LeaseLost;
    }
    let (outcome, error) = if signals.interrupt.is_cancelled() {
        (Outcome::Interrupted, Some("interrupted: the worker shut down".to_string()))
    } else {
        match verdict {
            Verdict::Succeeded => (Outcome::Succeeded, None),
            Verdict::Cancelled => (Outcome::Cancelled, Some("cancelled".to_string())),
            Verdict::Failed(e) => (Outcome::Failed, Some(e)),
        }
    };
    let error = error.map(|e| masker.mask(&e));
    // The heartbeat keeps the lease until the end is written.
    let ended = complete(&writer, outcome, error).await;
    done.cancel();
    let _ = heartbeat.await;
    drop(writer);
    let _ = writer_task.await;
    match ended {
        Ok(status) => {
            shared.metrics.finished(&run.lane, status, started.elapsed().as_secs_f64());
            tracing::info!(%status, "run attempt ended");
            RunEnd::Completed(status)
        }
        Err(e) => {
            if !matches!(e, Error::LeaseLost(_)) {
                tracing::error!(error = %e, "could not complete the run; its lease will expire and the sweeper will requeue it");
            }
            shared.metrics.leases_lost.inc();
            RunEnd::LeaseLost
        }
    }
}

/// Ends the attempt. Should the queue refuse success (a step of the attempt is not recorded as
/// succeeded), the attempt fails with the queue's reason instead.
async fn complete(writer: &RunWriter, outcome: Outcome, error: Option<String>) -> Result<RunStatus> {
    match writer.complete(outcome, error).await {
        Err(Error::Conflict(why)) if outcome == Outcome::Succeeded => {
            tracing::error!(%why, "the queue refused success; failing the attempt");
            writer.complete(Outcome::Failed, Some(why)).await
        }
        other => other,
    }
}

/// What the steps came to.
#[derive(Debug)]
enum Verdict {
    Succeeded,
    Failed(String),
    Cancelled,
}

struct StepRunner<'a, B> {
    shared: &'a Arc<Shared<B>>,
    run: &'a ClaimedRun,
    output: &'a RunOutput,
    work_dir: PathBuf,
    deadline: Instant,
    lease_lost: CancellationToken,
    /// The step whose end is written with the next start (see `run_writer`).
    unwritten_end: Option<String>,
    /// Whether a step needed the run's directories on disk (shell and docker steps do).
    made_dirs: bool,
}

impl<B: Broker> StepRunner<'_, B> {
    async fn run_all(&mut self, specs: &[StepSpec], cancel: &CancellationToken, abort: &CancellationToken) -> Verdict {
        let mut failure: Option<String> = None;
        for (i, spec) in specs.iter().enumerate() {
            if abort.is_cancelled() {
                break;
            }
            let stopping = failure.is_some() || cancel.is_cancelled();
            if stopping && !spec.always {
                self.skip_first(i).await;
                continue;
            }
            let Some(left) = self.deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                failure.get_or_insert(format!("the run timed out after {} ms", self.run.timeout_ms));
                self.skip_first(i).await;
                continue;
            };
            // Cleanup steps after a cancel still stop on abort (lease lost, interrupt).
            let token = if spec.always { abort.child_token() } else { cancel.child_token() };
            let outcome = match self.run_step(i as i32, spec, left, token).await {
                Ok(outcome) => outcome,
                Err(Error::LeaseLost(_)) => break, // the run is someone else's: write nothing more
                Err(e) => {
                    // The queue refused to record the step: the run must not succeed.
                    tracing::error!(step = i, error = %e, "could not record the step");
                    let what = match self.unwritten_end.take() {
                        Some(before) => format!("the end of step '{before}' and the start of step '{}'", spec.name),
                        None => format!("the start of step '{}'", spec.name),
                    };
                    failure.get_or_insert(format!("could not record {what}: {e}"));
                    continue;
                }
            };
            if outcome.status != StepStatus::Succeeded
                && !spec.continue_on_error
                && failure.is_none()
                && !cancel.is_cancelled()
            {
                let why = outcome.error.clone().unwrap_or_else(|| outcome.status.as_str().to_string());
                failure = Some(format!("step '{}' {}: {why}", spec.name, outcome.status.as_str()));
            }
        }
        match failure {
            _ if cancel.is_cancelled() && !abort.is_cancelled() => Verdict::Cancelled,
            Some(e) => Verdict::Failed(e),
            None => Verdict::Succeeded,
        }
    }

    /// The claim started the first step; one that does not run ends as skipped.
    async fn skip_first(&mut self, index: usize) {
        if index == 0 {
            let skipped = StepFinish { step: 0, status: StepStatus::Skipped, exit_code: None, error: None };
            if self.output.writer().finish_step(skipped).await.is_ok() {
                self.unwritten_end = None;
            }
        }
    }

    async fn run_step(
        &mut self,
        index: i32,
        spec: &StepSpec,
        left: Duration,
        token: CancellationToken,
    ) -> Result<StepOutcome> {
        let broker = &self.shared.broker;
        let lease = self.run.lease();
        let writer = self.output.writer();
        // The claim started the first step.
        if index > 0 {
            writer.start_step(index).await?;
        }
        self.unwritten_end = None;
        let outcome = match self.context(index, spec, left, token).await {
            Ok(ctx) => {
                let outcome = dispatch(self.shared.clone(), spec.action.clone(), ctx.clone()).await;
                let _ = ctx.output.close().await;
                for artifact in &outcome.artifacts {
                    let saved = step_files::save_artifact(&**broker, lease, index, artifact, &self.lease_lost).await;
                    if let Err(e) = saved {
                        if e.is_lease_lost() {
                            return Err(Error::LeaseLost(e.to_string()));
                        }
                        let _ = ctx.output.line(Stream::Stderr, &format!("runlane: {e}")).await;
                        let _ = ctx.output.close().await;
                    }
                }
                outcome
            }
            Err(e) => StepOutcome::failed(None, format!("could not prepare the step: {e}")),
        };
        let error = outcome.error.as_deref().map(|e| self.output.masker().mask(e));
        let finish = StepFinish { step: index, status: outcome.status, exit_code: outcome.exit_code, error };
        writer.finish_step(finish).await?;
        self.unwritten_end = Some(spec.name.clone());
        Ok(outcome)
    }

    async fn context(
        &mut self,
        index: i32,
        spec: &StepSpec,
        left: Duration,
        token: CancellationToken,
    ) -> std::io::Result<StepContext> {
        // Processes (shell, docker) get directories and their params; an HTTP or no-op step
        // touches no disk.
        let processes = matches!(spec.action, StepAction::Shell(_) | StepAction::Docker(_));
        let dirs = if processes {
            self.made_dirs = true;
            step_files::prepare_step_dirs(&self.work_dir, index).await?
        } else {
            step_files::step_dirs(&self.work_dir, index)
        };
        let run = self.run;
        let mut env = vec![
            ("RUNLANE_RUN_ID".to_string(), run.run_id.to_string()),
            ("RUNLANE_ATTEMPT".to_string(), run.attempt.to_string()),
            ("RUNLANE_LANE".to_string(), run.lane.clone()),
            ("RUNLANE_TEMPLATE".to_string(), run.template.clone()),
            ("RUNLANE_STEP".to_string(), index.to_string()),
            ("RUNLANE_STEP_NAME".to_string(), spec.name.clone()),
        ];
        let (param_env, param_files) =
            if processes { step_files::param_env(&run.params, &dirs.private).await? } else { Default::default() };
        env.extend(param_env);
        let timeout = spec.timeout_ms.map(Duration::from_millis).map_or(left, |t| t.min(left));
        let settings = &self.shared.settings;
        let grace = Duration::from_millis(spec.cancel_grace_ms.unwrap_or(settings.step_grace_ms));
        Ok(StepContext {
            run_id: run.run_id,
            attempt: run.attempt,
            worker_id: self.shared.worker_id(),
            step: index,
            step_name: spec.name.clone(),
            params: run.params.clone(),
            work_dir: self.work_dir.clone(),
            artifacts_dir: dirs.artifacts,
            private_dir: dirs.private,
            env,
            param_files,
            output: self.output.for_step(index),
            cancel: token,
            timeout,
            grace,
            lease_lost: self.lease_lost.clone(),
            lease_loss_grace: Duration::from_millis(settings.lease_loss_grace_ms),
        })
    }
}

/// Runs the step's executor in its own task: a panic fails the step, never the worker.
async fn dispatch<B: Broker>(shared: Arc<Shared<B>>, action: StepAction, ctx: StepContext) -> StepOutcome {
    let task = tokio::spawn(async move {
        let ex = &shared.executors;
        match &action {
            StepAction::Shell(s) => ex.shell.run(s, &ctx).await,
            StepAction::Http(h) => ex.http.run(h, &ctx).await,
            StepAction::Noop(n) => ex.noop.run(n, &ctx).await,
            StepAction::Docker(d) => match &ex.docker {
                Some(docker) => docker.run(d, &ctx).await,
                None => StepOutcome::failed(None, "this worker has no Docker engine for docker steps"),
            },
        }
    });
    match task.await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%why, "a step executor panicked");
            StepOutcome::failed(None, format!("the step's executor panicked: {why}"))
        }
        Err(_) => StepOutcome::cancelled(),
    }
}
