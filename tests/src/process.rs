//! Real `runlane` processes for fleet and fault tests: spawn with test-sized timings, signal,
//! kill -9, read their logs. Tests that use this live in cli/tests/, where cargo guarantees the
//! `runlane` binary is built (`CARGO_BIN_EXE_runlane`).

use std::fs::File;
use std::net::SocketAddr;
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
        WorkerProc::start(bin, &["worker"], Some(database_url), name, env)
    }

    /// Starts `runlane ARGS…` with the test environment; without a database URL the process has
    /// none at all (a worker behind the executor API).
    pub fn start(
        bin: &Path,
        args: &[&str],
        database_url: Option<&str>,
        name: &str,
        env: &[(&str, &str)],
    ) -> WorkerProc {
        let dir = std::env::temp_dir().join(format!("runlane-proc-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("worker dir");
        let log = dir.join("worker.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("RUNLANE__WORKER__WORK_DIR", dir.join("work"))
            .env("RUNLANE__ARTIFACTS__LOCAL_DIR", dir.join("artifacts"))
            .env("RUNLANE__WORKER__HOST", name)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url);
        }
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

/// How long a test waits for a state (a run to finish, a process to go) before it calls it hung. A
/// guard against hangs, not a measure of speed: latency targets are measured by `runlane bench`, and
/// a loaded 2-core machine running the whole suite can be slow.
pub const PATIENCE: Duration = Duration::from_secs(120);

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

/// How a test's workers reach the queue: PostgreSQL directly, or a `runlane api` process (then the
/// workers hold only a worker token). Fleet and fault tests run once per kind; cutting a worker off
/// from PostgreSQL becomes cutting it off from the API.
#[derive(Debug)]
pub enum Fleet {
    Postgres { database_url: String },
    Http { api: WorkerProc, base: String, token: String },
}

impl Fleet {
    pub fn postgres(database_url: &str) -> Fleet {
        Fleet::Postgres { database_url: database_url.to_string() }
    }

    /// Starts `runlane api` over the database (it sweeps every 250 ms) and makes a worker token.
    pub async fn http(bin: &Path, database_url: &str, pool: &sqlx::PgPool) -> Fleet {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let listen = format!("127.0.0.1:{port}");
        let api = WorkerProc::start(bin, &["api", "--listen", &listen], Some(database_url), "api", &[]);
        let base = format!("http://{listen}");
        let ready = format!("{base}/readyz");
        wait_until("the API to be ready", Duration::from_secs(20), || async {
            reqwest::get(&ready).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        let (_, token) = crate::api::token(pool, "worker", None).await;
        Fleet::Http { api, base, token }
    }

    /// Over the executor API when `http`, else PostgreSQL directly.
    pub async fn of(bin: &Path, t: &crate::TestDb, http: bool) -> Fleet {
        if http { Fleet::http(bin, &t.url, &t.pool).await } else { Fleet::postgres(&t.url) }
    }

    /// A worker process of this fleet.
    pub fn worker(&self, bin: &Path, name: &str, env: &[(&str, &str)]) -> WorkerProc {
        self.spawn(bin, self.url(), name, env)
    }

    /// Where this fleet's workers connect: PostgreSQL, or the executor API. A test that cuts a
    /// worker off puts a [`crate::proxy::Proxy`] in front of it and starts the worker
    /// [`Fleet::worker_via`] the proxy.
    pub fn upstream(&self) -> SocketAddr {
        let url = reqwest::Url::parse(self.url()).expect("the fleet's URL");
        let (host, port) = (url.host_str().expect("a host"), url.port().expect("a port"));
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).expect("resolve").next().expect("an address")
    }

    /// A worker process of this fleet whose connection to the [`Fleet::upstream`] goes to `via` instead.
    pub fn worker_via(&self, bin: &Path, name: &str, env: &[(&str, &str)], via: SocketAddr) -> WorkerProc {
        let mut url = reqwest::Url::parse(self.url()).expect("the fleet's URL");
        url.set_ip_host(via.ip()).expect("an IP host");
        url.set_port(Some(via.port())).expect("a port");
        self.spawn(bin, url.as_str(), name, env)
    }

    /// The database URL, or the API's base URL.
    fn url(&self) -> &str {
        match self {
            Fleet::Postgres { database_url } => database_url,
            Fleet::Http { base, .. } => base,
        }
    }

    /// A worker connecting to `url`: a database URL, or the API's base URL with the worker token.
    fn spawn(&self, bin: &Path, url: &str, name: &str, env: &[(&str, &str)]) -> WorkerProc {
        match self {
            Fleet::Postgres { .. } => WorkerProc::spawn(bin, url, name, env),
            Fleet::Http { token, .. } => {
                let mut all = vec![("RUNLANE_BROKER", url), ("RUNLANE_TOKEN", token.as_str())];
                all.extend_from_slice(env);
                WorkerProc::start(bin, &["worker"], None, name, &all)
            }
        }
    }
}

/// `runlane tail RUN` as a child process with its stdout piped (killed when dropped).
pub fn spawn_tail(bin: &Path, database_url: &str, run: runlane_core::model::RunId) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .args(["tail", &run.to_string()])
        .env("DATABASE_URL", database_url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("runlane tail")
}
