//! Executors: one per step kind, one file each, one trait. An executor runs one step to its end
//! and reports how it ended; it never talks to the queue itself (its output goes through the
//! [`OutputSink`], its files come back as [`ProducedArtifact`]s).

pub mod docker;
pub mod http;
pub mod noop;
pub mod shell;

use crate::output::OutputSink;
use runlane_core::model::{RunId, StepStatus, WorkerId};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a step may use while it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub run_id: RunId,
    pub attempt: i32,
    pub worker_id: WorkerId,
    /// The step's index in the run.
    pub step: i32,
    pub step_name: String,
    pub params: serde_json::Value,
    /// The run's working directory (exists; removed after the run).
    pub work_dir: PathBuf,
    /// Empty directory for this step; files left in it become artifacts (`$RUNLANE_ARTIFACTS`).
    pub artifacts_dir: PathBuf,
    /// The step's own directory on the worker, out of the step's sight (mode 0700): its shell script
    /// and large params.
    pub private_dir: PathBuf,
    /// RUNLANE_RUN_ID, RUNLANE_ATTEMPT, RUNLANE_STEP, RUNLANE_PARAM_* … for processes the step starts.
    pub env: Vec<(String, String)>,
    /// Params too large for the environment (the kernel caps one variable at 128 KiB), written to
    /// files; the step gets their paths as `RUNLANE_PARAM_<NAME>_FILE`.
    pub param_files: Vec<ParamFile>,
    pub output: OutputSink,
    /// Fired when the run is cancelled or its lease is lost: stop the step (with `grace`).
    pub cancel: CancellationToken,
    /// The step's own timeout, already capped by what is left of the run's.
    pub timeout: Duration,
    /// Between the polite stop (SIGTERM) and the forced one (SIGKILL).
    pub grace: Duration,
    /// Fired when the worker gives the run's lease up: the grace is cut to `lease_loss_grace`, as
    /// the run is about to start elsewhere.
    pub lease_lost: CancellationToken,
    pub lease_loss_grace: Duration,
}

impl StepContext {
    /// Waits out the grace between SIGTERM and SIGKILL: the step's own, cut short to
    /// `lease_loss_grace` from the moment the lease is given up.
    pub async fn grace_period(&self) {
        let hurried = async {
            self.lease_lost.cancelled().await;
            tokio::time::sleep(self.lease_loss_grace).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            _ = hurried => {}
        }
    }
}

/// A param passed as a file: `env` (`RUNLANE_PARAM_<NAME>_FILE`) names it; `file_name` is its name
/// in the directory steps find such files in; `path` is where it is on the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFile {
    pub env: String,
    pub file_name: String,
    pub path: PathBuf,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    /// Why it failed, for a person: "exit code 3", "timed out after 30 s", "image not found".
    pub error: Option<String>,
    pub artifacts: Vec<ProducedArtifact>,
}

impl StepOutcome {
    pub fn succeeded(exit_code: Option<i32>) -> Self {
        StepOutcome { status: StepStatus::Succeeded, exit_code, error: None, artifacts: Vec::new() }
    }

    pub fn failed(exit_code: Option<i32>, error: impl Into<String>) -> Self {
        StepOutcome { status: StepStatus::Failed, exit_code, error: Some(error.into()), artifacts: Vec::new() }
    }

    pub fn timed_out(after: Duration) -> Self {
        StepOutcome {
            status: StepStatus::TimedOut,
            exit_code: None,
            error: Some(format!("timed out after {} ms", after.as_millis())),
            artifacts: Vec::new(),
        }
    }

    pub fn cancelled() -> Self {
        StepOutcome {
            status: StepStatus::Cancelled,
            exit_code: None,
            error: Some("cancelled".into()),
            artifacts: Vec::new(),
        }
    }
}

/// A file or a body a step produced, stored by the run task (inline or in the object store).
#[derive(Debug, Clone, PartialEq)]
pub struct ProducedArtifact {
    pub name: String,
    pub content_type: String,
    pub data: ArtifactData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactData {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Runs one kind of step.
pub trait Executor: Send + Sync {
    /// The step's kind-specific spec (`ShellStep`, `HttpStep` …), with params not yet substituted.
    type Spec: Send + Sync;

    fn run(&self, spec: &Self::Spec, ctx: &StepContext) -> impl Future<Output = StepOutcome> + Send;
}
