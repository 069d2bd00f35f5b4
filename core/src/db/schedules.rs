//! Schedules: recurring runs of a template by a cron expression in a time zone (migration 0018,
//! docs/SQL.md). The expression is parsed and its slots are computed in SQL, so psql, the CLI, the
//! API and the workers' ticks agree.

use crate::error::{Error, Result};
use crate::model::{Lane, RunId};
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

/// A schedule to add: what each slot enqueues (checked by `enqueue_run` when it is added) and when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewSchedule {
    pub name: String,
    pub template: String,
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or a macro.
    pub cron: String,
    /// An IANA name (`Europe/Paris`); UTC when None.
    pub time_zone: Option<String>,
    pub params: serde_json::Value,
    /// None: the template's default lane at each slot.
    pub lane: Option<Lane>,
    /// None: the template's default priority at each slot.
    pub priority: Option<i32>,
}

/// A schedule as `list_schedules` shows it: secret params' values are `***`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
#[schemars(rename = "Schedule")]
pub struct ScheduleRecord {
    pub id: uuid::Uuid,
    pub name: String,
    pub template: String,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub params: serde_json::Value,
    /// None: the template's default lane.
    #[schemars(with = "Option<Lane>")]
    pub lane: Option<String>,
    /// None: the template's default priority.
    pub priority: Option<i32>,
    pub cron: String,
    pub time_zone: String,
    /// False while paused.
    pub enabled: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub pause_reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// The next slot to enqueue (None: the expression has no later time).
    pub next_due: Option<DateTime<Utc>>,
    /// The newest slot enqueued (or refused).
    pub last_slot: Option<DateTime<Utc>>,
    pub last_run_id: Option<RunId>,
    pub last_enqueued_at: Option<DateTime<Utc>>,
    /// Why `enqueue_run` refused the slot of `last_error_at` (a template changed since the schedule
    /// was added).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// What one tick did (`tick_schedules`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickReport {
    /// Another process's tick held the lock; nothing was done.
    pub skipped: bool,
    #[serde(default)]
    pub enqueued: u64,
    /// Runs that stand for more than one slot (slots passed while no tick ran).
    #[serde(default)]
    pub caught_up: u64,
    /// Slots passed over, in all.
    #[serde(default)]
    pub missed: u64,
    /// Slots `enqueue_run` refused.
    #[serde(default)]
    pub failed: Vec<TickFailure>,
    /// More schedules were due than one tick takes: tick again at once.
    #[serde(default)]
    pub more: bool,
    /// Until the earliest enabled schedule is due, by the database's clock (None: none is enabled).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A slot `enqueue_run` refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickFailure {
    pub schedule: String,
    pub slot: DateTime<Utc>,
    pub error: String,
}

/// Adds a schedule; returns its id. `RL422` (bad name, expression, time zone, or what
/// `enqueue_run` refuses), `RL404` (unknown template), `RL409` (the name is taken).
pub async fn add_schedule(ex: impl PgExecutor<'_>, s: &NewSchedule) -> Result<uuid::Uuid> {
    Ok(sqlx::query_scalar("SELECT runlane.add_schedule($1, $2, $3, coalesce($4, 'UTC'), $5, $6, $7)")
        .bind(&s.name)
        .bind(&s.template)
        .bind(&s.cron)
        .bind(&s.time_zone)
        .bind(&s.params)
        .bind(s.lane.map(Lane::as_str))
        .bind(s.priority)
        .fetch_one(ex)
        .await?)
}

pub async fn pause_schedule(ex: impl PgExecutor<'_>, name: &str, reason: Option<&str>) -> Result<()> {
    sqlx::query("SELECT runlane.pause_schedule($1, $2)").bind(name).bind(reason).execute(ex).await?;
    Ok(())
}

/// Resumes from the first slot after now; returns it.
pub async fn resume_schedule(ex: impl PgExecutor<'_>, name: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT runlane.resume_schedule($1)").bind(name).fetch_one(ex).await?)
}

pub async fn remove_schedule(ex: impl PgExecutor<'_>, name: &str) -> Result<()> {
    sqlx::query("SELECT runlane.remove_schedule($1)").bind(name).execute(ex).await?;
    Ok(())
}

pub async fn list_schedules(ex: impl PgExecutor<'_>) -> Result<Vec<ScheduleRecord>> {
    Ok(sqlx::query_as("SELECT * FROM runlane.list_schedules()").fetch_all(ex).await?)
}

pub async fn get_schedule(ex: impl PgExecutor<'_>, name: &str) -> Result<ScheduleRecord> {
    sqlx::query_as("SELECT * FROM runlane.list_schedules() WHERE name = $1")
        .bind(name)
        .fetch_optional(ex)
        .await?
        .ok_or_else(|| Error::NotFound(format!("unknown schedule '{name}'")))
}

/// A schedule's next `count` slots (1–1000) from now, each at the offset of the schedule's time
/// zone then (`2026-03-30T02:30:00+02:00`): the instant and the wall-clock time in one.
pub async fn schedule_slots(ex: impl PgExecutor<'_>, name: &str, count: i32) -> Result<Vec<DateTime<FixedOffset>>> {
    let rows: Vec<(DateTime<Utc>, chrono::NaiveDateTime)> =
        sqlx::query_as("SELECT slot, local_time FROM runlane.schedule_slots($1, $2)")
            .bind(name)
            .bind(count)
            .fetch_all(ex)
            .await?;
    rows.into_iter()
        .map(|(slot, local)| {
            let offset = i32::try_from((local - slot.naive_utc()).num_seconds()).ok().and_then(FixedOffset::east_opt);
            offset
                .map(|o| slot.with_timezone(&o))
                .ok_or_else(|| Error::Schema(format!("slot {slot}: no UTC offset for its local time {local}")))
        })
        .collect()
}

/// An expression's next `count` slots after `after`, in `time_zone`: for trying one out.
pub async fn cron_slots(
    ex: impl PgExecutor<'_>,
    cron: &str,
    time_zone: &str,
    after: DateTime<Utc>,
    count: i32,
) -> Result<Vec<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT runlane.cron_slots($1, $2, $3, $4)")
        .bind(cron)
        .bind(time_zone)
        .bind(after)
        .bind(count)
        .fetch_all(ex)
        .await?)
}

/// One tick now (what the sweeper loops call): enqueues due slots, one tick at a time fleet-wide.
pub async fn tick_schedules(ex: impl PgExecutor<'_>) -> Result<TickReport> {
    let report: sqlx::types::Json<TickReport> =
        sqlx::query_scalar("SELECT runlane.tick_schedules()").fetch_one(ex).await?;
    Ok(report.0)
}

/// One tick as of `now`, taking at most `limit` schedules: the database owner's call (tests move
/// the clock with it).
pub async fn tick_schedules_at(ex: impl PgExecutor<'_>, now: DateTime<Utc>, limit: i32) -> Result<TickReport> {
    let report: sqlx::types::Json<TickReport> =
        sqlx::query_scalar("SELECT runlane.tick_schedules_at($1, $2)").bind(now).bind(limit).fetch_one(ex).await?;
    Ok(report.0)
}
