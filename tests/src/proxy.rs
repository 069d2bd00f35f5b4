//! A TCP proxy the test controls, to put between a worker and its queue (PostgreSQL or the
//! executor API: [`crate::process::Fleet::upstream`]) and then cut: while blackholed it forwards
//! nothing in either direction and accepts new connections without answering, as a dead network
//! link would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    blackholed: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_on("127.0.0.1:0", upstream).await
    }

    /// Listens on `bind` (e.g. `0.0.0.0:0`, to be reachable from containers) and forwards to `upstream`.
    pub async fn start_on(bind: &str, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(bind).await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let blackholed = Arc::new(AtomicBool::new(false));
        let flag = blackholed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pipe(cr, sw, flag.clone()));
                    tokio::spawn(pipe(sr, cw, flag));
                });
            }
        });
        Proxy { addr, blackholed }
    }

    pub fn set_blackholed(&self, on: bool) {
        self.blackholed.store(on, Ordering::SeqCst);
    }
}

/// Copies bytes while the link is up; while it is cut, holds them back (nothing is delivered).
/// Bytes read just as the link was cut are held too and delivered when it comes back, as TCP
/// would retransmit them: a cut delays a connection's bytes, it never drops some and delivers the
/// rest.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while_cut(&cut).await;
        let read = from.read(&mut buf).await;
        while_cut(&cut).await;
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn while_cut(cut: &AtomicBool) {
    while cut.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Unix-socket proxy in front of the Docker engine's socket, which a test can cut: then new
/// connections fail and open ones are dropped, as when the engine goes away.
#[derive(Debug)]
pub struct UnixProxy {
    pub path: std::path::PathBuf,
    cut: tokio::sync::watch::Sender<bool>,
}

impl UnixProxy {
    pub async fn start(upstream: &str) -> UnixProxy {
        let path = std::env::temp_dir().join(format!("runlane-docker-{}.sock", uuid::Uuid::new_v4().simple()));
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix socket");
        let (cut, watch) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            let mut stop = watch.clone();
            loop {
                let client = tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted { Ok((c, _)) => c, Err(_) => return },
                };
                let (upstream, mut stop) = (upstream.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::UnixStream::connect(&upstream).await else { return };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        UnixProxy { path, cut }
    }

    /// The engine "goes away": the socket file is removed and every open connection dropped.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for UnixProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
