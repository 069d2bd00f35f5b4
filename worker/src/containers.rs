//! The Docker engine: connecting (API version negotiated: the engine may be older than bollard's
//! default), whether it answers, removing orphaned step containers, and importing a local rootfs
//! as an image (for hosts that reach no registry).

use bollard::Docker;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use runlane_core::broker::Broker;
use runlane_core::model::RunId;
use runlane_core::settings::DockerSettings;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Labels on every step container: which fleet (database), run, attempt, worker and step it belongs to.
pub const LABEL_FLEET: &str = "runlane.fleet";
pub const LABEL_RUN: &str = "runlane.run_id";
pub const LABEL_ATTEMPT: &str = "runlane.attempt";
pub const LABEL_WORKER: &str = "runlane.worker_id";
pub const LABEL_STEP: &str = "runlane.step";

/// Connects and negotiates the API version. Does not prove the engine answers: see [`answers`].
pub async fn connect(settings: &DockerSettings) -> Result<Docker, String> {
    let docker = match &settings.socket {
        Some(socket) => Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| format!("docker: {e}"))?;
    docker.negotiate_version().await.map_err(|e| format!("docker engine does not answer: {e}"))
}

/// Whether the engine answers a ping now.
pub async fn answers(docker: &Docker) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(3), docker.ping()).await.is_ok_and(|r| r.is_ok())
}

/// Removes this fleet's step containers whose run is no longer running in the attempt on their
/// label (whichever worker started them: several may share an engine; other fleets' containers are
/// never touched). Returns how many were removed.
pub async fn reap_orphans<B: Broker>(docker: &Docker, broker: &B, fleet: &str) -> Result<usize, String> {
    let ours = format!("{LABEL_FLEET}={fleet}");
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![LABEL_RUN, ours.as_str()])]);
    let list = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let containers = docker.list_containers(Some(list)).await.map_err(|e| format!("listing containers: {e}"))?;
    let labelled: Vec<(String, RunId, i32)> = containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let run = labels.get(LABEL_RUN)?.parse().ok()?;
            let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
            Some((c.id?, run, attempt))
        })
        .collect();
    if labelled.is_empty() {
        return Ok(0);
    }
    let runs: Vec<RunId> = labelled.iter().map(|(_, r, _)| *r).collect();
    let live: HashSet<(RunId, i32)> = broker
        .running_attempts(&runs)
        .await
        .map_err(|e| format!("asking which runs are live: {e}"))?
        .into_iter()
        .collect();
    let mut removed = 0;
    for (id, run, attempt) in labelled {
        if live.contains(&(run, attempt)) {
            continue; // another worker on this engine holds it
        }
        let force = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match docker.remove_container(&id, Some(force)).await {
            Ok(()) => {
                tracing::info!(%run, attempt, container = %id, "removed an orphaned step container");
                removed += 1;
            }
            Err(e) => tracing::warn!(%run, container = %id, error = %e, "could not remove an orphaned container"),
        }
    }
    Ok(removed)
}

/// Applets linked to busybox in [`import_busybox_image`].
const APPLETS: [&str; 24] = [
    "sh",
    "echo",
    "sleep",
    "cat",
    "printf",
    "seq",
    "head",
    "tail",
    "dd",
    "yes",
    "wget",
    "nc",
    "touch",
    "mkdir",
    "ls",
    "sha256sum",
    "true",
    "false",
    "env",
    "id",
    "rm",
    "cp",
    "kill",
    "trap",
];

/// Imports an image holding a static busybox (`/bin/busybox` and its applets) from `busybox`, a
/// statically linked binary such as Debian's busybox-static. No registry is involved.
pub async fn import_busybox_image(docker: &Docker, tag: &str, busybox: &Path) -> Result<(), String> {
    let binary = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut add =
        |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, link: Option<&str>| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            if let Some(target) = link {
                h.set_link_name(target)?;
            }
            h.set_cksum();
            tar.append_data(&mut h, path, data)
        };
    let io = |e: std::io::Error| format!("building the image: {e}");
    for dir in ["bin", "tmp", "work", "etc"] {
        add(dir, &[], 0o1777, tar::EntryType::Directory, None).map_err(io)?;
    }
    add("bin/busybox", &binary, 0o755, tar::EntryType::Regular, None).map_err(io)?;
    for applet in APPLETS {
        add(&format!("bin/{applet}"), &[], 0o777, tar::EntryType::Symlink, Some("busybox")).map_err(io)?;
    }
    add(
        "etc/passwd",
        b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        0o644,
        tar::EntryType::Regular,
        None,
    )
    .map_err(io)?;
    let bytes = tar.into_inner().map_err(io)?;
    let (repo, tag) = tag.split_once(':').unwrap_or((tag, "latest"));
    let opts = CreateImageOptionsBuilder::new().from_src("-").repo(repo).tag(tag).build();
    let mut progress = docker.create_image(Some(opts), Some(bollard::body_full(bytes.into())), None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| format!("importing the image: {e}"))?;
    }
    Ok(())
}
