//! `runlane prune`: deletes finished runs past their retention now (each template's own, else the
//! fleet's), with their events, steps and artifacts, by the fleet's policy, until none is left; the
//! objects of their stored artifacts leave the object store at the next prune round of a process
//! that holds the store (a worker or the API). `--dry-run` shows what would go, writing nothing.
//! Workers and the API prune by themselves; this is for operators and cron.

use super::common::{ConfigArgs, connect, duration};
use anyhow::Context;
use chrono::SecondsFormat;
use runlane_core::db;
use runlane_core::db::prune_until_done;
use runlane_core::model::PruneReport;
use runlane_core::retention::PrunePreview;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Show what would be deleted, per template and the retention that applies; delete nothing
    #[arg(long)]
    dry_run: bool,
    /// One JSON object
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-prune").await?;
    if args.dry_run {
        let preview = db::prune_preview(&pool, None, None)
            .await
            .context("previewing the prune (a viewer's or an operator's login)")?;
        if args.json {
            println!("{}", serde_json::to_string(&preview)?);
        } else {
            print_preview(&preview);
        }
    } else {
        let report = prune_until_done(&pool)
            .await
            .context("pruning (an operator's or a worker's login; a viewer may only --dry-run)")?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_report(&report);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_preview(p: &PrunePreview) {
    let fleet = duration(p.fleet_retention_s.saturating_mul(1000));
    println!(
        "as of {}, the fleet keeps finished runs {fleet} unless their template says otherwise",
        p.as_of.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    if p.templates.is_empty() {
        println!("no finished run is past its retention: a prune would delete no run");
    } else {
        println!(
            "{:<24} {:<10} {:<16} {:>8} {:>10} {:>8} {:>9} {:>8} {:>12}  OLDEST FINISHED",
            "TEMPLATE", "VERSIONS", "RETENTION", "RUNS", "EVENTS", "STEPS", "ARTIFACTS", "STORED", "STORED BYTES"
        );
        for t in &p.templates {
            let versions: Vec<String> = t.versions.iter().map(i32::to_string).collect();
            println!(
                "{:<24} {:<10} {:<16} {:>8} {:>10} {:>8} {:>9} {:>8} {:>12}  {}",
                t.template,
                versions.join(","),
                format!("{} ({})", duration(t.retention_s.saturating_mul(1000)), t.retention_from),
                t.runs,
                t.events,
                t.steps,
                t.artifacts,
                t.stored_objects,
                t.stored_bytes,
                t.oldest_finished_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
        }
    }
    println!(
        "would delete {} runs, {} events, {} steps, {} artifacts ({} stored objects, {} bytes), {} gone workers, {} idle sessions",
        p.runs, p.events, p.steps, p.artifacts, p.stored_objects, p.stored_bytes, p.workers, p.sessions
    );
}

fn print_report(r: &PruneReport) {
    if r.skipped && r.pruned == 0 {
        println!("another prune is running: nothing done");
        return;
    }
    println!(
        "deleted {} runs, {} events, {} steps, {} artifacts, {} gone workers, {} idle sessions; \
         {} stored objects ({} bytes) wait for a worker or the API to delete them from the object store",
        r.pruned,
        r.events_pruned,
        r.steps_pruned,
        r.artifacts_pruned,
        r.workers_pruned,
        r.sessions_pruned,
        r.stored_objects,
        r.stored_bytes
    );
    if r.skipped {
        println!("another prune took over before the end: what is left, it prunes");
    }
}
