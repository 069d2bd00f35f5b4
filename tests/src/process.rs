//! Real `runlane` processes for fleet and fault tests: spawn with test-sized timings, signal,
//! kill -9, read their logs. Tests that use this live in cli/tests/, where cargo guarantees the
//! `runlane` binary is built (`CARGO_BIN_EXE_runlane`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Timings small enough for tests: lease 2 s, heartbeat 0.5 s, sweep every 0.25 s.
pub const TEST_ENV: [(&str, &str); 6] = [
    ("RUNLANE__WORKER__HEARTBEAT_INTERVAL_MS", "500"),
    ("RUNLANE__WORKER__LEASE_MS", "2000"),
    ("RUNLANE__WORKER__POLL_INTERVAL_MS", "200"),
    ("RUNLANE__WORKER__LISTEN", "127.0.0.1:0"),
    ("RUNLANE__SWEEPER__INTERVAL_MS", "250"),
    ("RUNLANE_LOG", "info,runlane_worker=debug,sqlx=warn"),
];

/// A `runlane worker` process. Dropping it kills it.
#[derive(Debug)]
pub struct WorkerProc {
    child: Child,
    pub name: String,
    log: PathBuf,
    dir: PathBuf,
}

impl WorkerProc {
    /// Starts `runlane worker` against `database_url`; `env` adds to (and overrides) [`TEST_ENV`].
    pub fn spawn(bin: &Path, database_url: &str, name: &str, env: &[(&str, &str)]) -> WorkerProc {
        let dir = std::env::temp_dir().join(format!("runlane-proc-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("worker dir");
        let log = dir.join("worker.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg("worker")
            .env("DATABASE_URL", database_url)
            .env("RUNLANE__WORKER__WORK_DIR", dir.join("work"))
            .env("RUNLANE__ARTIFACTS__LOCAL_DIR", dir.join("artifacts"))
            .env("RUNLANE__WORKER__HOST", name)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in TEST_ENV.iter().chain(env) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn runlane worker");
        WorkerProc { child, name: name.to_string(), log, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "{} did not exit within {limit:?}\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker's own directory (work dirs under `work/`, the artifact store under `artifacts/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 25 ms until it returns Some, failing the test after `limit`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub use runlane_worker::process_group::processes_in_group;
