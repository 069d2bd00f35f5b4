-- Set-based enqueue, and the sweeper in bounded steps.

-- One run of an enqueue_runs call, resolved against its template.
CREATE TYPE runlane.enqueue_item AS (
    item             integer,
    template         text,
    template_version integer,
    params           jsonb,
    lane             text,
    priority         integer,
    run_at           timestamptz,
    idempotency_key  text,
    session_id       uuid,
    existing         uuid,     -- the run this key already names
    new_id           uuid      -- the run this position inserts (NULL: none)
);

-- Enqueues many runs in one call: arrays in parallel, one element per run (NULL where enqueue_run
-- takes its default). Every run is checked as enqueue_run checks one; the first violation refuses
-- the whole call, naming the run by its 1-based position. An idempotency key already used returns
-- that run (the same key twice in one call: one run). Returns each position with its run id.
CREATE FUNCTION runlane.enqueue_runs(
    p_templates        text[],
    p_params           jsonb[],
    p_lanes            text[],
    p_priorities       integer[],
    p_run_ats          timestamptz[],
    p_idempotency_keys text[],
    p_session_ids      uuid[]
) RETURNS TABLE (item integer, run_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    n integer := coalesce(cardinality(p_templates), 0);
    batch enqueue_item[];
    bad record;
    lanes_woken text[];
    l text;
BEGIN
    IF n > 100000 THEN
        RAISE EXCEPTION 'enqueue_runs takes at most 100000 runs a call, got %', n USING ERRCODE = 'RL422';
    END IF;
    IF n <> ANY (ARRAY[cardinality(p_params), cardinality(p_lanes), cardinality(p_priorities), cardinality(p_run_ats),
                       cardinality(p_idempotency_keys), cardinality(p_session_ids)]) THEN
        RAISE EXCEPTION 'enqueue_runs: every array needs % elements', n USING ERRCODE = 'RL422';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;

    -- Each position against the newest version of its template, and the run its key already names.
    batch := ARRAY(
        SELECT ROW(i.item::integer, i.template, t.version, coalesce(i.params, '{}'), coalesce(i.lane, t.default_lane),
                   coalesce(i.priority, t.default_priority), coalesce(i.run_at, now()), i.key, i.session,
                   (SELECT r.id FROM runs r WHERE r.idempotency_key = i.key), NULL)::enqueue_item
        FROM unnest(p_templates, p_params, p_lanes, p_priorities, p_run_ats, p_idempotency_keys, p_session_ids)
             WITH ORDINALITY AS i(template, params, lane, priority, run_at, key, session, item)
        LEFT JOIN LATERAL (SELECT x.version, x.default_lane, x.default_priority FROM run_templates x
                           WHERE x.name = i.template ORDER BY x.version DESC LIMIT 1) t ON true
        ORDER BY i.item);

    SELECT v.item, v.code, v.message INTO bad FROM (
        SELECT b.item,
               CASE WHEN b.template_version IS NULL
                      OR (b.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id))
                    THEN 'RL404' ELSE 'RL422' END AS code,
               CASE WHEN b.template_version IS NULL THEN unknown_template(b.template)
                    WHEN b.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id)
                        THEN format('unknown session %s', b.session_id)
                    WHEN b.lane IS NULL OR b.lane NOT IN ('A', 'B', 'C', 'D')
                        THEN format('unknown lane ''%s'' (lanes: %s)', coalesce(b.lane, 'NULL'), lane_names())
                    WHEN b.priority NOT BETWEEN -100 AND 100
                        THEN format('priority %s is out of range (-100 to 100)', b.priority)
                    WHEN octet_length(b.params::text) > 1024 * 1024
                        THEN format('params are %s bytes, over the 1 MiB limit', octet_length(b.params::text))
                    WHEN jsonb_typeof(b.params) = 'object' AND EXISTS (
                            SELECT 1 FROM jsonb_object_keys(b.params) AS o(k) WHERE octet_length(b.params ->> k) > 256 * 1024)
                        THEN (SELECT format('param ''%s'' is %s bytes, over the 256 KiB limit for one value', k,
                                            octet_length(b.params ->> k))
                              FROM jsonb_object_keys(b.params) AS o(k)
                              WHERE octet_length(b.params ->> k) > 256 * 1024 ORDER BY k LIMIT 1)
                    ELSE (SELECT format('invalid params for template ''%s'': %s', b.template, array_to_string(pv.v, '; '))
                          FROM (SELECT param_violations(t.params_schema, b.params) AS v
                                FROM run_templates t WHERE t.name = b.template AND t.version = b.template_version) pv
                          WHERE cardinality(pv.v) > 0)
               END AS message
        FROM unnest(batch) b
        WHERE b.existing IS NULL
    ) v
    WHERE v.message IS NOT NULL
    ORDER BY v.item
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run #%: %', bad.item, bad.message USING ERRCODE = bad.code;
    END IF;

    -- One new run per key (the first position naming it) and per position without a key.
    batch := ARRAY(
        SELECT ROW(b.item, b.template, b.template_version, b.params, b.lane, b.priority, b.run_at, b.idempotency_key,
                   b.session_id, b.existing,
                   CASE WHEN b.existing IS NULL AND (b.idempotency_key IS NULL OR b.item = min(b.item) OVER
                                                     (PARTITION BY b.idempotency_key))
                        THEN uuid_v7() END)::enqueue_item
        FROM unnest(batch) b ORDER BY b.item);
    WITH used AS MATERIALIZED (
        -- Each template version of the batch once, with the names of its secret params.
        SELECT t.*, ARRAY(SELECT k FROM jsonb_each(coalesce(t.params_schema -> 'properties', '{}')) AS e(k, v)
                          WHERE v -> 'secret' = 'true'::jsonb ORDER BY k) AS secrets
        FROM run_templates t
        WHERE (t.name, t.version) IN (SELECT DISTINCT b.template, b.template_version FROM unnest(batch) b)
    ), inserted AS (
        INSERT INTO runs (id, template, template_version, lane, priority, status, params, secret_params, steps,
                          requires, timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                          session_id, next_seq)
        SELECT b.new_id, t.name, t.version, b.lane, b.priority,
               CASE WHEN b.run_at <= now() THEN 'queued' ELSE 'scheduled' END, b.params, t.secrets,
               t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes, b.run_at,
               b.idempotency_key, b.session_id, 2
        FROM unnest(batch) b JOIN used t ON t.name = b.template AND t.version = b.template_version
        WHERE b.new_id IS NOT NULL
        ORDER BY b.item
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, template, template_version, lane, run_at, status
    ), counted AS (
        INSERT INTO lane_counts (lane, status, n) SELECT i.lane, i.status, count(*) FROM inserted i GROUP BY 1, 2
    ), logged AS (
        INSERT INTO run_events (run_id, seq, attempt, kind, data)
        SELECT i.id, 1, 0, 'run.queued', jsonb_build_object('template', i.template, 'version', i.template_version,
                                                           'lane', i.lane, 'by', session_user)
        FROM inserted i
    )
    SELECT array_agg(DISTINCT i.lane) FILTER (WHERE i.run_at <= now()) INTO lanes_woken FROM inserted i;
    FOREACH l IN ARRAY coalesce(lanes_woken, '{}') LOOP
        PERFORM pg_notify('runlane_lane_' || lower(l), '');
    END LOOP;

    RETURN QUERY
    SELECT b.item, coalesce(b.existing, k.id, b.new_id)
    FROM unnest(batch) b
    -- A position sharing a key with an earlier one, or a key a concurrent enqueue took meanwhile.
    LEFT JOIN runs k ON b.idempotency_key IS NOT NULL AND k.idempotency_key = b.idempotency_key
    ORDER BY b.item;
END $$;

REVOKE EXECUTE ON FUNCTION runlane.enqueue_runs(text[], jsonb[], text[], integer[], timestamptz[], text[], uuid[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.enqueue_runs(text[], jsonb[], text[], integer[], timestamptz[], text[], uuid[])
    TO runlane_operator;

-- One sweeper pass as in 0009, in bounded steps: each kind of work takes at most p_chunk runs, and
-- the report says whether any had more (`more`: call again at once). Due scheduled runs are
-- promoted to queued. Pruning is its own call (prune), on its own interval.
DROP FUNCTION runlane.sweep();
DROP FUNCTION runlane.sweep_at(timestamptz, interval, interval, interval, integer);

CREATE FUNCTION runlane.sweep_at(
    p_now            timestamptz,
    p_worker_timeout interval DEFAULT NULL,
    p_deadline_slack interval DEFAULT NULL,
    p_chunk          integer DEFAULT 1000
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    policy fleet;
    r runs;
    requeued integer := 0;
    cancelled integer := 0;
    crashed_out integer := 0;
    timed_out integer := 0;
    promoted integer := 0;
    gone integer := 0;
    expired integer := 0;
    late integer := 0;
    lane_name text;
    promoted_lanes text[];
    due_ids uuid[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('runlane.sweep')) THEN
        RETURN jsonb_build_object('skipped', true);
    END IF;
    SELECT * INTO policy FROM fleet;
    p_now := coalesce(p_now, now());
    p_worker_timeout := coalesce(p_worker_timeout, policy.worker_timeout);
    p_deadline_slack := coalesce(p_deadline_slack, policy.deadline_slack);

    FOR r IN SELECT x.* FROM runs x LEFT JOIN workers w ON w.id = x.worker_id
             WHERE x.status = 'running' AND x.lease_expires_at < p_now
               AND x.lease_expires_at + coalesce(w.kill_grace_ms, 0) * interval '1 millisecond' < p_now
             ORDER BY x.lease_expires_at LIMIT p_chunk FOR UPDATE OF x SKIP LOCKED LOOP
        expired := expired + 1;
        IF r.cancel_requested_at IS NOT NULL THEN
            UPDATE runs SET status = 'cancelled', crash_count = crash_count + 1, finished_at = now(), lease = NULL,
                            lease_expires_at = NULL, error = 'cancelled: the lease expired while the cancel was pending'
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'cancelled',
                'reason', 'lease_expired', 'crash_count', r.crash_count + 1, 'worker_id', r.worker_id));
            INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, 'running', -1);
            cancelled := cancelled + 1;
        ELSIF r.crash_count + 1 > r.max_crashes THEN
            UPDATE runs SET status = 'failed', crash_count = crash_count + 1, finished_at = now(), lease = NULL,
                            lease_expires_at = NULL,
                            error = format('lease expired %s times: crash cap (max_crashes = %s) reached',
                                           r.crash_count + 1, r.max_crashes)
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'failed', 'reason', 'crash_cap',
                'crash_count', r.crash_count + 1, 'worker_id', r.worker_id));
            INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, 'running', -1);
            crashed_out := crashed_out + 1;
        ELSE
            UPDATE runs SET status = 'queued', crash_count = crash_count + 1, run_at = now(), lease = NULL,
                            lease_expires_at = NULL, deadline_at = NULL
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.requeued', jsonb_build_object('reason', 'lease_expired',
                'crash_count', r.crash_count + 1, 'worker_id', r.worker_id, 'attempt', r.attempt));
            INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, 'running', -1), (r.lane, 'queued', 1);
            PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
            requeued := requeued + 1;
        END IF;
    END LOOP;

    FOR r IN SELECT * FROM runs WHERE status = 'running' AND deadline_at + p_deadline_slack < p_now
             LIMIT p_chunk FOR UPDATE SKIP LOCKED LOOP
        late := late + 1;
        UPDATE runs SET status = 'failed', finished_at = now(), lease = NULL, lease_expires_at = NULL,
                        error = format('run exceeded its timeout of %s ms', r.timeout_ms)
        WHERE id = r.id;
        PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'failed', 'reason', 'deadline',
            'timeout_ms', r.timeout_ms, 'worker_id', r.worker_id));
        INSERT INTO lane_counts (lane, status, n) VALUES (r.lane, 'running', -1);
        timed_out := timed_out + 1;
    END LOOP;

    -- Due scheduled runs join the queue; their lanes' workers are woken. The due ids are picked (and
    -- locked) first, then updated by primary key alone: written as one statement (`id IN (subquery)`,
    -- a join with the picked ids, or a status test beside the ids), the planner, with statistics older
    -- than a large backlog of future runs, walked every scheduled run (800,000 buffers a pass with
    -- 200,000 of them, every second). The rows are locked, so their status cannot change meanwhile.
    due_ids := ARRAY(SELECT id FROM runs WHERE status = 'scheduled' AND run_at <= p_now
                     ORDER BY run_at LIMIT p_chunk FOR UPDATE SKIP LOCKED);
    WITH due AS (
        UPDATE runs SET status = 'queued'
        WHERE id = ANY (due_ids)
        RETURNING lane
    ), counted AS (
        INSERT INTO lane_counts (lane, status, n)
        SELECT d.lane, x.status, sum(x.n) FROM due d CROSS JOIN (VALUES ('scheduled', -1), ('queued', 1)) AS x(status, n)
        GROUP BY d.lane, x.status
    )
    SELECT count(*), array_agg(DISTINCT lane) INTO promoted, promoted_lanes FROM due;
    FOREACH lane_name IN ARRAY coalesce(promoted_lanes, '{}') LOOP
        PERFORM pg_notify('runlane_lane_' || lower(lane_name), '');
    END LOOP;

    UPDATE workers SET state = 'gone' WHERE state <> 'gone' AND last_seen_at < p_now - p_worker_timeout;
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM fold_lane_counts();

    RETURN jsonb_build_object('skipped', false, 'requeued', requeued, 'cancelled', cancelled,
                              'crash_failed', crashed_out, 'deadline_failed', timed_out, 'promoted', promoted,
                              'workers_gone', gone,
                              'more', expired >= p_chunk OR late >= p_chunk OR promoted >= p_chunk);
END $$;

-- One sweeper pass now, by the fleet's policy: what workers, the API and operators call.
CREATE FUNCTION runlane.sweep() RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT sweep_at(now())
$$;

-- Deletes finished runs older than the retention as of p_now (the fleet's unless given), at most
-- p_limit of them (the fleet's prune limit unless given), with their events, steps and artifacts
-- (large artifacts' store keys go to doomed_objects); then workers gone for longer than the
-- retention, and sessions older than it that no run refers to. Runs locked by a concurrent writer
-- (a retry) are skipped and re-checked, never deleted. Returns what it deleted and whether more waits.
CREATE FUNCTION runlane.prune_at(p_now timestamptz, p_retention interval DEFAULT NULL, p_limit integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    policy fleet;
    pruned integer := 0;
    workers_pruned integer := 0;
    sessions_pruned integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('runlane.prune')) THEN
        RETURN jsonb_build_object('skipped', true);
    END IF;
    SELECT * INTO policy FROM fleet;
    p_now := coalesce(p_now, now());
    p_retention := coalesce(p_retention, policy.retention);
    p_limit := coalesce(p_limit, policy.prune_limit);
    WITH doomed AS (
        DELETE FROM runs WHERE id IN (
            SELECT id FROM runs
            WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < p_now - p_retention
            ORDER BY finished_at LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        RETURNING id
    ), events AS (
        DELETE FROM run_events WHERE run_id IN (SELECT id FROM doomed)
    ), steps AS (
        DELETE FROM run_steps WHERE run_id IN (SELECT id FROM doomed)
    ), objects AS (
        INSERT INTO doomed_objects (store_key)
        SELECT a.store_key FROM artifacts a WHERE a.run_id IN (SELECT id FROM doomed) AND a.store_key IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) INTO pruned FROM doomed;
    DELETE FROM workers WHERE state = 'gone' AND last_seen_at < p_now - p_retention;
    GET DIAGNOSTICS workers_pruned = ROW_COUNT;
    DELETE FROM sessions s WHERE s.created_at < p_now - p_retention
                            AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.session_id = s.id);
    GET DIAGNOSTICS sessions_pruned = ROW_COUNT;
    RETURN jsonb_build_object('skipped', false, 'pruned', pruned, 'workers_pruned', workers_pruned,
                              'sessions_pruned', sessions_pruned, 'more', pruned >= p_limit);
END $$;

CREATE FUNCTION runlane.prune() RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT prune_at(now())
$$;

REVOKE EXECUTE ON FUNCTION runlane.sweep_at(timestamptz, interval, interval, integer), runlane.sweep(),
                           runlane.prune_at(timestamptz, interval, integer), runlane.prune()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.sweep(), runlane.prune() TO runlane_worker, runlane_operator;

-- Short statements on the hot path: compiling them (JIT) costs more than it ever saves. The claim
-- and apply_ops are planned once per connection (a generic plan), not again for each call's arrays
-- (measured: 100-item batches 6.5 -> 3.7 ms in isolation), and the claim's plan cannot drift with
-- the statistics of a grown table.
ALTER FUNCTION runlane.claim_runs(uuid, text[], integer, uuid) SET jit = off SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION runlane.apply_ops(uuid[], uuid[], integer[], integer[], text[], integer[], text[], integer[], text[],
                                 jsonb[], text[], integer[], text[], integer[], text[], text[], jsonb[])
    SET jit = off SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION runlane.enqueue_runs(text[], jsonb[], text[], integer[], timestamptz[], text[], uuid[]) SET jit = off;
ALTER FUNCTION runlane.enqueue_run(text, jsonb, text, integer, timestamptz, text, uuid) SET jit = off;
ALTER FUNCTION runlane.lane_stats() SET jit = off;
ALTER FUNCTION runlane.sweep_at(timestamptz, interval, interval, integer) SET jit = off;
ALTER FUNCTION runlane.prune_at(timestamptz, interval, integer) SET jit = off;
