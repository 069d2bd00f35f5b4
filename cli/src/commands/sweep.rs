//! `runlane sweep`: one sweeper pass now (requeue expired leases, enforce deadlines, mark silent
//! workers gone, prune old runs), by the fleet's sweep policy. Workers sweep by themselves; this is
//! for operators and cron. With policy flags (the database owner's), changes the policy first.

use super::common::{ConfigArgs, connect};
use runlane_core::db;
use runlane_core::model::SweepOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the fleet's sweep policy and do nothing else
    #[arg(long)]
    policy: bool,
    /// Set the policy: keep finished runs (their events and artifacts) this many seconds (owner only)
    #[arg(long)]
    retention_s: Option<u64>,
    /// Set the policy: mark a worker gone after this many silent seconds (owner only)
    #[arg(long)]
    worker_timeout_s: Option<u64>,
    /// Set the policy: fail a running run this many seconds past its deadline (owner only)
    #[arg(long)]
    deadline_slack_s: Option<u64>,
    /// Set the policy: prune at most this many runs a pass (owner only)
    #[arg(long)]
    prune_limit: Option<u32>,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-sweep").await?;
    let change = SweepOptions {
        now: None,
        retention_s: args.retention_s,
        worker_timeout_s: args.worker_timeout_s,
        deadline_slack_s: args.deadline_slack_s,
        prune_limit: args.prune_limit,
    };
    let changing = change.retention_s.is_some()
        || change.worker_timeout_s.is_some()
        || change.deadline_slack_s.is_some()
        || change.prune_limit.is_some();
    if changing {
        db::set_sweep_policy(&pool, &change).await?;
    }
    if args.policy || changing {
        let p = db::sweep_policy(&pool).await?;
        if args.json {
            println!("{}", serde_json::to_string(&p)?);
        } else {
            println!(
                "retention {} s, worker timeout {} s, deadline slack {} s, prune limit {} runs a pass",
                p.retention_s, p.worker_timeout_s, p.deadline_slack_s, p.prune_limit
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = db::sweep(&pool).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else if r.skipped {
        println!("another sweeper is running: nothing done");
    } else {
        println!(
            "requeued {}, cancelled {}, failed past crash cap {}, failed past deadline {}, workers gone {}, pruned {}",
            r.requeued, r.cancelled, r.crash_failed, r.deadline_failed, r.workers_gone, r.pruned
        );
    }
    Ok(ExitCode::SUCCESS)
}
