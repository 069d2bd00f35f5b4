//! `runlane sweep`: one sweeper pass now (requeue expired leases, enforce deadlines, mark silent
//! workers gone, prune old runs). Workers sweep by themselves; this is for operators and cron.

use super::common::{ConfigArgs, connect};
use runlane_core::db;
use runlane_core::model::SweepOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-sweep").await?;
    let s = &settings.sweeper;
    let opts = SweepOptions {
        now: None,
        retention_s: s.retention_s,
        worker_timeout_s: s.worker_timeout_s,
        deadline_slack_s: s.deadline_slack_s,
        prune_limit: 10_000,
    };
    let r = db::sweep(&pool, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else if r.skipped {
        println!("another sweeper is running: nothing done");
    } else {
        println!(
            "requeued {}, failed past crash cap {}, failed past deadline {}, workers gone {}, pruned {}",
            r.requeued, r.crash_failed, r.deadline_failed, r.workers_gone, r.pruned
        );
    }
    Ok(ExitCode::SUCCESS)
}
