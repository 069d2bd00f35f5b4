//! The queue's SQL functions (sql/migrations), one Rust function each. See docs/SQL.md.

use crate::error::{Error, Result};
use crate::model::*;
use sqlx::PgExecutor;

pub async fn apply_template(ex: impl PgExecutor<'_>, name: &str, spec: &serde_json::Value) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT runlane.apply_template($1, $2)").bind(name).bind(spec).fetch_one(ex).await?)
}

pub async fn create_session(ex: impl PgExecutor<'_>, name: &str) -> Result<SessionId> {
    Ok(sqlx::query_scalar("SELECT runlane.create_session($1)").bind(name).fetch_one(ex).await?)
}

pub async fn enqueue_run(ex: impl PgExecutor<'_>, req: &EnqueueRequest) -> Result<RunId> {
    Ok(sqlx::query_scalar("SELECT runlane.enqueue_run($1, $2, $3, $4, $5, $6, $7)")
        .bind(&req.template)
        .bind(&req.params)
        .bind(req.lane.map(Lane::as_str))
        .bind(req.priority)
        .bind(req.run_at)
        .bind(&req.idempotency_key)
        .bind(req.session_id)
        .fetch_one(ex)
        .await?)
}

/// What `enqueue_run` would do with `req`: checked the same way (the same errors), written nowhere.
pub async fn dry_run_enqueue(ex: impl PgExecutor<'_>, req: &EnqueueRequest) -> Result<EnqueuePreview> {
    Ok(sqlx::query_as("SELECT * FROM runlane.dry_run_enqueue($1, $2, $3, $4, $5, $6, $7)")
        .bind(&req.template)
        .bind(&req.params)
        .bind(req.lane.map(Lane::as_str))
        .bind(req.priority)
        .bind(req.run_at)
        .bind(&req.idempotency_key)
        .bind(req.session_id)
        .fetch_one(ex)
        .await?)
}

/// Enqueues many runs in one call, all or nothing (the first violation is named with the run's
/// 1-based position). Returns the run ids in the order given.
pub async fn enqueue_runs(ex: impl PgExecutor<'_>, reqs: &[EnqueueRequest]) -> Result<Vec<RunId>> {
    let templates: Vec<&str> = reqs.iter().map(|r| r.template.as_str()).collect();
    let params: Vec<&serde_json::Value> = reqs.iter().map(|r| &r.params).collect();
    let lanes: Vec<Option<&str>> = reqs.iter().map(|r| r.lane.map(Lane::as_str)).collect();
    let priorities: Vec<Option<i32>> = reqs.iter().map(|r| r.priority).collect();
    let run_ats: Vec<Option<chrono::DateTime<chrono::Utc>>> = reqs.iter().map(|r| r.run_at).collect();
    let keys: Vec<Option<&str>> = reqs.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let sessions: Vec<Option<SessionId>> = reqs.iter().map(|r| r.session_id).collect();
    let rows: Vec<(i32, RunId)> =
        sqlx::query_as("SELECT item, run_id FROM runlane.enqueue_runs($1, $2, $3, $4, $5, $6, $7)")
            .bind(&templates)
            .bind(&params)
            .bind(&lanes)
            .bind(&priorities)
            .bind(&run_ats)
            .bind(&keys)
            .bind(&sessions)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().map(|(_, id)| id).collect())
}

pub async fn set_lane_cap(ex: impl PgExecutor<'_>, lane: Lane, max_running: Option<i32>) -> Result<()> {
    sqlx::query("SELECT runlane.set_lane_cap($1, $2)").bind(lane.as_str()).bind(max_running).execute(ex).await?;
    Ok(())
}

pub async fn register_worker(ex: impl PgExecutor<'_>, reg: &WorkerRegistration) -> Result<WorkerId> {
    let lanes: Vec<&str> = reg.lanes.iter().map(|l| l.as_str()).collect();
    Ok(sqlx::query_scalar("SELECT runlane.register_worker($1, $2, $3, $4, $5, $6, $7)")
        .bind(&reg.host)
        .bind(&lanes)
        .bind(i32::try_from(reg.slots).unwrap_or(i32::MAX))
        .bind(&reg.version)
        .bind(&reg.capabilities)
        .bind(i32::try_from(reg.lease_ms).unwrap_or(i32::MAX))
        .bind(i32::try_from(reg.kill_grace_ms).unwrap_or(i32::MAX))
        .fetch_one(ex)
        .await?)
}

/// Liveness, plus whatever changed about the worker.
pub async fn worker_heartbeat(
    ex: impl PgExecutor<'_>,
    worker: WorkerId,
    state: WorkerState,
    update: &WorkerUpdate,
) -> Result<()> {
    let lanes: Option<Vec<&str>> = update.lanes.as_ref().map(|l| l.iter().map(|l| l.as_str()).collect());
    sqlx::query("SELECT runlane.worker_heartbeat($1, $2, $3, $4, $5)")
        .bind(worker)
        .bind(state.as_str())
        .bind(lanes)
        .bind(update.slots.map(|s| i32::try_from(s).unwrap_or(i32::MAX)))
        .bind(&update.capabilities)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn claim_runs(
    ex: impl PgExecutor<'_>,
    worker: WorkerId,
    lanes: &[Lane],
    limit: u32,
    session: Option<SessionId>,
) -> Result<Vec<ClaimedRun>> {
    let lanes: Vec<&str> = lanes.iter().map(|l| l.as_str()).collect();
    Ok(sqlx::query_as("SELECT * FROM runlane.claim_runs($1, $2, $3, $4)")
        .bind(worker)
        .bind(&lanes)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        .bind(session)
        .fetch_all(ex)
        .await?)
}

/// Renews a lease. A lost lease is `Error::LeaseLost`, like every other fenced call.
pub async fn heartbeat_run(ex: impl PgExecutor<'_>, lease: Lease) -> Result<HeartbeatReply> {
    let (lease_ok, cancel_requested): (bool, bool) =
        sqlx::query_as("SELECT lease_ok, cancel_requested FROM runlane.heartbeat_run($1, $2)")
            .bind(lease.run_id)
            .bind(lease.token)
            .fetch_one(ex)
            .await?;
    if !lease_ok {
        return Err(Error::LeaseLost(format!(
            "lease lost for run {}: it was requeued, finished or claimed by another worker",
            lease.run_id
        )));
    }
    Ok(HeartbeatReply { cancel_requested })
}

pub async fn start_step(ex: impl PgExecutor<'_>, lease: Lease, step: i32) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT runlane.start_step($1, $2, $3)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(step)
        .fetch_one(ex)
        .await?)
}

pub async fn finish_step(
    ex: impl PgExecutor<'_>,
    lease: Lease,
    step: i32,
    status: StepStatus,
    exit_code: Option<i32>,
    error: Option<&str>,
) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT runlane.finish_step($1, $2, $3, $4, $5, $6)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(step)
        .bind(status.as_str())
        .bind(exit_code)
        .bind(error)
        .fetch_one(ex)
        .await?)
}

/// Appends a batch in one round trip. `batch` numbers the lease holder's batches 1, 2, 3 … in its
/// attempt: sending the last one again (after a lost reply) writes nothing and returns the same
/// last seq. `None`: no replay protection (several writers sharing a lease).
pub async fn append_events(
    ex: impl PgExecutor<'_>,
    lease: Lease,
    batch: Option<i32>,
    events: &[NewEvent],
) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT runlane.append_events($1, $2, $3, $4)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(sqlx::types::Json(events))
        .bind(batch)
        .fetch_one(ex)
        .await?)
}

/// Applies a batch of run items in one call (see `runlane.apply_ops`): one answer per item, in order.
pub async fn apply_ops(ex: impl PgExecutor<'_>, items: &[crate::ops::RunOps]) -> Result<Vec<crate::ops::OpOutcome>> {
    let mut a = OpArrays::default();
    for (i, item) in items.iter().enumerate() {
        a.run_ids.push(item.lease.run_id);
        a.leases.push(item.lease.token);
        a.ops.push(item.op);
        a.finish_steps.push(item.finish.as_ref().map(|f| f.step));
        a.finish_statuses.push(item.finish.as_ref().map(|f| f.status.as_str()));
        a.finish_exit_codes.push(item.finish.as_ref().and_then(|f| f.exit_code));
        a.finish_errors.push(item.finish.as_ref().and_then(|f| f.error.as_deref()));
        a.start_steps.push(item.start);
        a.outcomes.push(item.complete.as_ref().map(|c| c.outcome.as_str()));
        a.results.push(item.complete.as_ref().and_then(|c| c.result.as_ref()));
        a.errors.push(item.complete.as_ref().and_then(|c| c.error.as_deref()));
        for e in &item.events {
            a.event_items.push(i as i32 + 1);
            a.event_kinds.push(e.kind.as_str());
            a.event_steps.push(e.step);
            a.event_streams.push(e.stream.map(|s| match s {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }));
            a.event_bodies.push(e.body.as_deref());
            a.event_data.push(e.data.as_ref());
        }
    }
    Ok(sqlx::query_as(
        "SELECT item, code, last_seq, status, message FROM runlane.apply_ops(
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&a.run_ids)
    .bind(&a.leases)
    .bind(&a.ops)
    .bind(&a.finish_steps)
    .bind(&a.finish_statuses)
    .bind(&a.finish_exit_codes)
    .bind(&a.finish_errors)
    .bind(&a.start_steps)
    .bind(&a.outcomes)
    .bind(&a.results)
    .bind(&a.errors)
    .bind(&a.event_items)
    .bind(&a.event_kinds)
    .bind(&a.event_steps)
    .bind(&a.event_streams)
    .bind(&a.event_bodies)
    .bind(&a.event_data)
    .fetch_all(ex)
    .await?)
}

/// A batch of items as the parallel arrays `apply_ops` takes.
#[derive(Default)]
struct OpArrays<'a> {
    run_ids: Vec<RunId>,
    leases: Vec<uuid::Uuid>,
    ops: Vec<i32>,
    finish_steps: Vec<Option<i32>>,
    finish_statuses: Vec<Option<&'a str>>,
    finish_exit_codes: Vec<Option<i32>>,
    finish_errors: Vec<Option<&'a str>>,
    start_steps: Vec<Option<i32>>,
    outcomes: Vec<Option<&'a str>>,
    results: Vec<Option<&'a serde_json::Value>>,
    errors: Vec<Option<&'a str>>,
    event_items: Vec<i32>,
    event_kinds: Vec<&'a str>,
    event_steps: Vec<Option<i32>>,
    event_streams: Vec<Option<&'a str>>,
    event_bodies: Vec<Option<&'a str>>,
    event_data: Vec<Option<&'a serde_json::Value>>,
}

/// Checks an upload before a byte of it is stored: the lease and the name. Returns the attempt.
pub async fn check_artifact_upload(ex: impl PgExecutor<'_>, lease: Lease, name: &str) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT runlane.check_artifact_upload($1, $2, $3)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(name)
        .fetch_one(ex)
        .await?)
}

/// An artifact to record: bytes inline, or a key in the object store.
#[derive(Debug, Clone)]
pub struct NewArtifact<'a> {
    /// Chosen by the writer, so recording it again after a lost reply is recognised as a replay.
    pub id: ArtifactId,
    pub step: Option<i32>,
    pub name: &'a str,
    pub content_type: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub inline_data: Option<&'a [u8]>,
    pub store_key: Option<&'a str>,
}

pub async fn put_artifact(ex: impl PgExecutor<'_>, lease: Lease, a: &NewArtifact<'_>) -> Result<ArtifactId> {
    Ok(sqlx::query_scalar("SELECT runlane.put_artifact($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(a.id)
        .bind(a.step)
        .bind(a.name)
        .bind(a.content_type)
        .bind(a.size_bytes)
        .bind(a.sha256)
        .bind(a.inline_data)
        .bind(a.store_key)
        .fetch_one(ex)
        .await?)
}

/// Ends an attempt. Returns the run's status afterwards (`scheduled` when a retry waits out its
/// backoff, `queued` when it is due at once or the run was handed back).
pub async fn complete_run(
    ex: impl PgExecutor<'_>,
    lease: Lease,
    outcome: Outcome,
    result: Option<&serde_json::Value>,
    error: Option<&str>,
) -> Result<RunStatus> {
    let status: String = sqlx::query_scalar("SELECT runlane.complete_run($1, $2, $3, $4, $5)")
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(outcome.as_str())
        .bind(result)
        .bind(error)
        .fetch_one(ex)
        .await?;
    status.parse().map_err(|e: String| Error::Schema(e))
}

/// Cancels a run. Returns `cancelled`, `cancel_requested`, or the status of an already finished run.
pub async fn cancel_run(ex: impl PgExecutor<'_>, run: RunId, reason: Option<&str>) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT runlane.cancel_run($1, $2)").bind(run).bind(reason).fetch_one(ex).await?)
}

pub async fn retry_run(ex: impl PgExecutor<'_>, run: RunId) -> Result<()> {
    sqlx::query("SELECT runlane.retry_run($1)").bind(run).execute(ex).await?;
    Ok(())
}

pub async fn annotate_run(ex: impl PgExecutor<'_>, run: RunId, message: &str) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT runlane.annotate_run($1, $2)").bind(run).bind(message).fetch_one(ex).await?)
}

/// One sweeper pass now, by the fleet's policy (what workers, the API and operators call): bounded
/// work; `more` says to call again at once.
pub async fn sweep(ex: impl PgExecutor<'_>) -> Result<SweepReport> {
    let report: sqlx::types::Json<SweepReport> = sqlx::query_scalar("SELECT runlane.sweep()").fetch_one(ex).await?;
    Ok(report.0)
}

/// One sweeper pass as of `opts.now`, with the policy overridden where given: the database owner's
/// call (tests move the clock with it).
pub async fn sweep_at(ex: impl PgExecutor<'_>, opts: &SweepOptions) -> Result<SweepReport> {
    let report: sqlx::types::Json<SweepReport> =
        sqlx::query_scalar("SELECT runlane.sweep_at(coalesce($1, now()), $2::interval, $3::interval)")
            .bind(opts.now)
            .bind(opts.worker_timeout_s.map(seconds))
            .bind(opts.deadline_slack_s.map(seconds))
            .fetch_one(ex)
            .await?;
    Ok(report.0)
}

/// Prunes finished runs past the fleet's retention (at most its prune limit).
pub async fn prune(ex: impl PgExecutor<'_>) -> Result<PruneReport> {
    let report: sqlx::types::Json<PruneReport> = sqlx::query_scalar("SELECT runlane.prune()").fetch_one(ex).await?;
    Ok(report.0)
}

/// Prunes by the fleet's policy (`prune()`) until nothing past its retention is left, or another
/// pruner holds the lock; returns what all the calls deleted.
pub async fn prune_until_done(pool: &sqlx::PgPool) -> Result<PruneReport> {
    let mut total = PruneReport::default();
    loop {
        let report = prune(pool).await?;
        total.add(&report);
        if report.skipped || !report.more {
            return Ok(total);
        }
    }
}

/// Prunes as of `opts.now` with another retention or limit: the database owner's call.
pub async fn prune_at(ex: impl PgExecutor<'_>, opts: &PruneOptions) -> Result<PruneReport> {
    let report: sqlx::types::Json<PruneReport> =
        sqlx::query_scalar("SELECT runlane.prune_at(coalesce($1, now()), $2::interval, $3)")
            .bind(opts.now)
            .bind(opts.retention_s.map(seconds))
            .bind(opts.limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
            .fetch_one(ex)
            .await?;
    Ok(report.0)
}

/// What pruning as of `now` (None: now) would delete, with `retention_s` in place of the fleet's
/// retention when given; writes nothing. Viewers and operators may ask.
pub async fn prune_preview(
    ex: impl PgExecutor<'_>,
    now: Option<chrono::DateTime<chrono::Utc>>,
    retention_s: Option<u64>,
) -> Result<crate::retention::PrunePreview> {
    let preview: sqlx::types::Json<crate::retention::PrunePreview> =
        sqlx::query_scalar("SELECT runlane.prune_preview($1, $2::interval)")
            .bind(now)
            .bind(retention_s.map(seconds))
            .fetch_one(ex)
            .await?;
    Ok(preview.0)
}

fn seconds(s: u64) -> String {
    format!("{s} seconds")
}

pub async fn sweep_policy(ex: impl PgExecutor<'_>) -> Result<SweepPolicy> {
    Ok(sqlx::query_as("SELECT * FROM runlane.sweep_policy()").fetch_one(ex).await?)
}

/// Changes the fleet's sweeper policy (the database owner's call); `None` keeps a value.
pub async fn set_sweep_policy(ex: impl PgExecutor<'_>, change: &SweepPolicyChange) -> Result<()> {
    sqlx::query("SELECT runlane.set_sweep_policy($1::interval, $2::interval, $3::interval, $4)")
        .bind(change.retention_s.map(seconds))
        .bind(change.worker_timeout_s.map(seconds))
        .bind(change.deadline_slack_s.map(seconds))
        .bind(change.prune_limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
        .execute(ex)
        .await?;
    Ok(())
}

/// Object store keys of pruned artifacts, oldest first, for the holder of the store to delete.
pub async fn doomed_objects(ex: impl PgExecutor<'_>, limit: i32) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT runlane.doomed_objects($1)").bind(limit).fetch_all(ex).await?)
}

/// These objects are gone from the store.
pub async fn forget_objects(ex: impl PgExecutor<'_>, keys: &[String]) -> Result<()> {
    sqlx::query("SELECT runlane.forget_objects($1)").bind(keys).execute(ex).await?;
    Ok(())
}

/// Of these runs, the ones running now, with their current attempt.
pub async fn running_attempts(ex: impl PgExecutor<'_>, runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
    Ok(sqlx::query_as("SELECT run_id, attempt FROM runlane.running_attempts($1)").bind(runs).fetch_all(ex).await?)
}

/// The fleet this database is: labels on step containers carry it.
pub async fn fleet_id(ex: impl PgExecutor<'_>) -> Result<uuid::Uuid> {
    Ok(sqlx::query_scalar("SELECT runlane.fleet_id()").fetch_one(ex).await?)
}

/// A token as `authenticate` finds it by its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenCheck {
    pub id: uuid::Uuid,
    pub role: String,
    pub lanes: Option<Vec<String>>,
    /// `ok`, or why the token may not be used.
    pub state: String,
}

/// The token with this hash, if any (see `runlane.authenticate`: it writes nothing on a failure).
pub async fn authenticate(ex: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<Option<TokenCheck>> {
    Ok(sqlx::query_as("SELECT id, role, lanes, state FROM runlane.authenticate($1)")
        .bind(token_hash)
        .fetch_optional(ex)
        .await?)
}

/// One round trip, to see that the database answers.
pub async fn ping(ex: impl PgExecutor<'_>) -> Result<()> {
    sqlx::query("SELECT 1").execute(ex).await?;
    Ok(())
}

/// Stores a token's hash (the database owner's call). Returns the token's id.
pub async fn create_token(
    ex: impl PgExecutor<'_>,
    name: &str,
    role: &str,
    lanes: Option<&[Lane]>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    sha256: &[u8],
) -> Result<uuid::Uuid> {
    let lanes: Option<Vec<&str>> = lanes.map(|l| l.iter().map(|l| l.as_str()).collect());
    Ok(sqlx::query_scalar("SELECT runlane.create_token($1, $2, $3, $4, $5)")
        .bind(name)
        .bind(role)
        .bind(lanes)
        .bind(expires_at)
        .bind(sha256)
        .fetch_one(ex)
        .await?)
}

pub async fn revoke_token(ex: impl PgExecutor<'_>, id: uuid::Uuid) -> Result<()> {
    sqlx::query("SELECT runlane.revoke_token($1)").bind(id).execute(ex).await?;
    Ok(())
}
