//! `runlane schedules add|list|show|pause|resume|rm`: recurring runs of a template by a cron
//! expression in a time zone. The fleet's workers (and the API) enqueue each due slot.

use super::common::{ConfigArgs, connect};
use super::enqueue::parse_params;
use runlane_core::db::{self, NewSchedule, ScheduleRecord};
use runlane_core::model::Lane;
use runlane_core::wire::ScheduleDetail;
use sqlx::PgPool;
use std::process::ExitCode;

/// How many next slots `show` and `add` print.
const NEXT_SLOTS: i32 = 5;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a schedule: TEMPLATE enqueued at every slot of a cron expression
    Add {
        /// Lowercase letters, digits, '.', '_', '-'
        name: String,
        #[arg(long)]
        template: String,
        /// 'MIN HOUR DAY MONTH WEEKDAY', 'SEC MIN HOUR DAY MONTH WEEKDAY', or @hourly, @daily,
        /// @weekly, @monthly, @yearly (e.g. '0 2 * * MON-FRI', '*/10 * * * * *')
        #[arg(long, allow_hyphen_values = true)]
        cron: String,
        /// The time zone the expression is read in (IANA name, e.g. Europe/Paris)
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Lane (A–D); the template's default lane when omitted
        #[arg(long)]
        lane: Option<Lane>,
        /// Higher runs first within the lane (-100..100); the template's default when omitted
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// A param: `key=value` (a string) or `key:=json` (any JSON value); repeatable
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List schedules
    List {
        #[arg(long)]
        json: bool,
    },
    /// A schedule with its next slots
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop enqueueing a schedule's slots until it is resumed
    Pause {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Enqueue a paused schedule's slots again, from the next one after now (missed ones are not caught up)
    Resume { name: String },
    /// Remove a schedule (the runs it enqueued stay)
    Rm { name: String },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-schedules").await?;
    match args.action {
        Action::Add { name, template, cron, tz, lane, priority, params, json } => {
            let new = NewSchedule {
                name,
                template,
                cron,
                time_zone: Some(tz),
                params: parse_params(&params)?,
                lane,
                priority,
            };
            db::add_schedule(&pool, &new).await?;
            let detail = detail(&pool, &new.name).await?;
            if json {
                println!("{}", serde_json::to_string(&detail)?);
            } else {
                println!("schedule {} added; next slots:", new.name);
                print_slots(&detail);
            }
        }
        Action::List { json } => {
            let schedules = db::list_schedules(&pool).await?;
            if json {
                println!("{}", serde_json::to_string(&serde_json::json!({ "schedules": schedules }))?);
            } else {
                print_table(&schedules);
            }
        }
        Action::Show { name, json } => {
            let detail = detail(&pool, &name).await?;
            if json {
                println!("{}", serde_json::to_string(&detail)?);
            } else {
                print_detail(&detail);
            }
        }
        Action::Pause { name, reason } => {
            db::pause_schedule(&pool, &name, reason.as_deref()).await?;
            println!("schedule {name} paused");
        }
        Action::Resume { name } => match db::resume_schedule(&pool, &name).await? {
            Some(next) => println!("schedule {name} resumed; next slot {}", time(Some(next))),
            None => println!("schedule {name} resumed; its expression has no later slot"),
        },
        Action::Rm { name } => {
            db::remove_schedule(&pool, &name).await?;
            println!("schedule {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn detail(pool: &PgPool, name: &str) -> anyhow::Result<ScheduleDetail> {
    let schedule = db::get_schedule(pool, name).await?;
    let next_slots = db::schedule_slots(pool, name, NEXT_SLOTS).await?;
    Ok(ScheduleDetail { schedule, next_slots })
}

fn or_default(v: Option<String>) -> String {
    v.unwrap_or_else(|| "(template's)".into())
}

fn state(s: &ScheduleRecord) -> &'static str {
    if s.enabled { "enabled" } else { "paused" }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The next due slot, which means nothing while the schedule is paused.
fn next_due(s: &ScheduleRecord) -> String {
    if s.enabled { time(s.next_due) } else { "(paused)".into() }
}

fn print_table(schedules: &[ScheduleRecord]) {
    if schedules.is_empty() {
        println!("no schedules");
        return;
    }
    println!(
        "{:<24} {:<8} {:<22} {:<18} {:<20} {:<5} NEXT DUE",
        "NAME", "STATE", "CRON", "TIME ZONE", "TEMPLATE", "LANE"
    );
    for s in schedules {
        println!(
            "{:<24} {:<8} {:<22} {:<18} {:<20} {:<5} {}",
            s.name,
            state(s),
            s.cron,
            s.time_zone,
            s.template,
            s.lane.as_deref().unwrap_or("-"),
            next_due(s)
        );
    }
}

fn print_detail(d: &ScheduleDetail) {
    let s = &d.schedule;
    println!("schedule   {} ({})", s.name, s.id);
    println!("state      {}", state(s));
    if let Some(at) = s.paused_at {
        let reason = s.pause_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        println!("paused     {} by {}{reason}", time(Some(at)), s.paused_by.as_deref().unwrap_or("?"));
    }
    println!("cron       {} ({})", s.cron, s.time_zone);
    println!("template   {}", s.template);
    println!("params     {}", s.params);
    println!("lane       {}", or_default(s.lane.clone()));
    println!("priority   {}", or_default(s.priority.map(|p| p.to_string())));
    println!("created    {} by {}", time(Some(s.created_at)), s.created_by);
    println!("next due   {}", next_due(s));
    let run = s.last_run_id.map(|r| format!(" (run {r})")).unwrap_or_default();
    println!("last slot  {}{run}", time(s.last_slot));
    if let Some(e) = &s.last_error {
        println!("last error {} at {}", e, time(s.last_error_at));
    }
    println!("next slots:");
    print_slots(d);
}

fn print_slots(d: &ScheduleDetail) {
    for slot in &d.next_slots {
        println!("  {}", slot.to_rfc3339());
    }
    if d.next_slots.is_empty() {
        println!("  (none)");
    }
}
