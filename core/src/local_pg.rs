//! A throwaway PostgreSQL cluster made from the `initdb` and `pg_ctl` on PATH: `runlane demo`
//! runs on one, and every database test starts its own. When this process runs as root the
//! server runs as the `postgres` OS user (PostgreSQL refuses root); if that user cannot enter the
//! directory asked for (a root home directory is mode 0700), the cluster moves to a private
//! temporary directory owned by it, with its socket and log, removed when the cluster stops.
//!
//! The calls block (they wait for `pg_ctl`); from async code run them in `spawn_blocking`.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct LocalPgOptions {
    /// Durable commits. Off for tests (faster, nothing to keep); on for the demo and benchmarks.
    pub fsync: bool,
    pub max_connections: u32,
    /// Remove the directory when the handle is dropped (tests). The demo keeps it.
    pub remove_on_drop: bool,
}

impl Default for LocalPgOptions {
    fn default() -> Self {
        LocalPgOptions { fsync: true, max_connections: 200, remove_on_drop: false }
    }
}

/// A running cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalPg {
    /// Holds `data/` and `server.log`.
    dir: PathBuf,
    /// Why the cluster is not where it was asked to be (see [`LocalPg::relocation`]).
    relocated: Option<String>,
    port: u16,
    /// `Some("postgres")` when we are root: every server command runs as that user.
    run_as: Option<String>,
    remove_on_drop: bool,
}

const MISSING_HELP: &str = "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH. Install them \
     (Debian/Ubuntu: `apt-get install postgresql`, then add /usr/lib/postgresql/<version>/bin to PATH; \
     macOS: `brew install postgresql`), or point runlane at an existing server with --database-url";

impl LocalPg {
    /// Creates the cluster under `dir` if it is not there yet, then starts it on a free loopback port.
    pub fn start(dir: &Path, opts: &LocalPgOptions) -> io::Result<LocalPg> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let run_as = running_as_root()?.then(|| "postgres".to_string());
        let mut pg =
            LocalPg { dir, relocated: None, port: 0, run_as: run_as.clone(), remove_on_drop: opts.remove_on_drop };
        if let Some(user) = &run_as {
            chown_to(&pg.dir, user)?;
            if !user_can_enter(user, &pg.dir)? {
                let private = private_temp_dir(user)?;
                pg.relocated = Some(format!(
                    "the {user} OS user (PostgreSQL does not run as root) cannot enter {}, so the cluster, \
                     its socket and its log are in {} instead, removed when it stops",
                    pg.dir.display(),
                    private.display()
                ));
                pg.dir = private;
                pg.remove_on_drop = true;
            }
        }
        if !pg.data_dir().join("PG_VERSION").exists() {
            pg.run_checked(
                Command::new("initdb")
                    .args(["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
                    .arg(pg.data_dir()),
            )?;
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = {}\n\
                 fsync = {}\nsynchronous_commit = {}\nfull_page_writes = {}\nlog_min_messages = warning\n",
                opts.max_connections,
                on_off(opts.fsync),
                on_off(opts.fsync),
                on_off(opts.fsync),
            );
            append(&pg.data_dir().join("postgresql.conf"), &conf)?;
        }
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.pg_ctl(&["start", "-w", "-t", "60", "-o", &format!("-p {}", pg.port)]) {
                Ok(()) => return Ok(pg),
                Err(e) => last_err = Some(e), // the port was taken in between: try another
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("PostgreSQL did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Set when the cluster lives elsewhere than asked, saying where and why.
    pub fn relocation(&self) -> Option<&str> {
        self.relocated.as_deref()
    }

    /// A connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (runs `createdb` semantics through `psql`-free SQL by the caller is also fine).
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        let out = self.run(Command::new("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            name,
        ]))?;
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists") {
            return Ok(());
        }
        Err(io::Error::other(format!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }

    /// Stops and starts the server on the same port (fault tests: a restarted PostgreSQL).
    pub fn restart(&self) -> io::Result<()> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60", "-o", &format!("-p {}", self.port)])
    }

    /// Stops the server; `fast` disconnects clients and shuts down cleanly.
    pub fn stop(&self) -> io::Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> io::Result<()> {
        let log = self.dir.join("server.log");
        self.run_checked(Command::new("pg_ctl").arg("-D").arg(self.data_dir()).arg("-l").arg(log).args(args))
    }

    /// Runs a server binary, as the `postgres` user when we are root.
    fn run(&self, cmd: &mut Command) -> io::Result<Output> {
        let mut full = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(cmd.get_program()).args(cmd.get_args());
                c
            }
            None => {
                let mut c = Command::new(cmd.get_program());
                c.args(cmd.get_args());
                c
            }
        };
        full.current_dir(&self.dir).output().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::Error::new(io::ErrorKind::NotFound, MISSING_HELP),
            _ => e,
        })
    }

    fn run_checked(&self, cmd: &mut Command) -> io::Result<()> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let out = self.run(cmd)?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file") && stderr.contains(&program) || stderr.contains("command not found") {
            return Err(io::Error::new(io::ErrorKind::NotFound, MISSING_HELP));
        }
        let log_tail = std::fs::read_to_string(self.dir.join("server.log"))
            .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        Err(io::Error::other(format!("{program} failed: {}\n{log_tail}", stderr.trim())))
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path)?.write_all(text.as_bytes())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this process runs as root (the owner of /proc/self is the effective uid).
pub fn running_as_root() -> io::Result<bool> {
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

/// Whether `user` can enter and write `dir` (every directory above it must let it through).
fn user_can_enter(user: &str, dir: &Path) -> io::Result<bool> {
    let status = Command::new("runuser")
        .args(["-u", user, "--", "test", "-w"])
        .arg(dir)
        .arg("-a")
        .arg("-x")
        .arg(dir)
        .status()?;
    Ok(status.success())
}

/// A fresh directory under the system's temporary directory, mode 0700, owned by `user`.
fn private_temp_dir(user: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("runlane-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    chown_to(&dir, user)?;
    if !user_can_enter(user, &dir)? {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(io::Error::other(format!(
            "the {user} OS user cannot enter {} either: set TMPDIR to a directory it can enter",
            dir.display()
        )));
    }
    Ok(dir)
}

fn chown_to(dir: &Path, user: &str) -> io::Result<()> {
    let id = |flag: &str| -> io::Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| {
            io::Error::other(format!("running as root needs an OS user '{user}' to run PostgreSQL (none found)"))
        })
    };
    std::os::unix::fs::chown(dir, Some(id("-u")?), Some(id("-g")?))
}
