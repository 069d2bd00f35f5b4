//! The real Docker engine for docker-step tests: the test image (imported from a static busybox,
//! no registry), and what containers a run left behind.

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use runlane_core::model::RunId;
use runlane_core::settings::DockerSettings;
use runlane_worker::containers::{self, LABEL_RUN};
use std::collections::HashMap;

pub const TEST_IMAGE: &str = "runlane-busybox:latest";
const BUSYBOX: &str = "/bin/busybox";

/// The engine, with the test image present.
pub async fn docker_with_image() -> Docker {
    let docker = containers::connect(&DockerSettings::default()).await.expect("a Docker engine for docker tests");
    if docker.inspect_image(TEST_IMAGE).await.is_err() {
        containers::import_busybox_image(&docker, TEST_IMAGE, std::path::Path::new(BUSYBOX))
            .await
            .expect("import the test image from /bin/busybox (busybox-static)");
    }
    docker
}

/// Every container (running or not) labelled with this run.
pub async fn containers_of(docker: &Docker, run: RunId) -> Vec<ContainerSummary> {
    let label = format!("{LABEL_RUN}={run}");
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![label.as_str()])]);
    let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    docker.list_containers(Some(opts)).await.expect("list containers")
}

/// The host's address on Docker's default bridge (docker0).
pub fn bridge_gateway() -> String {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]).output().expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).expect("docker0 has an IPv4 address");
    cidr.split('/').next().expect("address").to_string()
}
