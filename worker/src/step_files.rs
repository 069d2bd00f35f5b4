//! What a run task keeps on disk for its steps, and what it stores from them: the run's working
//! directory, per step an artifacts directory (`$RUNLANE_ARTIFACTS`) and a private one (the shell
//! script, params too large for the environment), all removed when the run ends; and the upload of
//! the artifacts a step produced.

use crate::executors::{ArtifactData, ParamFile, ProducedArtifact};
use crate::lease::{Retryable, persist};
use runlane_core::artifacts::{ArtifactBytes, ArtifactError, MAX_ARTIFACT_BYTES};
use runlane_core::broker::Broker;
use runlane_core::model::{ArtifactId, Lease};
use runlane_core::steps::{param_env_name, param_text};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// A param longer than this reaches steps as a file, not an environment variable: the kernel refuses
/// to start a process with one variable over 128 KiB (E2BIG), and all of them share a ~2 MiB budget
/// with the arguments. Params are at most 1 MiB in all (`enqueue_run`), so what stays in the
/// environment is bounded too.
pub const PARAM_ENV_MAX_BYTES: usize = 32 * 1024;

/// A step's directories (the run's working directory is shared by its steps).
#[derive(Debug, Clone)]
pub struct StepDirs {
    pub artifacts: PathBuf,
    pub private: PathBuf,
}

fn artifacts_root(work_dir: &Path) -> PathBuf {
    work_dir.with_extension("artifacts")
}

fn private_root(work_dir: &Path) -> PathBuf {
    work_dir.with_extension("private")
}

/// Where a step's directories are (nothing is created).
pub fn step_dirs(work_dir: &Path, index: i32) -> StepDirs {
    StepDirs {
        artifacts: artifacts_root(work_dir).join(format!("step-{index}")),
        private: private_root(work_dir).join(format!("step-{index}")),
    }
}

/// Creates the run's working directory and the step's own directories (empty).
pub async fn prepare_step_dirs(work_dir: &Path, index: i32) -> std::io::Result<StepDirs> {
    let dirs = step_dirs(work_dir, index);
    tokio::fs::create_dir_all(work_dir).await?;
    tokio::fs::create_dir_all(&dirs.artifacts).await?;
    create_private_dir(&dirs.private).await?;
    Ok(dirs)
}

async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await
}

/// Removes everything the run kept on disk.
pub async fn remove_run_dirs(work_dir: &Path) {
    for dir in [work_dir.to_path_buf(), artifacts_root(work_dir), private_root(work_dir)] {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

/// The params as `RUNLANE_PARAM_*` variables; the ones over [`PARAM_ENV_MAX_BYTES`] written to files
/// under `private` instead, named by `RUNLANE_PARAM_*_FILE`.
pub async fn param_env(
    params: &serde_json::Value,
    private: &Path,
) -> std::io::Result<(Vec<(String, String)>, Vec<ParamFile>)> {
    let mut env = Vec::new();
    let mut files = Vec::new();
    for (name, value) in params.as_object().into_iter().flatten() {
        let (var, text) = (param_env_name(name), param_text(value));
        if text.len() <= PARAM_ENV_MAX_BYTES {
            env.push((var, text));
            continue;
        }
        let path = private.join(&var);
        tokio::fs::write(&path, text.as_bytes()).await?;
        files.push(ParamFile { env: format!("{var}_FILE"), file_name: var, path });
    }
    Ok((env, files))
}

/// Uploads one artifact a step produced, again while the queue is unreachable (the same id each
/// time, so a retry after a lost reply records it once), until the lease is given up.
pub async fn save_artifact<B: Broker>(
    broker: &B,
    lease: Lease,
    step: i32,
    artifact: &ProducedArtifact,
    lease_lost: &CancellationToken,
) -> Result<ArtifactId, ArtifactError> {
    let name = artifact.name.clone();
    let bytes = match &artifact.data {
        ArtifactData::Bytes(b) => b.clone(),
        ArtifactData::File(path) => {
            let size = tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(0);
            if size > MAX_ARTIFACT_BYTES {
                return Err(ArtifactError::TooLarge { name, size });
            }
            tokio::fs::read(path).await.map_err(|e| ArtifactError::Read { name: name.clone(), source: e })?
        }
    };
    let upload = ArtifactBytes {
        id: ArtifactId(uuid::Uuid::now_v7()),
        step: Some(step),
        name: &artifact.name,
        content_type: &artifact.content_type,
        bytes,
    };
    persist(lease_lost, "uploading an artifact", || broker.put_artifact(lease, &upload)).await
}

impl Retryable for ArtifactError {
    fn retryable(&self) -> bool {
        matches!(self, ArtifactError::Queue { source, .. } if source.is_retryable())
    }
    fn lease_lost(&self) -> bool {
        self.is_lease_lost()
    }
    fn given_up() -> Self {
        ArtifactError::Queue { name: String::new(), source: runlane_core::Error::LeaseLost("lease given up".into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_params_become_files_and_small_ones_stay_in_the_environment() {
        let dir = std::env::temp_dir().join(format!("runlane-params-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await.expect("dir");
        let big = "b".repeat(PARAM_ENV_MAX_BYTES + 1);
        let params = serde_json::json!({"small": "s", "big": big, "n": 3});
        let (env, files) = param_env(&params, &dir).await.expect("params");
        assert!(env.contains(&("RUNLANE_PARAM_SMALL".into(), "s".into())));
        assert!(env.contains(&("RUNLANE_PARAM_N".into(), "3".into())));
        assert!(!env.iter().any(|(k, _)| k == "RUNLANE_PARAM_BIG"));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].env, "RUNLANE_PARAM_BIG_FILE");
        assert_eq!(tokio::fs::read_to_string(&files[0].path).await.expect("file"), big);
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
}
