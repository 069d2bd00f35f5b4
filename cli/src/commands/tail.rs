//! `runlane tail RUN_ID`: prints a run's events as they are written, resuming by cursor, and exits
//! with the run's outcome: 0 succeeded, 1 failed, 2 cancelled.

use super::common::{ConfigArgs, connect};
use runlane_core::follow::Follow;
use runlane_core::model::{Event, RunId, RunStatus};
use runlane_core::notices::{self, EVENTS_CHANNEL};
use sqlx::PgPool;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    run: RunId,
    /// Start after this event seq (resume a tail)
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// One JSON object per event
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-tail").await?;
    let json = args.json;
    let status = follow(&pool, args.run, args.after, |e| print_event(e, json, None)).await?;
    Ok(exit_code(status))
}

/// 0 succeeded, 1 failed, 2 cancelled.
pub fn exit_code(status: RunStatus) -> ExitCode {
    match status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Cancelled => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// Calls `on_event` for every event after `after`, live, until the run has finished; returns its
/// final status. Woken by the events channel; polls every second in case a notice was missed.
pub async fn follow(
    pool: &PgPool,
    run: RunId,
    after: i64,
    mut on_event: impl FnMut(&Event),
) -> anyhow::Result<RunStatus> {
    let news = notices::listen(pool, &[EVENTS_CHANNEL.to_string()], 256).await?;
    let mut follow = Follow::new(pool.clone(), run, after, news, Duration::from_secs(1));
    while let Some(events) = follow.next().await? {
        events.iter().for_each(&mut on_event);
    }
    follow.ended().ok_or_else(|| anyhow::anyhow!("the run's end was not seen"))
}

/// Prints one event: output labelled by stream, life cycle marked with `==>`.
pub fn print_event(e: &Event, json: bool, label: Option<&str>) {
    if json {
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
        return;
    }
    let at = e.at.format("%H:%M:%S%.3f");
    let who = label.map(|l| format!("{l} ")).unwrap_or_default();
    let d = e.data.clone().unwrap_or_default();
    let s =
        |k: &str| d.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default();
    let text = match e.kind.as_str() {
        "step.output" => {
            println!("{at} {who}{} | {}", e.stream.as_deref().unwrap_or("?"), e.body.as_deref().unwrap_or(""));
            return;
        }
        "run.queued" => format!("queued in lane {} ({} v{})", s("lane"), s("template"), s("version")),
        "run.claimed" => format!("claimed by {} (attempt {})", s("host"), s("attempt")),
        "step.started" => format!("step {} '{}' started ({})", e.step.unwrap_or(-1), s("name"), s("kind")),
        "step.finished" => {
            let code = d.get("exit_code").map(|c| format!(", exit {c}")).unwrap_or_default();
            let err = d.get("error").map(|_| format!(": {}", s("error"))).unwrap_or_default();
            format!(
                "step {} '{}' {}{code} in {} ms{err}",
                e.step.unwrap_or(-1),
                s("name"),
                s("status"),
                s("duration_ms")
            )
        }
        "step.output_truncated" => {
            format!("output truncated: {} lines ({} bytes) dropped", s("dropped_lines"), s("dropped_bytes"))
        }
        "artifact.created" => format!("artifact '{}' ({} bytes, sha256 {})", s("name"), s("size_bytes"), s("sha256")),
        "run.finished" => {
            let err = d.get("error").map(|_| format!(": {}", s("error"))).unwrap_or_default();
            format!("run {}{err}", s("status"))
        }
        other => format!("{other} {}", d),
    };
    println!("{at} {who}==> {text}");
}
