//! systemd notify protocol: READY=1 once claiming, WATCHDOG=1 while heartbeats reach the database,
//! STOPPING=1 on SIGTERM — read from a real NOTIFY_SOCKET.

use runlane_tests::TestDb;
use runlane_tests::process::{PATIENCE, WorkerProc};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// Datagrams received until `done` holds or `limit` passes.
fn receive_until(sock: &UnixDatagram, limit: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !done(&got) && start.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_speaks_the_systemd_notify_protocol() {
    let t = TestDb::new().await;
    let path = std::env::temp_dir().join(format!("runlane-notify-{}.sock", uuid::Uuid::new_v4().simple()));
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let socket_env = path.to_string_lossy().to_string();
    let mut w = WorkerProc::spawn(Path::new(BIN), &t.url, "notified", &[("NOTIFY_SOCKET", socket_env.as_str())]);
    let got = receive_until(&sock, PATIENCE, |g| {
        g.iter().any(|m| m.contains("READY=1")) && g.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2
    });
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}\n{}", w.log());
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "watchdog pings while heartbeats succeed: {got:?}"
    );
    w.signal("TERM");
    let got = receive_until(&sock, PATIENCE, |g| g.iter().any(|m| m.contains("STOPPING=1")));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert!(w.wait_exit(PATIENCE).success());
    let _ = std::fs::remove_file(&path);
}
