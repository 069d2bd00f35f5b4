//! The `docker` step: a container through the Docker Engine API (bollard). Image by pull policy,
//! command and env with params substituted (never through a shell), limits on memory, CPU and
//! pids, no network unless an allowed one is named, host mounts only from the allow-list (checked
//! before anything is created), labels tying the container to its run. Logs are followed per
//! stream; an OOM kill is reported as such; cancel or timeout stops the container (SIGTERM, then
//! SIGKILL after the grace); the container is always removed. Listed paths are copied out as
//! artifacts before removal.

use super::{ArtifactData, Executor, ProducedArtifact, StepContext, StepOutcome};
use crate::containers::{LABEL_ATTEMPT, LABEL_FLEET, LABEL_RUN, LABEL_STEP, LABEL_WORKER};
use crate::executors::shell::content_type;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use runlane_core::model::Stream;
use runlane_core::steps::{DockerStep, PullPolicy};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest artifact copied out of a container.
const MAX_COPY_BYTES: usize = 256 << 20;

/// Where params too large for the environment are, inside a step's container.
const CONTAINER_PARAMS_DIR: &str = "/run/runlane/params";

#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    /// Canonical host paths a step may mount (with what is below them).
    allowed_mounts: Vec<PathBuf>,
    allowed_networks: Vec<String>,
    /// The fleet id every container is labelled with (see `containers::reap_orphans`).
    fleet: String,
}

impl DockerExecutor {
    pub fn new(docker: Docker, fleet: String, allowed_mounts: &[PathBuf], allowed_networks: &[String]) -> Self {
        let allowed_mounts = allowed_mounts.iter().filter_map(|p| p.canonicalize().ok()).collect();
        DockerExecutor { docker, allowed_mounts, allowed_networks: allowed_networks.to_vec(), fleet }
    }

    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

impl Executor for DockerExecutor {
    type Spec = DockerStep;

    async fn run(&self, spec: &DockerStep, ctx: &StepContext) -> StepOutcome {
        let config = match self.container_config(spec, ctx) {
            Ok(c) => c,
            Err(e) => return refuse(ctx, e).await,
        };
        if let Err(e) = self.ensure_image(spec, ctx).await {
            return refuse(ctx, e).await;
        }
        let name = format!("runlane-{}-{}-{}", ctx.run_id, ctx.attempt, ctx.step);
        let create = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = match self.docker.create_container(Some(create), config).await {
            Ok(created) => created.id,
            Err(e) => return refuse(ctx, format!("creating the container: {}", engine_error(&e))).await,
        };
        let mut outcome = match self.upload_param_files(&id, ctx).await {
            Ok(()) => self.run_container(&id, ctx).await,
            Err(e) => refuse(ctx, e).await,
        };
        outcome.artifacts = self.copy_artifacts(&id, spec, ctx).await;
        let remove = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        if let Err(e) = self.docker.remove_container(&id, Some(remove)).await {
            tracing::warn!(container = %id, error = %e, "could not remove the step's container; the reaper will");
        }
        outcome
    }
}

async fn refuse(ctx: &StepContext, why: String) -> StepOutcome {
    let _ = ctx.output.line(Stream::Stderr, &format!("runlane: {why}")).await;
    StepOutcome::failed(None, why)
}

/// The engine's own message for a server error, else the client's.
fn engine_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl DockerExecutor {
    fn container_config(&self, spec: &DockerStep, ctx: &StepContext) -> Result<ContainerCreateBody, String> {
        let spec = spec.render(&ctx.params)?;
        let mut env: Vec<String> = ctx.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(ctx.param_files.iter().map(|f| format!("{}={CONTAINER_PARAMS_DIR}/{}", f.env, f.file_name)));
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let network = match &spec.network {
            None => "none".to_string(),
            Some(n) if n == "none" || self.allowed_networks.contains(n) => n.clone(),
            Some(n) => {
                return Err(format!(
                    "network '{n}' is not allowed on this worker (docker.allowed_networks: {})",
                    list_or_none(&self.allowed_networks)
                ));
            }
        };
        let mut binds = Vec::new();
        for m in &spec.mounts {
            let source = self.allowed_source(&m.source)?;
            binds.push(format!("{}:{}{}", source.display(), m.target, if m.read_only { ":ro" } else { "" }));
        }
        let labels = HashMap::from([
            (LABEL_FLEET.to_string(), self.fleet.clone()),
            (LABEL_RUN.to_string(), ctx.run_id.to_string()),
            (LABEL_ATTEMPT.to_string(), ctx.attempt.to_string()),
            (LABEL_WORKER.to_string(), ctx.worker_id.to_string()),
            (LABEL_STEP.to_string(), ctx.step.to_string()),
        ]);
        let memory = spec.memory_mb.map(|mb| (mb * 1024 * 1024) as i64);
        let host_config = HostConfig {
            memory,
            memory_swap: memory, // no swap beyond the limit: exceeding it is an OOM kill
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: spec.pids_limit,
            network_mode: Some(network),
            binds: (!binds.is_empty()).then_some(binds),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then_some(spec.command),
            entrypoint: spec.entrypoint,
            env: Some(env),
            working_dir: spec.working_dir.clone(),
            user: spec.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// Copies the params too large for the environment into the created container.
    async fn upload_param_files(&self, id: &str, ctx: &StepContext) -> Result<(), String> {
        if ctx.param_files.is_empty() {
            return Ok(());
        }
        let tar = param_tar(&ctx.param_files).map_err(|e| format!("packing large params: {e}"))?;
        let opts = UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| format!("copying large params into the container: {}", engine_error(&e)))
    }

    /// A mount source, if it lies under an allowed path (after resolving links and `..`).
    fn allowed_source(&self, source: &str) -> Result<PathBuf, String> {
        let path =
            Path::new(source).canonicalize().map_err(|e| format!("mount source '{source}' cannot be used: {e}"))?;
        if self.allowed_mounts.iter().any(|allowed| path.starts_with(allowed)) {
            Ok(path)
        } else {
            let allowed: Vec<String> = self.allowed_mounts.iter().map(|p| p.display().to_string()).collect();
            Err(format!("mount source '{source}' is outside docker.allowed_mounts ({})", list_or_none(&allowed)))
        }
    }

    async fn ensure_image(&self, spec: &DockerStep, ctx: &StepContext) -> Result<(), String> {
        let present = match self.docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
            Err(e) => return Err(format!("docker engine: {}", engine_error(&e))),
        };
        match (spec.pull_policy, present) {
            (PullPolicy::Never, false) => {
                Err(format!("image '{}' is not present and pull_policy is never", spec.image))
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, true) => Ok(()),
            (PullPolicy::IfNotPresent, false) | (PullPolicy::Always, _) => {
                let _ = ctx.output.line(Stream::Stderr, &format!("runlane: pulling {}", spec.image)).await;
                let opts = CreateImageOptionsBuilder::new().from_image(&spec.image).build();
                let mut pull = self.docker.create_image(Some(opts), None, None);
                while let Some(step) = pull.next().await {
                    step.map_err(|e| format!("pulling image '{}': {}", spec.image, engine_error(&e)))?;
                }
                Ok(())
            }
        }
    }

    async fn run_container(&self, id: &str, ctx: &StepContext) -> StepOutcome {
        if let Err(e) = self.docker.start_container(id, None).await {
            return refuse(ctx, format!("starting the container: {}", engine_error(&e))).await;
        }
        let stopped = tokio::select! {
            _ = self.follow_logs(id, ctx) => None,
            _ = ctx.cancel.cancelled() => Some(StepOutcome::cancelled()),
            _ = tokio::time::sleep(ctx.timeout) => Some(StepOutcome::timed_out(ctx.timeout)),
        };
        if let Some(outcome) = stopped {
            self.stop(id, ctx).await;
            let _ = ctx.output.finish().await;
            return outcome;
        }
        match self.docker.inspect_container(id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                let code = state.exit_code.map(|c| c as i32);
                if state.oom_killed == Some(true) {
                    StepOutcome::failed(code, "OOM-killed: the container exceeded its memory limit")
                } else if code == Some(0) {
                    StepOutcome::succeeded(code)
                } else {
                    StepOutcome::failed(code, format!("exit code {}", code.unwrap_or(-1)))
                }
            }
            Err(e) => StepOutcome::failed(None, format!("inspecting the container: {}", engine_error(&e))),
        }
    }

    /// Follows stdout and stderr until the container stops; flushes partial lines after a pause.
    async fn follow_logs(&self, id: &str, ctx: &StepContext) {
        let opts = LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
        let mut logs = self.docker.logs(id, Some(opts));
        loop {
            match tokio::time::timeout(Duration::from_millis(200), logs.next()).await {
                Ok(Some(Ok(LogOutput::StdOut { message }))) => {
                    let _ = ctx.output.write(Stream::Stdout, &message).await;
                }
                Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                    let _ = ctx.output.write(Stream::Stderr, &message).await;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    tracing::warn!(container = %id, error = %e, "log stream broke");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = ctx.output.flush_partial(Stream::Stdout).await;
                    let _ = ctx.output.flush_partial(Stream::Stderr).await;
                }
            }
        }
        // The stream can end a moment before the engine records the exit.
        let mut wait = self.docker.wait_container(id, None);
        while wait.next().await.is_some() {}
    }

    /// SIGTERM, SIGKILL after the grace (see [`StepContext::grace_period`]).
    async fn stop(&self, id: &str, ctx: &StepContext) {
        let term = KillContainerOptionsBuilder::new().signal("SIGTERM").build();
        let _ = self.docker.kill_container(id, Some(term)).await;
        let mut wait = self.docker.wait_container(id, None);
        tokio::select! {
            _ = async { while wait.next().await.is_some() {} } => return,
            _ = ctx.grace_period() => {}
        }
        let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        let _ = self.docker.kill_container(id, Some(kill)).await;
    }

    /// Copies each listed path out of the (stopped) container; a directory gives one artifact per file.
    async fn copy_artifacts(&self, id: &str, spec: &DockerStep, ctx: &StepContext) -> Vec<ProducedArtifact> {
        let mut found = Vec::new();
        for path in &spec.artifacts {
            let opts = DownloadFromContainerOptionsBuilder::new().path(path).build();
            let mut stream = self.docker.download_from_container(id, Some(opts));
            let mut tar_bytes = Vec::new();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) if tar_bytes.len() + b.len() <= MAX_COPY_BYTES => tar_bytes.extend_from_slice(&b),
                    Ok(_) => failed = Some(format!("over {MAX_COPY_BYTES} bytes")),
                    Err(e) => failed = Some(engine_error(&e)),
                }
                if failed.is_some() {
                    break;
                }
            }
            match failed.map_or_else(|| untar(&tar_bytes), Err) {
                Ok(files) => found.extend(files),
                Err(e) => {
                    let _ = ctx.output.line(Stream::Stderr, &format!("runlane: artifact {path}: {e}")).await;
                }
            }
        }
        let _ = ctx.output.finish().await;
        found
    }
}

/// The regular files of a tar stream as artifacts named by their path in it.
fn untar(bytes: &[u8]) -> Result<Vec<ProducedArtifact>, String> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        out.push(ProducedArtifact { content_type: content_type(&name).into(), name, data: ArtifactData::Bytes(data) });
    }
    Ok(out)
}

/// A tar of `run/runlane/params/<file>` (directories world-readable, files readable by all: the
/// container's user is whatever the step says).
fn param_tar(files: &[super::ParamFile]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data)
    };
    for dir in ["run/", "run/runlane/", "run/runlane/params/"] {
        add(dir, &[], 0o755, tar::EntryType::Directory)?;
    }
    for f in files {
        let data = std::fs::read(&f.path)?;
        add(
            &format!("{}/{}", CONTAINER_PARAMS_DIR.trim_start_matches('/'), f.file_name),
            &data,
            0o644,
            tar::EntryType::Regular,
        )?;
    }
    tar.into_inner()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}
