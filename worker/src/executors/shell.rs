//! The `shell` step: `/bin/sh` running the command (written to a script file, so no argument limit
//! applies to it) in its own process group, in the run's working directory, with a clean environment
//! (the worker's own, which may hold database credentials, never reaches it). Params arrive as
//! `RUNLANE_PARAM_*` env vars (large ones as files named by `RUNLANE_PARAM_*_FILE`) and, where the
//! command says `${{ params.x }}`, as single-quoted shell words. Cancel or timeout: SIGTERM to the
//! whole group, SIGKILL after the grace. Files left in `$RUNLANE_ARTIFACTS` become artifacts.

use super::{ArtifactData, Executor, ProducedArtifact, StepContext, StepOutcome};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runlane_core::model::Stream;
use runlane_core::steps::ShellStep;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long output pipes may stay open after the step's processes are gone (a grandchild that
/// left the group with setsid could hold them forever).
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs `shell` steps. Stateless: every step gets its own process group, so one executor serves
/// every slot of the worker.
#[derive(Debug, Default)]
pub struct ShellExecutor;

/// Why the step stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    TimedOut,
}

impl Executor for ShellExecutor {
    type Spec = ShellStep;

    async fn run(&self, spec: &ShellStep, ctx: &StepContext) -> StepOutcome {
        if ctx.cancel.is_cancelled() {
            return StepOutcome::cancelled();
        }
        let mut outcome = match prepare(spec, ctx) {
            Ok(cmd) => run_command(cmd, ctx).await,
            Err(e) => {
                let _ = ctx.output.line(Stream::Stderr, &format!("runlane: {e}")).await;
                StepOutcome::failed(None, e)
            }
        };
        outcome.artifacts = collect_artifacts(&ctx.artifacts_dir);
        outcome
    }
}

fn prepare(spec: &ShellStep, ctx: &StepContext) -> Result<Command, String> {
    let spec = spec.render(&ctx.params)?;
    let dir = working_dir(&ctx.work_dir, spec.working_dir.as_deref())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("working directory {}: {e}", dir.display()))?;
    let script_file = ctx.private_dir.join("script.sh");
    std::fs::write(&script_file, &spec.command).map_err(|e| format!("writing the step's script: {e}"))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(&script_file)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", &ctx.work_dir)
        .env("LANG", "C.UTF-8")
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!("env name '{k}' is not a valid variable name"));
        }
        cmd.env(k, v);
    }
    for file in &ctx.param_files {
        cmd.env(&file.env, &file.path);
    }
    cmd.env("RUNLANE_ARTIFACTS", &ctx.artifacts_dir);
    Ok(cmd)
}

/// The step's directory: the run's, or a relative path inside it.
fn working_dir(run_dir: &Path, sub: Option<&str>) -> Result<PathBuf, String> {
    let Some(sub) = sub else { return Ok(run_dir.to_path_buf()) };
    let rel = Path::new(sub);
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("working_dir '{sub}' must be a relative path inside the run's directory"));
    }
    Ok(run_dir.join(rel))
}

async fn run_command(mut cmd: Command, ctx: &StepContext) -> StepOutcome {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepOutcome::failed(None, format!("could not start /bin/sh: {e}")),
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut pumps = {
        let out = ctx.output.clone();
        let err = ctx.output.clone();
        tokio::spawn(async move {
            let a = async {
                if let Some(s) = stdout {
                    let _ = out.pump(Stream::Stdout, s).await;
                }
            };
            let b = async {
                if let Some(s) = stderr {
                    let _ = err.pump(Stream::Stderr, s).await;
                }
            };
            tokio::join!(a, b);
        })
    };
    let (status, stop) = tokio::select! {
        status = child.wait() => (status, None),
        _ = ctx.cancel.cancelled() => (terminate(&mut child, pgid, ctx).await, Some(Stop::Cancelled)),
        _ = tokio::time::sleep(ctx.timeout) => (terminate(&mut child, pgid, ctx).await, Some(Stop::TimedOut)),
    };
    // Whatever the shell left behind in its group goes too, so the pipes close.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if tokio::time::timeout(PIPE_DRAIN_LIMIT, &mut pumps).await.is_err() {
        // Stop reading, or the pumps would write into the step's output after it ended.
        pumps.abort();
        let _ = ctx
            .output
            .line(Stream::Stderr, "runlane: output pipes stayed open after the step ended; stopped reading")
            .await;
    }
    match (stop, status) {
        (Some(Stop::Cancelled), _) => StepOutcome::cancelled(),
        (Some(Stop::TimedOut), _) => StepOutcome::timed_out(ctx.timeout),
        (None, Ok(status)) => from_status(status),
        (None, Err(e)) => StepOutcome::failed(None, format!("waiting for the step: {e}")),
    }
}

fn from_status(status: ExitStatus) -> StepOutcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => StepOutcome::succeeded(Some(0)),
        (Some(code), _) => StepOutcome::failed(Some(code), format!("exit code {code}")),
        (None, Some(sig)) => StepOutcome::failed(None, format!("killed by signal {sig}")),
        (None, None) => StepOutcome::failed(None, "ended without an exit code"),
    }
}

/// SIGTERM to the group, SIGKILL after the grace (see [`StepContext::grace_period`]) if the shell has
/// not exited.
async fn terminate(child: &mut Child, pgid: Option<Pid>, ctx: &StepContext) -> std::io::Result<ExitStatus> {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    tokio::select! {
        status = child.wait() => return status,
        _ = ctx.grace_period() => {}
    }
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    child.wait().await
}

/// Every regular file under the step's artifact directory, named by its '/'-separated path relative
/// to it, in name order. Symlinks are skipped: a step must not turn a link to the worker's own files
/// (its config, its credentials) into an artifact.
pub fn collect_artifacts(dir: &Path) -> Vec<ProducedArtifact> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let Ok(rel) = path.strip_prefix(dir) else { continue };
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                found.push(ProducedArtifact {
                    content_type: content_type(&name).into(),
                    name,
                    data: ArtifactData::File(path),
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// A content type from a file name's extension (shared with docker steps), so the Runboard can show
/// text inline and offer the rest as downloads.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("txt" | "log" | "sql" | "md") => "text/plain",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/html",
        Some("csv") => "text/csv",
        Some("yaml" | "yml") => "application/yaml",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        Some("zip") => "application/zip",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_dir_stays_inside_the_run() {
        let run = Path::new("/w/run");
        assert_eq!(working_dir(run, Some("sub/dir")).expect("ok"), Path::new("/w/run/sub/dir"));
        assert!(working_dir(run, Some("../etc")).is_err());
        assert!(working_dir(run, Some("/etc")).is_err());
        assert_eq!(working_dir(run, None).expect("ok"), run);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("report.TXT"), "text/plain");
        assert_eq!(content_type("dump.tar"), "application/x-tar");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
