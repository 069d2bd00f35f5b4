//! `runlane lanes`: each lane's figures and pause; `lanes pause|resume LANE --reason R`; the
//! emergency stop, `lanes stop --reason R [--cancel-running]`; and `lanes history`. Who acted is
//! the database login of the connection; the reason is required and recorded with it.

use super::common::{ConfigArgs, connect};
use chrono::{DateTime, SecondsFormat, Utc};
use runlane_core::db;
use runlane_core::lanes::{FleetStop, LaneEvent, LanePause};
use runlane_core::model::{Lane, LaneStats};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON (one object, or one per line for lists)
    #[arg(long, global = true)]
    json: bool,
    /// Without an action: list the lanes
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Pause a lane: its queued runs stay queued and nothing more is claimed there; running runs go on
    Pause {
        lane: Lane,
        /// Why (required; recorded with who paused)
        #[arg(long)]
        reason: String,
    },
    /// Resume a paused lane; its workers are woken at once
    Resume {
        lane: Lane,
        /// Why (required; recorded with who resumed)
        #[arg(long)]
        reason: String,
    },
    /// Emergency stop: pause every lane; with --cancel-running also cancel every running run (queued runs stay queued)
    Stop {
        /// Why (required; recorded with who stopped)
        #[arg(long)]
        reason: String,
        /// Ask every running run to cancel: its steps are stopped and its `always` steps run
        #[arg(long)]
        cancel_running: bool,
    },
    /// Pauses, resumes and stops, newest first, with who and why
    History {
        /// Only this lane's entries (and the fleet's stops)
        #[arg(long)]
        lane: Option<Lane>,
        /// At most this many entries
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-lanes").await?;
    let json = args.json;
    match args.action {
        None => list(&db::lane_stats(&pool).await?, json)?,
        Some(Action::Pause { lane, reason }) => {
            let p = db::pause_lane(&pool, lane, &reason, None).await?;
            print_pause(&p, json, "paused", "was already paused")?;
        }
        Some(Action::Resume { lane, reason }) => {
            let p = db::resume_lane(&pool, lane, &reason, None).await?;
            print_pause(&p, json, "resumed", "was not paused")?;
        }
        Some(Action::Stop { reason, cancel_running }) => {
            let stop = db::stop_fleet(&pool, &reason, cancel_running, None).await?;
            print_stop(&stop, cancel_running, json)?;
        }
        Some(Action::History { lane, limit }) => {
            anyhow::ensure!((1..=10_000).contains(&limit), "--limit must be between 1 and 10000");
            history(&db::lane_events(&pool, lane, limit).await?, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn list(stats: &[LaneStats], json: bool) -> anyhow::Result<()> {
    if json {
        for s in stats {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(());
    }
    println!("{:<4} {:>8} {:>9} {:>7} {:>5} {:>8}  STATE", "LANE", "QUEUED", "SCHEDULED", "RUNNING", "CAP", "OLDEST");
    for s in stats {
        let cap = s.max_running.map_or("-".to_string(), |c| c.to_string());
        let state = match (s.paused_at, &s.paused_by, &s.pause_reason) {
            (Some(at), Some(by), Some(why)) => format!("paused since {} by {by}: {why}", time(at)),
            _ => "open".to_string(),
        };
        println!(
            "{:<4} {:>8} {:>9} {:>7} {:>5} {:>7.0}s  {state}",
            s.lane, s.queued, s.scheduled, s.running, cap, s.oldest_queued_s
        );
    }
    Ok(())
}

fn print_pause(p: &LanePause, json: bool, done: &str, already: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(p)?);
        return Ok(());
    }
    let verb = if p.changed { done } else { already };
    match (p.paused_at, &p.paused_by, &p.pause_reason) {
        (Some(at), Some(by), Some(why)) => println!("lane {} {verb} (since {} by {by}: {why})", p.lane, time(at)),
        _ => println!("lane {} {verb}", p.lane),
    }
    Ok(())
}

fn print_stop(stop: &FleetStop, cancel_running: bool, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(stop)?);
        return Ok(());
    }
    let paused = if stop.paused.is_empty() { "none (all were paused already)".into() } else { stop.paused.join(", ") };
    println!("every lane is paused; paused now: {paused}");
    if cancel_running {
        println!("asked {} running runs to cancel; queued runs stay queued", stop.cancel_requested);
    } else {
        println!("running runs go on (--cancel-running cancels them); queued runs stay queued");
    }
    Ok(())
}

fn history(events: &[LaneEvent], json: bool) -> anyhow::Result<()> {
    for e in events {
        if json {
            println!("{}", serde_json::to_string(e)?);
            continue;
        }
        let what = match &e.lane {
            Some(lane) => format!("{} {lane}", e.action),
            None => e.action.clone(),
        };
        let login = if e.db_user == e.actor { String::new() } else { format!(" (via {})", e.db_user) };
        let data = match e.data.as_object() {
            Some(o) if !o.is_empty() => format!("  {}", e.data),
            _ => String::new(),
        };
        println!("{}  {what:<8} by {}{login}: {}{data}", time(e.at), e.actor, e.reason);
    }
    Ok(())
}
