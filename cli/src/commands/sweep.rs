//! `runlane sweep`: sweeper passes now (requeue expired leases, enforce deadlines, promote due runs,
//! mark silent workers gone) until nothing is left, then a prune (finished runs past their retention,
//! as `runlane prune`), by the fleet's policy. Workers sweep by themselves; this is for operators and
//! cron. With policy flags (the database owner's), changes the policy instead.

use super::common::{ConfigArgs, connect};
use runlane_core::db;
use runlane_core::db::prune_until_done;
use runlane_core::model::{SweepPolicyChange, SweepReport};
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
    let change = SweepPolicyChange {
        retention_s: args.retention_s,
        worker_timeout_s: args.worker_timeout_s,
        deadline_slack_s: args.deadline_slack_s,
        prune_limit: args.prune_limit,
    };
    let changing = !change.is_empty();
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
    let mut total = SweepReport::default();
    loop {
        let r = db::sweep(&pool).await?;
        total.skipped = r.skipped;
        total.requeued += r.requeued;
        total.cancelled += r.cancelled;
        total.crash_failed += r.crash_failed;
        total.deadline_failed += r.deadline_failed;
        total.promoted += r.promoted;
        total.workers_gone += r.workers_gone;
        if r.skipped || !r.more {
            break;
        }
    }
    let pruned = prune_until_done(&pool).await?.pruned;
    if args.json {
        let mut v = serde_json::to_value(&total)?;
        v["pruned"] = serde_json::json!(pruned);
        println!("{v}");
    } else if total.skipped && pruned == 0 {
        println!("another sweeper is running: nothing done");
    } else if total.skipped {
        println!("another sweeper is running: swept nothing; pruned {pruned}");
    } else {
        println!(
            "requeued {}, cancelled {}, failed past crash cap {}, failed past deadline {}, promoted {}, workers gone {}, \
             pruned {pruned}",
            total.requeued,
            total.cancelled,
            total.crash_failed,
            total.deadline_failed,
            total.promoted,
            total.workers_gone
        );
    }
    Ok(ExitCode::SUCCESS)
}
