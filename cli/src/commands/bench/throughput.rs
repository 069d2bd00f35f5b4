//! Throughput figures: bulk enqueue, no-op runs through the whole life cycle, the raw SQL floor
//! beside them, and the backlog that the aged figure runs against.

use super::setup::Bench;
use runlane_core::db;
use runlane_core::model::{EnqueueRequest, Lane, SessionId};
use serde_json::json;
use std::time::{Duration, Instant};

/// `enqueue_runs` in calls of 5,000 runs over the four lanes: runs/s, measured around the calls.
/// The runs stay queued for the next [`drain`].
pub async fn bulk_enqueue(bench: &Bench, n: u32) -> anyhow::Result<(SessionId, f64)> {
    let started = Instant::now();
    let session = bench.enqueue_noops(n).await?;
    Ok((session, f64::from(n) / started.elapsed().as_secs_f64()))
}

/// Starts the workers on a session's queued runs and waits until every one succeeded: runs/s from
/// the first claim to the last finish, by the database's clock (the workers' start-up is not in it).
pub async fn drain(
    bench: &Bench,
    session: SessionId,
    n: u32,
    workers: u32,
    slots: u32,
    http: bool,
) -> anyhow::Result<f64> {
    let running = bench.workers(workers, slots, http).await?;
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status IN ('failed', 'cancelled'))
             FROM runlane.runs WHERE session_id = $1",
        )
        .bind(session)
        .fetch_one(&bench.pool)
        .await?;
        anyhow::ensure!(failed == 0, "{failed} bench runs did not succeed");
        if done >= i64::from(n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(claimed_at))::float8 FROM runlane.runs WHERE session_id = $1",
    )
    .bind(session)
    .fetch_one(&bench.pool)
    .await?;
    Ok(f64::from(n) / secs)
}

/// The floor: the same PostgreSQL doing nothing but a queue's two essential writes — claim 50 jobs
/// (`FOR UPDATE SKIP LOCKED`) and mark them done, one commit each — from `clients` connections, on a
/// bare table of `n` jobs. Jobs/s over the whole drain.
pub async fn floor(bench: &Bench, n: u32, clients: u32) -> anyhow::Result<f64> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS public.bench_floor;
         CREATE TABLE public.bench_floor (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued',
                                          payload jsonb NOT NULL DEFAULT '{}');
         CREATE INDEX bench_floor_queued ON public.bench_floor (id) WHERE status = 'queued';",
    )
    .execute(&bench.pool)
    .await?;
    sqlx::query("INSERT INTO public.bench_floor (status) SELECT 'queued' FROM generate_series(1, $1)")
        .bind(i64::from(n))
        .execute(&bench.pool)
        .await?;
    sqlx::query("ANALYZE public.bench_floor").execute(&bench.pool).await?;
    let pool = db::connect(&bench.url, clients, "runlane-bench-floor").await?;
    let started = Instant::now();
    let mut clients_done = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let pool = pool.clone();
        clients_done.spawn(async move {
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "UPDATE public.bench_floor SET status = 'running' WHERE id IN (
                         SELECT id FROM public.bench_floor WHERE status = 'queued' ORDER BY id LIMIT 50
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                )
                .fetch_all(&pool)
                .await?;
                if ids.is_empty() {
                    return Ok::<_, sqlx::Error>(());
                }
                sqlx::query("UPDATE public.bench_floor SET status = 'done' WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&pool)
                    .await?;
            }
        });
    }
    while let Some(done) = clients_done.join_next().await {
        done??;
    }
    let secs = started.elapsed().as_secs_f64();
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.bench_floor WHERE status = 'done'").fetch_one(&pool).await?;
    anyhow::ensure!(done == i64::from(n), "the floor finished {done} of {n} jobs");
    pool.close().await;
    sqlx::query("DROP TABLE public.bench_floor").execute(&bench.pool).await?;
    Ok(f64::from(n) / secs)
}

/// An aged queue: `finished` runs that succeeded long ago (each with its step) written straight
/// into the tables, and `future` runs at priority 10 due tomorrow, enqueued the normal way. The
/// statistics stay as they were before the backlog arrived: auto-analyze is off for `runs` from here
/// on (autovacuum still vacuums it, as in production). The last figure of a bench.
pub async fn age(bench: &Bench, finished: u32, future: u32) -> anyhow::Result<()> {
    sqlx::query(
        "ALTER TABLE runlane.runs SET (autovacuum_analyze_threshold = 2000000000, autovacuum_analyze_scale_factor = 100)",
    )
    .execute(&bench.pool)
    .await?;
    sqlx::query(
        "WITH r AS (
             INSERT INTO runlane.runs (template, template_version, lane, status, steps, timeout_ms, attempt,
                                       max_attempts, backoff_base_ms, max_crashes, run_at, created_at,
                                       claimed_at, finished_at, last_started_step)
             SELECT 'noop', 1, (ARRAY['A','B','C','D'])[1 + i % 4], 'succeeded',
                    '[{\"name\":\"noop\",\"kind\":\"noop\"}]', 60000, 1, 1, 1000, 3, t, t, t, t, 0
             FROM generate_series(1, $1) AS i,
                  LATERAL (SELECT now() - interval '1 day' + i * interval '1 ms' AS t) AS at
             RETURNING id, claimed_at, finished_at)
         INSERT INTO runlane.run_steps (run_id, attempt, idx, name, kind, status, started_at, finished_at)
         SELECT id, 1, 0, 'noop', 'noop', 'succeeded', claimed_at, finished_at FROM r",
    )
    .bind(i64::from(finished))
    .execute(&bench.pool)
    .await?;
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    let reqs: Vec<EnqueueRequest> = (0..future)
        .map(|i| EnqueueRequest {
            template: "noop".into(),
            params: json!({}),
            lane: Some(Lane::ALL[i as usize % 4]),
            priority: Some(10),
            run_at: Some(tomorrow),
            ..Default::default()
        })
        .collect();
    for chunk in reqs.chunks(5_000) {
        db::enqueue_runs(&bench.pool, chunk).await?;
    }
    Ok(())
}
