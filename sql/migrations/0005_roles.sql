-- Least-privilege roles. Nobody but the owner touches tables directly for writing: every write goes
-- through a SECURITY DEFINER function with a fixed search_path. Roles are cluster-wide, so they are
-- created only when missing (several runlane databases can share one cluster).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['runlane_viewer', 'runlane_operator', 'runlane_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;

-- PostgreSQL grants EXECUTE on new functions to PUBLIC; take that back.
REVOKE ALL ON SCHEMA runlane FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA runlane FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA runlane FROM PUBLIC;
GRANT USAGE ON SCHEMA runlane TO runlane_viewer, runlane_operator, runlane_worker;

-- Viewer: read runs (but not their params, which may hold secrets, nor their lease tokens), steps,
-- events, artifacts, templates, lanes, workers, sessions. Never tokens. The operator reads runs whole.
GRANT SELECT ON runlane.run_steps, runlane.run_events, runlane.artifacts, runlane.run_templates,
                runlane.lanes, runlane.workers, runlane.sessions
    TO runlane_viewer, runlane_operator;
GRANT SELECT ON runlane.runs TO runlane_operator;
GRANT SELECT (id, template, template_version, lane, priority, status, secret_params, steps, requires, timeout_ms,
              attempt, failed_attempts, max_attempts, backoff_base_ms, crash_count, max_crashes, run_at, created_at,
              enqueued_by, claimed_at, finished_at, deadline_at, worker_id, lease_expires_at, cancel_requested_at,
              cancel_reason, idempotency_key, session_id, result, error, next_seq)
    ON runlane.runs TO runlane_viewer;
GRANT EXECUTE ON FUNCTION runlane.lane_stats() TO runlane_viewer, runlane_operator, runlane_worker;

-- Operator: enqueue, cancel, retry, annotate, templates, lane caps, sessions, sweep.
GRANT EXECUTE ON FUNCTION
    runlane.enqueue_run(text, jsonb, text, integer, timestamptz, text, uuid),
    runlane.cancel_run(uuid, text),
    runlane.retry_run(uuid),
    runlane.annotate_run(uuid, text),
    runlane.apply_template(text, jsonb),
    runlane.set_lane_cap(text, integer),
    runlane.create_session(text),
    runlane.sweep(timestamptz, interval, interval, interval, integer)
TO runlane_operator;

-- Worker: only the lease holder's calls (each fenced by lease), and the sweeper.
GRANT EXECUTE ON FUNCTION
    runlane.register_worker(text, text[], integer, text, text[], integer),
    runlane.worker_heartbeat(uuid, text, text[], integer, text[]),
    runlane.claim_runs(uuid, text[], integer, uuid),
    runlane.heartbeat_run(uuid, uuid),
    runlane.start_step(uuid, uuid, integer),
    runlane.finish_step(uuid, uuid, integer, text, integer, text),
    runlane.append_events(uuid, uuid, jsonb),
    runlane.put_artifact(uuid, uuid, integer, text, text, bigint, text, bytea, text),
    runlane.complete_run(uuid, uuid, text, jsonb, text),
    runlane.sweep(timestamptz, interval, interval, interval, integer)
TO runlane_worker;

-- Row-level security: reads pass through these policies; with no policy for a role, it sees no rows.
-- (SECURITY DEFINER functions run as the owner, which is exempt.)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['runs', 'run_steps', 'run_events', 'artifacts', 'run_templates', 'lanes',
                             'workers', 'sessions', 'api_tokens'] LOOP
        EXECUTE format('ALTER TABLE runlane.%I ENABLE ROW LEVEL SECURITY', t);
        IF t <> 'api_tokens' THEN
            EXECUTE format('CREATE POLICY read_all ON runlane.%I FOR SELECT TO runlane_viewer, runlane_operator '
                           'USING (true)', t);
        END IF;
    END LOOP;
END $$;
