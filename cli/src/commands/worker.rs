//! `runlane worker`: the daemon. SIGTERM/SIGINT drain (a second one interrupts at once), SIGHUP
//! reloads lanes and slots from the config file and environment.

use super::common::{ConfigArgs, connect};
use anyhow::Context;
use runlane_worker::daemon::Daemon;
use runlane_worker::http_broker::HttpBroker;
use runlane_worker::worker::{Capacity, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Lanes to serve, in preference order (e.g. B,A)
    #[arg(long)]
    lanes: Option<String>,
    /// Runs executed at once
    #[arg(long)]
    slots: Option<u32>,
    /// Capabilities this worker offers, for templates that require them (e.g. gpu,fra1); docker is
    /// added while the Docker engine answers
    #[arg(long)]
    capabilities: Option<String>,
    /// Address of /healthz, /readyz and /metrics
    #[arg(long)]
    listen: Option<String>,
    /// Drain grace on SIGTERM, in milliseconds
    #[arg(long)]
    shutdown_grace_ms: Option<u64>,
    /// Serve only this session's runs
    #[arg(long)]
    session: Option<String>,
    /// Reach the queue through the executor API at this URL instead of PostgreSQL (no database
    /// credentials needed; the API sweeps)
    #[arg(long, env = "RUNLANE_BROKER")]
    broker: Option<String>,
    /// The worker token for --broker
    #[arg(long, env = "RUNLANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Args {
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = Vec::new();
        if let Some(v) = &self.lanes {
            o.push(("worker.lanes", v.clone()));
        }
        if let Some(v) = self.slots {
            o.push(("worker.slots", v.to_string()));
        }
        if let Some(v) = &self.capabilities {
            o.push(("worker.capabilities", v.clone()));
        }
        if let Some(v) = &self.listen {
            o.push(("worker.listen", v.clone()));
        }
        if let Some(v) = self.shutdown_grace_ms {
            o.push(("worker.shutdown_grace_ms", v.to_string()));
        }
        if let Some(v) = &self.session {
            o.push(("worker.session", v.clone()));
        }
        o
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(args.overrides())?;
    let shutdown = Shutdown::default();
    let capacity = Capacity { lanes: settings.worker.lanes.clone(), slots: settings.worker.slots };
    let (capacity_tx, capacity_rx) = watch::channel(capacity);
    let grace = Duration::from_millis(settings.worker.shutdown_grace_ms);
    let daemon = match &args.broker {
        Some(url) => {
            let token = args.token.as_deref().context("--broker needs a worker token: --token or RUNLANE_TOKEN")?;
            let broker = Arc::new(HttpBroker::new(url, token).map_err(anyhow::Error::msg)?);
            Daemon::start_with(settings, broker, None, shutdown.clone(), capacity_rx).await
        }
        None => {
            let pool = connect(&settings, "runlane-worker").await?;
            Daemon::start(settings, pool, shutdown.clone(), capacity_rx).await
        }
    }
    .map_err(anyhow::Error::msg)?;
    tokio::spawn(handle_signals(shutdown, grace, args, capacity_tx));
    daemon.wait().await.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

async fn handle_signals(shutdown: Shutdown, grace: Duration, args: Args, capacity: watch::Sender<Capacity>) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                match args.config.load(args.overrides()) {
                    Ok(s) => { let _ = capacity.send(Capacity { lanes: s.worker.lanes, slots: s.worker.slots }); }
                    Err(e) => tracing::error!(error = %e, "reload refused; keeping the current lanes and slots"),
                }
                continue;
            }
        }
        if shutdown.stop_claiming.is_cancelled() {
            tracing::warn!("second signal: interrupting running runs now");
            shutdown.interrupt.cancel();
            return;
        }
        tracing::info!(grace_ms = grace.as_millis() as u64, "signal received: draining");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        shutdown.stop_claiming.cancel();
        let interrupt = shutdown.interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if !interrupt.is_cancelled() {
                tracing::warn!("drain grace over: interrupting running runs");
                interrupt.cancel();
            }
        });
    }
}
