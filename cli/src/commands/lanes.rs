//! `runlane lanes`: each lane's figures, pause and aging; `lanes pause|resume LANE --reason R`; the
//! emergency stop, `lanes stop --reason R [--cancel-running]`; `lanes history`; and a lane's priority
//! aging, `lanes aging LANE --per-point 1s | --off`. Who acted is the database login of the
//! connection; the reason of a pause, resume or stop is required and recorded with it.

use super::common::{ConfigArgs, connect};
use chrono::{DateTime, SecondsFormat, Utc};
use runlane_core::db;
use runlane_core::lanes::{FleetStop, LaneAging, LaneEvent, LanePause, aging_bound_ms};
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
    /// Priority aging: a waiting run of the lane gains one priority point per --per-point of waiting,
    /// so a flood of high-priority runs cannot starve a low one (applies at once to the lane's runs)
    #[command(group(clap::ArgGroup::new("rate").required(true).args(["per_point", "off"])))]
    Aging {
        lane: Lane,
        /// Waiting time per priority point, e.g. 500ms, 1s, 2m, 1h (1ms to 24h)
        #[arg(long, value_parser = parse_per_point)]
        per_point: Option<i32>,
        /// No aging: strict priority, then first come
        #[arg(long)]
        off: bool,
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
        Some(Action::Aging { lane, per_point, off: _ }) => {
            print_aging(&db::set_lane_aging(&pool, lane, per_point).await?, json)?;
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
    println!(
        "{:<4} {:>8} {:>9} {:>7} {:>5} {:>8}  {:<10} STATE",
        "LANE", "QUEUED", "SCHEDULED", "RUNNING", "CAP", "OLDEST", "AGING"
    );
    for s in stats {
        let cap = s.max_running.map_or("-".to_string(), |c| c.to_string());
        let state = match (s.paused_at, &s.paused_by, &s.pause_reason) {
            (Some(at), Some(by), Some(why)) => format!("paused since {} by {by}: {why}", time(at)),
            _ => "open".to_string(),
        };
        let aging = s.aging_ms_per_point.map_or("off".to_string(), |ms| format!("{}/pt", duration(i64::from(ms))));
        println!(
            "{:<4} {:>8} {:>9} {:>7} {:>5} {:>7.0}s  {aging:<10} {state}",
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

fn print_aging(a: &LaneAging, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(a)?);
        return Ok(());
    }
    match a.aging_ms_per_point {
        Some(ms) => println!(
            "lane {} ages its runs: one priority point per {} of waiting; a priority -100 run is passed only by runs \
             that became claimable less than {} after it ({} waiting or running runs took the rate)",
            a.lane,
            duration(i64::from(ms)),
            duration(aging_bound_ms(ms)),
            a.rekeyed
        ),
        None => println!(
            "lane {} does not age its runs: strict priority, then first come ({} waiting or running runs took it)",
            a.lane, a.rekeyed
        ),
    }
    Ok(())
}

/// Milliseconds in the largest unit that divides them: 1500ms, 2s, 3m, 4h.
fn duration(ms: i64) -> String {
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// `500ms`, `1s`, `1.5s`, `2m`, `1h` (1 ms to 24 h) as whole milliseconds.
fn parse_per_point(text: &str) -> Result<i32, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(format!("'{text}' is not a duration: write a number and ms, s, m or h (e.g. 1s)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration (e.g. 1s)"))?;
    let ms = (value * scale).round();
    if !(1.0..=86_400_000.0).contains(&ms) {
        return Err(format!("'{text}' is out of range: between 1ms and 24h per priority point (or --off)"));
    }
    Ok(ms as i32)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_point_durations_parse_to_milliseconds_within_a_day() {
        assert_eq!(parse_per_point("500ms"), Ok(500));
        assert_eq!(parse_per_point("1s"), Ok(1000));
        assert_eq!(parse_per_point("1.5s"), Ok(1500));
        assert_eq!(parse_per_point(" 2m "), Ok(120_000));
        assert_eq!(parse_per_point("24h"), Ok(86_400_000));
        for bad in ["", "1", "1d", "s", "-1s", "0s", "25h", "1.2.3s"] {
            assert!(parse_per_point(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(duration(1500), "1500ms");
        assert_eq!(duration(200_000), "200s");
        assert_eq!(duration(120_000), "2m");
        assert_eq!(duration(720_000_000), "200h");
    }
}
