//! One typed `Settings` per process: defaults < TOML file < `RUNLANE__…` env vars < flags.
//! Loaded once in `main`, validated with messages a person can act on, passed down by value.
//! (Logging is set before settings load, from `RUNLANE_LOG` and `RUNLANE_LOG_FORMAT`.)

use crate::model::{Lane, SessionId};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub artifacts: ArtifactSettings,
    pub sweeper: SweeperSettings,
    pub docker: DockerSettings,
    pub api: ApiSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Secret: it may carry a password. Never logged.
    pub url: Option<SecretString>,
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings { url: None, max_connections: 10 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Lanes served, in preference order.
    pub lanes: Vec<Lane>,
    /// Runs executed at once.
    pub slots: u32,
    pub heartbeat_interval_ms: u64,
    /// How long a claim holds without a heartbeat; at least 3 heartbeats.
    pub lease_ms: u64,
    /// Fallback claim poll when no NOTIFY arrives.
    pub poll_interval_ms: u64,
    /// On SIGTERM, how long running runs get to finish before they are handed back.
    pub shutdown_grace_ms: u64,
    /// A step's SIGTERM → SIGKILL grace unless the step sets its own.
    pub step_grace_ms: u64,
    /// The SIGTERM → SIGKILL grace when the worker gives a lease up (no heartbeat got through): the
    /// run is about to start elsewhere, so its processes get at most this long. Registered with the
    /// worker; the sweeper waits this long past the lease's expiry before it requeues the run.
    pub lease_loss_grace_ms: u64,
    /// Per-run working directories are made under here.
    pub work_dir: PathBuf,
    /// `/healthz`, `/readyz`, `/metrics`. Port 0 picks a free one.
    pub listen: String,
    /// The event writer flushes after this long, or when `event_batch_max` events wait.
    pub event_flush_ms: u64,
    pub event_batch_max: usize,
    /// Output kept per run: the head and the tail of it, with the truncation recorded.
    pub output_cap_bytes: usize,
    /// Names of environment variables whose values are masked in every event.
    pub secret_env: Vec<String>,
    /// Serve only the runs of this session (demo, benchmarks).
    pub session: Option<SessionId>,
    /// Shown in `workers`; the machine's host name when unset.
    pub host: Option<String>,
    /// What this worker offers beyond its executors (e.g. `gpu`, `fra1`): it claims only runs whose
    /// template `requires` nothing it lacks. `docker` is not declared: it is added while the Docker
    /// engine answers.
    pub capabilities: Vec<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lanes: Lane::ALL.to_vec(),
            slots: 4,
            heartbeat_interval_ms: 2_000,
            lease_ms: 15_000,
            poll_interval_ms: 1_000,
            shutdown_grace_ms: 30_000,
            step_grace_ms: 10_000,
            lease_loss_grace_ms: 500,
            work_dir: std::env::temp_dir().join("runlane-work"),
            listen: "127.0.0.1:9187".into(),
            event_flush_ms: 25,
            event_batch_max: 5_000,
            output_cap_bytes: 4 << 20,
            secret_env: Vec::new(),
            session: None,
            host: None,
            capabilities: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactSettings {
    /// Artifacts up to this size are stored inline in PostgreSQL; larger ones in the object store.
    pub inline_max_bytes: u64,
    /// Local object store directory (the default store).
    pub local_dir: PathBuf,
    /// `s3://bucket/prefix` to store large artifacts in S3 or DigitalOcean Spaces instead.
    pub s3_url: Option<String>,
    /// S3 endpoint, e.g. `https://fra1.digitaloceanspaces.com`.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// S3 credentials; unset: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<SecretString>,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        ArtifactSettings {
            inline_max_bytes: 256 * 1024,
            local_dir: std::env::temp_dir().join("runlane-artifacts"),
            s3_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub listen: String,
    /// Key for signing artifact download URLs. Unset: a random key per process (URLs then stop
    /// working when the API restarts, and several API replicas must share a key).
    pub signing_key: Option<SecretString>,
    /// How long a signed artifact URL stays valid.
    pub url_ttl_s: u64,
    /// Requests per second per authenticated token, and the burst above it.
    pub rate_per_s: u32,
    pub rate_burst: u32,
    /// Requests per second per client address, before authentication (what a caller with a bad or
    /// no token can cost), and the burst above it.
    pub address_rate_per_s: u32,
    pub address_rate_burst: u32,
    /// `/healthz` fails once the database has not answered for this long.
    pub liveness_bound_ms: u64,
    /// How often the database is pinged for `/healthz`.
    pub db_ping_interval_ms: u64,
    /// Largest JSON request body; artifact uploads may be up to 512 MiB.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (empty: no cross-origin access).
    pub cors_origins: Vec<String>,
    /// A comment line on an idle SSE stream this often, so proxies keep it open.
    pub sse_keepalive_ms: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: "127.0.0.1:8080".into(),
            signing_key: None,
            url_ttl_s: 900,
            rate_per_s: 100,
            rate_burst: 400,
            address_rate_per_s: 500,
            address_rate_burst: 2000,
            liveness_bound_ms: 30_000,
            db_ping_interval_ms: 2_000,
            max_body_bytes: 8 << 20,
            cors_origins: Vec::new(),
            sse_keepalive_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    /// Offer docker steps when an engine answers.
    pub enabled: bool,
    /// Engine socket (`unix:///var/run/docker.sock`); unset: `DOCKER_HOST` or the local default.
    pub socket: Option<String>,
    /// Host paths (and what is below them) a docker step may mount; nothing else.
    pub allowed_mounts: Vec<PathBuf>,
    /// Networks a docker step may join; without one a container has no network.
    pub allowed_networks: Vec<String>,
    /// How often containers of runs no longer running here are looked for and removed.
    pub reap_interval_ms: u64,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            enabled: true,
            socket: None,
            allowed_mounts: Vec::new(),
            allowed_networks: Vec::new(),
            reap_interval_ms: 10_000,
        }
    }
}

/// Whether and how often this process sweeps (and enqueues schedules' due slots). What a pass does
/// (retention, worker timeout, deadline slack) is the fleet's policy, kept in the database and set by
/// its owner (`runlane sweep --retention-s …`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperSettings {
    pub enabled: bool,
    /// Between sweeper passes (requeue expired leases, deadlines, promote due runs, silent workers).
    /// Also the longest the schedule ticker sleeps (it wakes when the next slot is due), so a
    /// schedule added meanwhile is seen within it.
    pub interval_ms: u64,
    /// Between prunes of finished runs past the retention (and of the objects of their artifacts).
    pub prune_interval_ms: u64,
}

impl Default for SweeperSettings {
    fn default() -> Self {
        SweeperSettings { enabled: true, interval_ms: 1_000, prune_interval_ms: 60_000 }
    }
}

/// Keys whose flag or env value is a comma-separated list.
const LIST_KEYS: [&str; 6] = [
    "worker.lanes",
    "worker.secret_env",
    "worker.capabilities",
    "docker.allowed_mounts",
    "docker.allowed_networks",
    "api.cors_origins",
];

impl Settings {
    /// Layers the TOML file (if any), then `RUNLANE__SECTION__KEY` env vars, then `overrides`
    /// (flags, as `("worker.slots", "8")`), over the defaults; then validates.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Settings, String> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RUNLANE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key(LIST_KEYS[0])
                .with_list_parse_key(LIST_KEYS[1])
                .with_list_parse_key(LIST_KEYS[2])
                .with_list_parse_key(LIST_KEYS[3])
                .with_list_parse_key(LIST_KEYS[4])
                .with_list_parse_key(LIST_KEYS[5]),
        );
        for (key, value) in overrides {
            builder = if LIST_KEYS.contains(key) {
                let items: Vec<String> =
                    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                builder.set_override(*key, items)
            } else {
                builder.set_override(*key, value.as_str())
            }
            .map_err(|e| format!("{key}: {e}"))?;
        }
        let settings: Settings =
            builder.build().and_then(|c| c.try_deserialize()).map_err(|e| format!("invalid settings: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types cannot: relations between values.
    pub fn validate(&self) -> Result<(), String> {
        let w = &self.worker;
        let mut problems = Vec::new();
        if w.lanes.is_empty() {
            problems.push("worker.lanes must name at least one lane (A, B, C, D)".to_string());
        }
        let mut seen = w.lanes.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != w.lanes.len() {
            problems.push("worker.lanes lists a lane twice".to_string());
        }
        for c in &w.capabilities {
            if c == "docker" {
                problems.push(
                    "worker.capabilities: docker is not declared; it is added while the Docker engine answers".into(),
                );
            } else if !is_capability_name(c) {
                problems.push(format!(
                    "worker.capabilities: '{c}' is not a capability name (lowercase letters, digits, '.', '_' and '-', \
                     starting with a letter or digit, at most 63 characters)"
                ));
            }
        }
        if w.slots == 0 {
            problems.push("worker.slots must be at least 1".to_string());
        }
        if w.heartbeat_interval_ms == 0 || w.lease_ms < 3 * w.heartbeat_interval_ms {
            problems.push(format!(
                "worker.lease_ms ({}) must be at least 3 × worker.heartbeat_interval_ms ({})",
                w.lease_ms, w.heartbeat_interval_ms
            ));
        }
        if w.lease_loss_grace_ms > 60_000 {
            problems.push(format!(
                "worker.lease_loss_grace_ms ({}) must be at most 60000: a run waits this long past its lease \
                 before it may start elsewhere",
                w.lease_loss_grace_ms
            ));
        }
        if w.event_batch_max == 0 || w.event_batch_max > 5000 {
            problems.push("worker.event_batch_max must be between 1 and 5000".to_string());
        }
        if self.sweeper.interval_ms == 0 || self.sweeper.prune_interval_ms == 0 {
            problems.push("sweeper.interval_ms and sweeper.prune_interval_ms must be above 0".to_string());
        }
        if self.database.max_connections < 2 {
            problems.push("database.max_connections must be at least 2".to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

/// A capability name as templates require it (the rule of `template_problems` in SQL).
pub fn is_capability_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().expect("defaults validate");
    }

    #[test]
    fn flags_override_and_lease_must_cover_three_heartbeats() {
        let s = Settings::load(None, &[("worker.slots", "7".into()), ("worker.lanes", "C".into())]);
        let s = s.expect("loads");
        assert_eq!(s.worker.slots, 7);
        let err = Settings::load(None, &[("worker.lease_ms", "1000".into())]).expect_err("too short");
        assert!(err.contains("3 × worker.heartbeat_interval_ms"), "{err}");
    }

    #[test]
    fn capabilities_are_names_and_docker_is_never_declared() {
        let s = Settings::load(None, &[("worker.capabilities", "gpu, fra1".into())]).expect("loads");
        assert_eq!(s.worker.capabilities, ["gpu", "fra1"]);
        let err = Settings::load(None, &[("worker.capabilities", "GPU".into())]).expect_err("not a name");
        assert!(err.contains("'GPU' is not a capability name"), "{err}");
        let err = Settings::load(None, &[("worker.capabilities", "docker".into())]).expect_err("docker");
        assert!(err.contains("docker is not declared"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("runlane-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[worker]\nslotz = 3\n").expect("write");
        let err = Settings::load(Some(&file), &[]).expect_err("typo refused");
        assert!(err.contains("slotz"), "{err}");
        std::fs::write(&file, "[worker]\nslots = 3\nlanes = [\"B\", \"A\"]\n").expect("write");
        let s = Settings::load(Some(&file), &[]).expect("valid file");
        assert_eq!((s.worker.slots, s.worker.lanes.clone()), (3, vec![Lane::B, Lane::A]));
        std::fs::remove_dir_all(&dir).ok();
    }
}
