//! `runlane api`: the executor API server (and a sweeper, so a fleet of HTTP-brokered workers
//! that reach no database is still swept).

use super::common::{ConfigArgs, connect};
use runlane_worker::metrics::Metrics;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to serve on (api.listen)
    #[arg(long)]
    listen: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(l) = &args.listen {
        overrides.push(("api.listen", l.clone()));
    }
    let settings = args.config.load(overrides)?;
    let pool = connect(&settings, "runlane-api").await?;
    let stop = CancellationToken::new();
    let state = runlane_executor_api::state(&settings, pool.clone(), stop.clone()).await.map_err(anyhow::Error::msg)?;
    let store = state.artifacts.clone();
    let (addr, server) = runlane_executor_api::serve(state, &settings.api.listen, stop.clone()).await?;
    if settings.sweeper.enabled {
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(runlane_worker::schedule_ticker::run(
            pool.clone(),
            settings.sweeper.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        tokio::spawn(runlane_worker::sweeper::run(pool, store, settings.sweeper.clone(), metrics, stop.clone()));
    }
    tracing::info!(%addr, "executor API listening");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    wait_for_signal().await;
    tracing::info!("stopping");
    stop.cancel();
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
