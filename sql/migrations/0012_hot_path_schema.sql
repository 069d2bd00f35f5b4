-- The hot path, part one: what each run writes, and what the claim walks past.
--
-- Runs that cannot be claimed yet (a later run_at, a retry's backoff) wait as 'scheduled', out of the
-- claim index; the sweeper promotes them to 'queued' when they are due. No foreign key is checked on
-- the hot path where a CHECK or the lease already holds; lease_expires_at leaves the indexes, so a
-- heartbeat is a HOT update; the runs table keeps room on its pages for those, and is vacuumed early.

ALTER TABLE runlane.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runlane.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE runlane.runs DROP CONSTRAINT runs_queued_without_cancel;
ALTER TABLE runlane.runs ADD CONSTRAINT runs_waiting_without_cancel
    CHECK (status NOT IN ('scheduled', 'queued') OR cancel_requested_at IS NULL);
UPDATE runlane.runs SET status = 'scheduled' WHERE status = 'queued' AND run_at > now();
CREATE INDEX runs_scheduled_idx ON runlane.runs (run_at) WHERE status = 'scheduled';

-- How many runs each lane has scheduled, queued and running, without counting the backlog: every
-- function that moves runs into or out of those statuses appends its changes here (one row per lane
-- and status a call, no row contended), and the sweeper folds the rows into one per lane and status.
-- lane_stats sums them.
CREATE TABLE runlane.lane_counts (
    lane   text NOT NULL,
    status text NOT NULL CHECK (status IN ('scheduled', 'queued', 'running')),
    n      bigint NOT NULL
);
ALTER TABLE runlane.lane_counts ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON runlane.lane_counts FROM PUBLIC;
INSERT INTO runlane.lane_counts (lane, status, n)
SELECT lane, status, count(*) FROM runlane.runs WHERE status IN ('scheduled', 'queued', 'running') GROUP BY 1, 2;

-- Folds the rows of lane_counts into one per lane and status.
CREATE FUNCTION runlane.fold_lane_counts() RETURNS void
LANGUAGE sql SET search_path = runlane, pg_temp AS $$
    WITH gone AS (DELETE FROM lane_counts RETURNING lane, status, n)
    INSERT INTO lane_counts (lane, status, n)
    SELECT lane, status, sum(n) FROM gone GROUP BY lane, status HAVING sum(n) <> 0
$$;
REVOKE EXECUTE ON FUNCTION runlane.fold_lane_counts() FROM PUBLIC;

-- The lane is checked by every function that sets it (check_lane) and here; the lease check covers
-- the rest. Pruning deletes a run's steps explicitly, as it does its events.
ALTER TABLE runlane.runs DROP CONSTRAINT runs_lane_fkey;
ALTER TABLE runlane.runs ADD CONSTRAINT runs_lane_check CHECK (lane IN ('A', 'B', 'C', 'D'));
ALTER TABLE runlane.runs DROP CONSTRAINT runs_worker_id_fkey;
ALTER TABLE runlane.run_steps DROP CONSTRAINT run_steps_run_id_fkey;

-- Running runs per lane (the cap's count, the sweeper's scan): without lease_expires_at, so renewing
-- a lease changes no indexed column.
DROP INDEX runlane.runs_running_idx;
CREATE INDEX runs_running_idx ON runlane.runs (lane) WHERE status = 'running';

-- Where the attempt's steps stand, on the run itself, so a transition is checked against the run row
-- that is updated anyway: the step running now, the last step started, and the first step that ended
-- in a way that fails the run or was passed over unstarted (NULL while none was). Reset by every
-- claim.
ALTER TABLE runlane.runs
    ADD COLUMN running_step integer,
    ADD COLUMN last_started_step integer NOT NULL DEFAULT -1,
    ADD COLUMN step_problem text;
-- Runs running across this migration: their columns from their steps so far.
UPDATE runlane.runs r
SET last_started_step = s.last_started, running_step = s.running,
    step_problem = (SELECT format('step %s ''%s'' %s', x.idx, x.name, x.status) FROM runlane.run_steps x
                    WHERE x.run_id = r.id AND x.attempt = r.attempt AND x.status NOT IN ('running', 'succeeded', 'skipped')
                      AND (r.steps -> x.idx -> 'continue_on_error') IS DISTINCT FROM 'true'
                    ORDER BY x.idx LIMIT 1)
FROM (SELECT x.run_id, x.attempt, max(x.idx) AS last_started, max(x.idx) FILTER (WHERE x.status = 'running') AS running
      FROM runlane.run_steps x GROUP BY x.run_id, x.attempt) s
WHERE r.status = 'running' AND s.run_id = r.id AND s.attempt = r.attempt;

ALTER TABLE runlane.runs SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01,
                              autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.05,
                              autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE runlane.run_steps SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- As in 0010, and: a run due later waits as 'scheduled'.
CREATE OR REPLACE FUNCTION runlane.enqueue_run(
    p_template        text,
    p_params          jsonb DEFAULT '{}',
    p_lane            text DEFAULT NULL,
    p_priority        integer DEFAULT NULL,
    p_run_at          timestamptz DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_session_id      uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    t run_templates;
    lane_name text;
    problems text[];
    big record;
    new_id uuid;
    due boolean := coalesce(p_run_at, now()) <= now();
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN new_id;
        END IF;
    END IF;
    SELECT * INTO t FROM run_templates WHERE name = p_template ORDER BY version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', unknown_template(p_template) USING ERRCODE = 'RL404';
    END IF;
    lane_name := coalesce(p_lane, t.default_lane);
    PERFORM check_lane(lane_name);
    IF octet_length(p_params::text) > 1024 * 1024 THEN
        RAISE EXCEPTION 'params are % bytes, over the 1 MiB limit', octet_length(p_params::text)
            USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_params) = 'object' THEN
        SELECT k, octet_length(p_params ->> k) AS n INTO big FROM jsonb_object_keys(p_params) AS o(k)
        WHERE octet_length(p_params ->> k) > 256 * 1024 ORDER BY k LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'param ''%'' is % bytes, over the 256 KiB limit for one value', big.k, big.n
                USING ERRCODE = 'RL422';
        END IF;
    END IF;
    problems := param_violations(t.params_schema, p_params);
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'invalid params for template ''%'': %', p_template, array_to_string(problems, '; ')
            USING ERRCODE = 'RL422', DETAIL = to_jsonb(problems)::text;
    END IF;
    IF p_priority IS NOT NULL AND p_priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'priority % is out of range (-100 to 100)', p_priority USING ERRCODE = 'RL422';
    END IF;
    IF p_session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions WHERE id = p_session_id) THEN
        RAISE EXCEPTION 'unknown session %', p_session_id USING ERRCODE = 'RL404';
    END IF;

    INSERT INTO runs (template, template_version, lane, priority, status, params, secret_params, steps, requires,
                      timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                      session_id, next_seq)
    VALUES (t.name, t.version, lane_name, coalesce(p_priority, t.default_priority),
            CASE WHEN due THEN 'queued' ELSE 'scheduled' END, p_params,
            ARRAY(SELECT k FROM jsonb_each(coalesce(t.params_schema -> 'properties', '{}')) AS e(k, v)
                  WHERE v -> 'secret' = 'true'::jsonb ORDER BY k),
            t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes,
            coalesce(p_run_at, now()), p_idempotency_key, p_session_id, 2)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        -- A concurrent enqueue with the same key won the insert.
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        RETURN new_id;
    END IF;
    INSERT INTO run_events (run_id, seq, attempt, kind, data)
    VALUES (new_id, 1, 0, 'run.queued', jsonb_build_object('template', t.name, 'version', t.version,
            'lane', lane_name, 'by', session_user));
    INSERT INTO lane_counts (lane, status, n) VALUES (lane_name, CASE WHEN due THEN 'queued' ELSE 'scheduled' END, 1);
    IF due THEN
        PERFORM pg_notify('runlane_lane_' || lower(lane_name), '');
    END IF;
    RETURN new_id;
END $$;

-- As in 0008, without the run_at test (a queued run is due; later ones are 'scheduled'), and: the
-- claim starts the attempt's first step (step.started right after run.claimed), so a worker's first
-- write about a run is already its first step's end.
CREATE OR REPLACE FUNCTION runlane.claim_runs(
    p_worker_id  uuid,
    p_lanes      text[],
    p_limit      integer,
    p_session_id uuid DEFAULT NULL
) RETURNS SETOF runlane.claimed_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    w workers;
    l text;
BEGIN
    SELECT * INTO w FROM workers WHERE id = p_worker_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown worker %: register it first', p_worker_id USING ERRCODE = 'RL404';
    END IF;
    IF w.state = 'gone' THEN
        RAISE EXCEPTION 'worker % was marked gone (silent since %): register again', p_worker_id, w.last_seen_at
            USING ERRCODE = 'RL410';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR w.state = 'draining' THEN
        RETURN;
    END IF;
    FOREACH l IN ARRAY coalesce(p_lanes, '{}') LOOP
        PERFORM check_lane(l);
    END LOOP;
    PERFORM pg_advisory_xact_lock(hashtext('runlane.lane.' || name))
    FROM lanes WHERE name = ANY (p_lanes) AND max_running IS NOT NULL ORDER BY name;

    RETURN QUERY
    WITH lane_room AS MATERIALIZED (
        SELECT o.name, o.ord,
               CASE WHEN ln.max_running IS NULL THEN p_limit
                    ELSE greatest(0, ln.max_running - (SELECT count(*) FROM runs x
                                                       WHERE x.lane = o.name AND x.status = 'running'))::integer
               END AS room
        FROM unnest(p_lanes) WITH ORDINALITY AS o(name, ord)
        JOIN lanes ln ON ln.name = o.name
        ORDER BY o.ord
    ),
    picked AS MATERIALIZED (
        SELECT c.id
        FROM lane_room lr
        CROSS JOIN LATERAL (
            SELECT r.id FROM runs r
            WHERE r.lane = lr.name AND r.status = 'queued'
              AND (p_session_id IS NULL OR r.session_id = p_session_id)
              AND r.requires <@ w.capabilities
            ORDER BY r.priority DESC, r.run_at, r.id
            LIMIT lr.room
            FOR UPDATE SKIP LOCKED
        ) c
        LIMIT p_limit
    ),
    claimed AS (
        UPDATE runs r
        SET status = 'running', attempt = r.attempt + 1, lease = gen_random_uuid(), worker_id = w.id,
            lease_expires_at = now() + w.lease_ms * interval '1 millisecond',
            claimed_at = now(), deadline_at = now() + r.timeout_ms * interval '1 millisecond',
            next_seq = r.next_seq + 2, event_batch = 0, event_batch_seq = NULL,
            running_step = 0, last_started_step = 0, step_problem = NULL
        FROM picked
        WHERE r.id = picked.id
        RETURNING r.*
    ),
    started AS (
        INSERT INTO run_steps (run_id, attempt, idx, name, kind, status, started_seq)
        SELECT c.id, c.attempt, 0, c.steps -> 0 ->> 'name', c.steps -> 0 ->> 'kind', 'running', c.next_seq - 1
        FROM claimed c
    ),
    logged AS (
        INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
        SELECT c.id, c.next_seq - 2, c.attempt, 'run.claimed', NULL,
               jsonb_build_object('worker_id', w.id, 'host', w.host, 'attempt', c.attempt)
        FROM claimed c
        UNION ALL
        SELECT c.id, c.next_seq - 1, c.attempt, 'step.started', 0,
               jsonb_build_object('name', c.steps -> 0 ->> 'name', 'kind', c.steps -> 0 ->> 'kind')
        FROM claimed c
    ),
    counted AS (
        INSERT INTO lane_counts (lane, status, n)
        SELECT c.lane, x.status, sum(x.n) FROM claimed c CROSS JOIN (VALUES ('queued', -1), ('running', 1)) AS x(status, n)
        GROUP BY c.lane, x.status
    )
    SELECT c.id, c.lease, c.lease_expires_at, c.lane, c.attempt, c.template, c.template_version, c.params,
           c.secret_params, c.steps, c.timeout_ms, c.session_id
    FROM claimed c;
END $$;

-- As in 0004, and: a scheduled run is cancelled at once, like a queued one.
CREATE OR REPLACE FUNCTION runlane.cancel_run(p_run_id uuid, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    IF r.status IN ('queued', 'scheduled') THEN
        UPDATE runs SET status = 'cancelled', finished_at = now(), cancel_requested_at = now(),
                        cancel_reason = p_reason, error = 'cancelled before it started'
        WHERE id = p_run_id;
        INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, r.status, -1);
        PERFORM add_event(p_run_id, 'run.finished',
            jsonb_strip_nulls(jsonb_build_object('status', 'cancelled', 'reason', p_reason, 'by', session_user)));
        RETURN 'cancelled';
    ELSIF r.status = 'running' THEN
        IF r.cancel_requested_at IS NULL THEN
            UPDATE runs SET cancel_requested_at = now(), cancel_reason = p_reason WHERE id = p_run_id;
            PERFORM add_event(p_run_id, 'run.cancel_requested',
                jsonb_strip_nulls(jsonb_build_object('reason', p_reason, 'by', session_user)));
        END IF;
        PERFORM pg_notify('runlane_cancel', p_run_id::text);
        RETURN 'cancel_requested';
    END IF;
    RETURN r.status;
END $$;

-- As in 0004, counted in lane_counts.
CREATE OR REPLACE FUNCTION runlane.retry_run(p_run_id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    IF r.status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'run % is %: only failed or cancelled runs can be retried', p_run_id, r.status
            USING ERRCODE = 'RL409';
    END IF;
    UPDATE runs SET status = 'queued', run_at = now(), failed_attempts = 0, crash_count = 0, finished_at = NULL,
                    cancel_requested_at = NULL, cancel_reason = NULL, result = NULL, error = NULL, deadline_at = NULL
    WHERE id = p_run_id;
    INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, 'queued', 1);
    PERFORM add_event(p_run_id, 'run.retried', jsonb_build_object('previous_status', r.status, 'by', session_user));
    PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
    RETURN 'queued';
END $$;

-- When the oldest queued run of a lane became due: one index probe per priority present (the claim
-- index is in priority order), not a scan of the backlog.
CREATE FUNCTION runlane.oldest_queued(p_lane text) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    WITH RECURSIVE firsts AS (
        (SELECT r.priority, r.run_at FROM runs r WHERE r.lane = p_lane AND r.status = 'queued'
         ORDER BY r.priority DESC, r.run_at, r.id LIMIT 1)
        UNION ALL
        SELECT n.priority, n.run_at FROM firsts f
        CROSS JOIN LATERAL (SELECT r.priority, r.run_at FROM runs r
                            WHERE r.lane = p_lane AND r.status = 'queued' AND r.priority < f.priority
                            ORDER BY r.priority DESC, r.run_at, r.id LIMIT 1) n
    )
    SELECT min(run_at) FROM firsts
$$;
REVOKE EXECUTE ON FUNCTION runlane.oldest_queued(text) FROM PUBLIC;

-- Per lane: queued (runnable now), scheduled (due later), running, cap, oldest runnable age. From
-- lane_counts and the claim index: milliseconds, whatever the backlog.
CREATE OR REPLACE FUNCTION runlane.lane_stats()
RETURNS TABLE (lane text, queued bigint, scheduled bigint, running bigint, max_running integer,
               oldest_queued_s double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT l.name,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'queued'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'scheduled'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'running'), 0)::bigint,
           l.max_running,
           coalesce(extract(epoch FROM now() - oldest_queued(l.name)), 0)::double precision
    FROM lanes l
    LEFT JOIN lane_counts c ON c.lane = l.name
    GROUP BY l.name, l.max_running
    ORDER BY l.name
$$;
