//! `runlane bench`: the queue's figures on this machine, against its own throwaway PostgreSQL
//! (fsync on), each measured in this run: no-op runs through the whole life cycle (over PostgreSQL
//! and over the executor API), the raw SQL floor beside them, bulk enqueue, pickup, cancel, kill -9
//! recovery, log lines stored per second, tail latency, an idle worker's memory, and throughput
//! again with a large finished and future backlog. `--compare FILE` prints an earlier `--json`
//! output beside this one.
//!
//! # Layout
//! - [`setup`]: the cluster, the templates, in-process workers and API.
//! - [`throughput`]: runs/s (both brokers, aged), the SQL floor, bulk enqueue.
//! - [`latency`]: pickup, cancel, tail, recovery, log lines, idle memory.

mod latency;
mod setup;
mod throughput;

use anyhow::Context;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Connections of the SQL floor: as many as the two workers' batchers and claimers keep busy.
const FLOOR_CLIENTS: u32 = 8;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// No-op runs for the throughput figures
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// In-process workers for the throughput figures
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots per worker for the throughput figures (runs in flight: the batches grow with them)
    #[arg(long, default_value_t = 1024)]
    slots: u32,
    /// Sequential runs timed for pickup latency
    #[arg(long, default_value_t = 200)]
    pickups: u32,
    /// Cancels timed
    #[arg(long, default_value_t = 20)]
    cancels: u32,
    /// Lines written by the chatty step of the log figure
    #[arg(long, default_value_t = 200_000)]
    log_lines: u32,
    /// Lease for the kill -9 recovery figure, milliseconds (the worker default is 15000)
    #[arg(long, default_value_t = 15_000)]
    lease_ms: u64,
    /// Finished runs present for the aged throughput figure (0: skip it)
    #[arg(long, default_value_t = 1_000_000)]
    aged_finished: u32,
    /// Future (scheduled) runs present for the aged throughput figure
    #[arg(long, default_value_t = 200_000)]
    aged_future: u32,
    /// Skip the kill -9 recovery figure (it takes a lease and more)
    #[arg(long)]
    skip_recovery: bool,
    /// Only the throughput figures over PostgreSQL and the floor (a quick look)
    #[arg(long)]
    quick: bool,
    /// Print an earlier `--json` output beside this run's figures
    #[arg(long)]
    compare: Option<PathBuf>,
    /// One JSON object with every figure
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let previous: Option<Value> = match &args.compare {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str(text.trim()).with_context(|| format!("{} is not a bench JSON", path.display()))?)
        }
        None => None,
    };
    let say = |s: &str| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let bench = setup::Bench::start().await?;
    let mut figures = json!({
        "runs": args.runs, "workers": args.workers, "slots": args.slots,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let mut put = |key: &str, value: f64| figures[key] = json!((value * 100.0).round() / 100.0);

    say(&format!("bulk enqueue of {} runs (enqueue_runs) …", args.runs));
    let (session, enqueue) = throughput::bulk_enqueue(&bench, args.runs).await?;
    say(&format!("  {enqueue:.0} runs/s"));
    put("enqueue_per_s", enqueue.round());
    say(&format!("{} no-op runs through {} workers × {} slots …", args.runs, args.workers, args.slots));
    let runs = throughput::drain(&bench, session, args.runs, args.workers, args.slots, false).await?;
    say(&format!("  {runs:.0} runs/s"));
    put("runs_per_s", runs.round());
    say(&format!("the SQL floor: {} jobs, claim 50 + mark done, {} clients …", args.runs, FLOOR_CLIENTS));
    let floor = throughput::floor(&bench, args.runs, FLOOR_CLIENTS).await?;
    say(&format!("  {floor:.0} jobs/s; runs/s over it {:.2}", runs / floor));
    put("floor_runs_per_s", floor.round());
    put("floor_ratio", runs / floor);
    if !args.quick {
        say(&format!("{} no-op runs through workers behind the executor API …", args.runs));
        let session = bench.enqueue_noops(args.runs).await?;
        let http = throughput::drain(&bench, session, args.runs, args.workers, args.slots, true).await?;
        say(&format!("  {http:.0} runs/s"));
        put("runs_per_s_http", http.round());
        for (key, value) in latency::measure(&bench, &args, &say).await? {
            put(key, value);
        }
        if args.aged_finished > 0 {
            say(&format!(
                "{} no-op runs with {} finished and {} future runs present, statistics not refreshed …",
                args.runs, args.aged_finished, args.aged_future
            ));
            throughput::age(&bench, args.aged_finished, args.aged_future).await?;
            let session = bench.enqueue_noops(args.runs).await?;
            let aged = throughput::drain(&bench, session, args.runs, args.workers, args.slots, false).await?;
            say(&format!("  {aged:.0} runs/s ({:.2} of the fresh figure)", aged / runs));
            put("runs_per_s_aged", aged.round());
            put("aged_ratio", aged / runs);
        }
    }
    bench.stop().await?;
    print(&figures, previous.as_ref(), args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The figures (as one JSON object with `--json`), with an earlier run's beside them.
fn print(figures: &Value, previous: Option<&Value>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{figures}");
        return Ok(());
    }
    let Some(before) = previous else {
        println!("{}", serde_json::to_string_pretty(figures)?);
        return Ok(());
    };
    println!("{:<20} {:>14} {:>14} {:>9}", "figure", "before", "now", "change");
    for (key, now) in figures.as_object().into_iter().flatten() {
        let was = &before[key];
        let change = match (was.as_f64(), now.as_f64()) {
            (Some(a), Some(b)) if a != 0.0 => format!("{:+.1}%", (b - a) / a * 100.0),
            _ => String::new(),
        };
        println!("{key:<20} {:>14} {:>14} {change:>9}", was.to_string(), now.to_string());
    }
    Ok(())
}
