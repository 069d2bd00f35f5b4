-- The batch's length check, right this time, and the hot functions' plans fixed.
--
-- apply_ops and enqueue_runs refused a call only when every array's length differed from the first
-- one's: arrays of mixed lengths were unnested side by side, NULL-padded, and applied (a run could
-- end with no step status given; a run could be enqueued into the template's default lane). Now any
-- array of another length refuses the whole call (RL422).
--
-- The claim and apply_ops run under a generic plan: their statements are planned once per
-- connection, not again for each call's arrays (measured: 100-item batches 6.5 -> 3.7 ms in
-- isolation), and the claim's plan cannot drift with the statistics of a grown table.

-- As in 0013, with the length check above, jit off (as 0014 set) and the generic plan.
CREATE OR REPLACE FUNCTION runlane.apply_ops(
    p_run_ids           uuid[],
    p_leases            uuid[],
    p_ops               integer[],
    p_finish_steps      integer[],
    p_finish_statuses   text[],
    p_finish_exit_codes integer[],
    p_finish_errors     text[],
    p_start_steps       integer[],
    p_outcomes          text[],
    p_results           jsonb[],
    p_errors            text[],
    p_event_items       integer[],
    p_event_kinds       text[],
    p_event_steps       integer[],
    p_event_streams     text[],
    p_event_bodies      text[],
    p_event_data        jsonb[]
) RETURNS SETOF runlane.op_outcome
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp SET jit = off
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n integer := coalesce(cardinality(p_run_ids), 0);
    m integer := coalesce(cardinality(p_event_items), 0);
    done runlane.op_outcome[];
    pointers text;
    woken text[];
    lane_name text;
BEGIN
    IF n > 1000 OR m > 20000 THEN
        RAISE EXCEPTION 'a batch holds at most 1000 items and 20000 events, got % and %', n, m USING ERRCODE = 'RL422';
    END IF;
    IF n <> ANY (ARRAY[cardinality(p_leases), cardinality(p_ops), cardinality(p_finish_steps),
                       cardinality(p_finish_statuses), cardinality(p_finish_exit_codes), cardinality(p_finish_errors),
                       cardinality(p_start_steps), cardinality(p_outcomes), cardinality(p_results),
                       cardinality(p_errors)])
       OR m <> ANY (ARRAY[cardinality(p_event_kinds), cardinality(p_event_steps), cardinality(p_event_streams),
                          cardinality(p_event_bodies), cardinality(p_event_data)]) THEN
        RAISE EXCEPTION 'apply_ops: every item array needs % elements and every event array %', n, m
            USING ERRCODE = 'RL422';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    IF (SELECT count(DISTINCT x) FROM unnest(p_run_ids) AS x) <> n THEN
        RAISE EXCEPTION 'apply_ops: a run appears more than once in the batch' USING ERRCODE = 'RL422';
    END IF;

    WITH items AS (
        SELECT i.run_id, i.lease, i.op, i.fstep, i.fstatus, i.fexit, i.ferror, i.sstep, i.outcome, i.result, i.error,
               i.item::integer AS item, coalesce(ev.n, 0) AS n_events,
               coalesce(ev.n, 0) + (i.fstep IS NOT NULL)::integer + (i.sstep IS NOT NULL)::integer
                 + (i.outcome IS NOT NULL)::integer AS n_seqs
        FROM unnest(p_run_ids, p_leases, p_ops, p_finish_steps, p_finish_statuses, p_finish_exit_codes,
                    p_finish_errors, p_start_steps, p_outcomes, p_results, p_errors)
             WITH ORDINALITY AS i(run_id, lease, op, fstep, fstatus, fexit, ferror, sstep, outcome, result, error, item)
        LEFT JOIN (SELECT e.item, count(*)::integer AS n,
                          bool_or(coalesce(e.kind, '') !~ '^[a-z]+(\.[a-z_]+)+$' OR reserved_event_kind(e.kind)
                                  OR (e.stream IS NOT NULL AND e.stream NOT IN ('stdout', 'stderr'))) AS bad
                   FROM unnest(p_event_items, p_event_kinds, p_event_streams) AS e(item, kind, stream)
                   GROUP BY e.item) ev ON ev.item = i.item
        WHERE NOT coalesce(ev.bad, false)
          AND (i.fstep IS NULL) = (i.fstatus IS NULL)
          AND (i.fstatus IS NULL OR i.fstatus IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'skipped'))
          AND (i.outcome IS NULL OR i.outcome IN ('succeeded', 'failed', 'cancelled', 'interrupted'))
          AND (i.sstep IS NULL OR i.outcome IS NULL)
    ),
    upd AS (
        UPDATE runs r
        SET next_seq = r.next_seq + i.n_seqs,
            event_batch = coalesce(i.op, r.event_batch),
            event_batch_seq = CASE WHEN i.op IS NULL THEN r.event_batch_seq ELSE r.next_seq + i.n_seqs - 1 END,
            (status, completed_status) = (
                SELECT x.status, CASE WHEN i.outcome IS NULL THEN r.completed_status ELSE x.status END
                FROM (SELECT CASE
                    WHEN i.outcome IS NULL THEN r.status
                    WHEN i.outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts AND r.cancel_requested_at IS NULL
                        THEN CASE WHEN r.backoff_base_ms > 0 THEN 'scheduled' ELSE 'queued' END
                    WHEN i.outcome = 'interrupted' AND r.cancel_requested_at IS NULL THEN 'queued'
                    WHEN i.outcome = 'interrupted' OR (i.outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts)
                        THEN 'cancelled'
                    ELSE i.outcome END AS status) x),
            run_at = CASE
                WHEN i.outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts AND r.cancel_requested_at IS NULL
                    THEN now() + retry_backoff(r.backoff_base_ms, r.failed_attempts + 1)
                WHEN i.outcome = 'interrupted' AND r.cancel_requested_at IS NULL THEN now()
                ELSE r.run_at END,
            failed_attempts = r.failed_attempts + (i.outcome IS NOT DISTINCT FROM 'failed')::integer,
            error = CASE
                WHEN i.outcome IS NULL OR (i.outcome = 'interrupted' AND r.cancel_requested_at IS NULL) THEN r.error
                WHEN r.cancel_requested_at IS NOT NULL AND i.outcome IN ('failed', 'interrupted')
                     AND (i.outcome = 'interrupted' OR r.failed_attempts + 1 < r.max_attempts)
                    THEN coalesce(i.error || ' (then cancelled as requested)', 'cancelled as requested')
                ELSE i.error END,
            result = CASE WHEN i.outcome IS NULL THEN r.result ELSE i.result END,
            finished_at = CASE
                WHEN i.outcome IS NULL THEN r.finished_at
                WHEN (i.outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts AND r.cancel_requested_at IS NULL)
                  OR (i.outcome = 'interrupted' AND r.cancel_requested_at IS NULL) THEN NULL
                ELSE now() END,
            lease = CASE WHEN i.outcome IS NULL THEN r.lease END,
            lease_expires_at = CASE WHEN i.outcome IS NULL THEN r.lease_expires_at END,
            deadline_at = CASE WHEN i.outcome IS NULL THEN r.deadline_at END,
            completed_lease = CASE WHEN i.outcome IS NULL THEN r.completed_lease ELSE i.lease END,
            completed_outcome = CASE WHEN i.outcome IS NULL THEN r.completed_outcome ELSE i.outcome END,
            running_step = CASE WHEN i.sstep IS NOT NULL THEN i.sstep WHEN i.fstep IS NOT NULL THEN NULL
                                ELSE r.running_step END,
            last_started_step = coalesce(i.sstep, r.last_started_step),
            step_problem = CASE
                WHEN r.step_problem IS NULL AND i.fstep IS NOT NULL AND i.fstatus NOT IN ('succeeded', 'skipped')
                     AND (r.steps -> i.fstep -> 'continue_on_error') IS DISTINCT FROM 'true'
                    THEN format('step %s ''%s'' %s', i.fstep, r.steps -> i.fstep ->> 'name', i.fstatus)
                ELSE r.step_problem END
        FROM items i
        WHERE r.id = i.run_id AND r.lease = i.lease
          AND (i.op IS NULL OR i.op > r.event_batch)
          AND (i.fstep IS NULL OR r.running_step = i.fstep)
          AND (i.sstep IS NULL OR ((r.running_step IS NULL OR r.running_step = i.fstep)
                                   AND i.sstep > r.last_started_step AND r.steps -> i.sstep IS NOT NULL))
          AND (i.outcome IS DISTINCT FROM 'succeeded'
               OR (r.last_started_step = jsonb_array_length(r.steps) - 1
                   AND (r.running_step IS NULL OR r.running_step = i.fstep) AND r.step_problem IS NULL
                   AND (i.fstatus IS NULL OR i.fstatus IN ('succeeded', 'skipped')
                        OR r.steps -> i.fstep -> 'continue_on_error' = 'true')))
        RETURNING i.item, r.id, r.lane, r.attempt, r.next_seq - i.n_seqs AS base, r.next_seq - 1 AS last_seq,
                  i.n_events, i.fstep, i.fstatus, i.fexit, i.ferror, i.sstep, r.steps -> i.sstep ->> 'name' AS sname,
                  r.steps -> i.sstep ->> 'kind' AS skind, i.outcome, i.result, i.error, r.status, r.run_at,
                  r.failed_attempts, r.max_attempts
    ),
    finished AS (
        UPDATE run_steps s
        SET status = u.fstatus, exit_code = u.fexit, error = u.ferror, finished_at = now(),
            finished_seq = u.base + u.n_events
        FROM upd u
        WHERE u.fstep IS NOT NULL AND s.run_id = u.id AND s.attempt = u.attempt AND s.idx = u.fstep
        RETURNING s.run_id, s.attempt, s.idx, s.name, s.status, s.exit_code, s.error, s.started_at, s.finished_at,
                  s.finished_seq
    ),
    started AS (
        INSERT INTO run_steps (run_id, attempt, idx, name, kind, status, started_seq)
        SELECT u.id, u.attempt, u.sstep, u.sname, u.skind, 'running', u.base + u.n_events + (u.fstep IS NOT NULL)::integer
        FROM upd u WHERE u.sstep IS NOT NULL
    ),
    logged AS (
        INSERT INTO run_events (run_id, seq, attempt, kind, step, stream, body, data)
        SELECT u.id, u.base + e.pos - 1, u.attempt, e.kind, e.step, e.stream, e.body, e.data
        FROM (SELECT x.*, row_number() OVER (PARTITION BY x.item ORDER BY x.ord) AS pos
              FROM unnest(p_event_items, p_event_kinds, p_event_steps, p_event_streams, p_event_bodies, p_event_data)
                   WITH ORDINALITY AS x(item, kind, step, stream, body, data, ord)) e
        JOIN upd u ON u.item = e.item
        UNION ALL
        SELECT f.run_id, f.finished_seq, f.attempt, 'step.finished', f.idx, NULL, NULL,
               jsonb_strip_nulls(jsonb_build_object('name', f.name, 'status', f.status, 'exit_code', f.exit_code,
                   'error', f.error, 'duration_ms', round(extract(epoch FROM f.finished_at - f.started_at) * 1000)))
        FROM finished f
        UNION ALL
        SELECT u.id, u.base + u.n_events + (u.fstep IS NOT NULL)::integer, u.attempt, 'step.started', u.sstep,
               NULL, NULL, jsonb_build_object('name', u.sname, 'kind', u.skind)
        FROM upd u WHERE u.sstep IS NOT NULL
        UNION ALL
        SELECT u.id, u.last_seq, u.attempt,
               CASE WHEN u.status = 'scheduled' OR (u.status = 'queued' AND u.outcome = 'failed')
                    THEN 'run.retry_scheduled'
                    WHEN u.status = 'queued' THEN 'run.requeued'
                    ELSE 'run.finished' END, NULL, NULL, NULL,
               CASE WHEN u.status = 'scheduled' OR (u.status = 'queued' AND u.outcome = 'failed')
                    THEN jsonb_build_object('error', u.error, 'failed_attempts', u.failed_attempts,
                                            'max_attempts', u.max_attempts, 'run_at', u.run_at)
                    WHEN u.status = 'queued'
                    THEN jsonb_strip_nulls(jsonb_build_object('reason', 'interrupted', 'error', u.error))
                    ELSE jsonb_strip_nulls(jsonb_build_object('status', u.status, 'error', u.error, 'result', u.result,
                             'reason', CASE WHEN u.status <> u.outcome THEN 'cancel_requested' END)) END
        FROM upd u WHERE u.outcome IS NOT NULL
    ),
    counted AS (
        INSERT INTO lane_counts (lane, status, n)
        SELECT u.lane, x.status, sum(x.n) FROM upd u CROSS JOIN LATERAL (VALUES ('running', -1), (u.status, 1)) AS x(status, n)
        WHERE u.outcome IS NOT NULL AND x.status IN ('scheduled', 'queued', 'running')
        GROUP BY u.lane, x.status
    )
    SELECT array_agg(ROW(u.item, 'ok', u.last_seq, CASE WHEN u.outcome IS NOT NULL THEN u.status END, NULL)::op_outcome),
           string_agg(u.id::text || ':' || u.last_seq, ','),
           array_agg(DISTINCT u.lane) FILTER (WHERE u.outcome IS NOT NULL AND u.status = 'queued')
    INTO done, pointers, woken
    FROM upd u;

    -- One notification for the batch: the runs' new last seqs (or '*' when they do not fit).
    IF pointers IS NOT NULL THEN
        PERFORM pg_notify('runlane_events', CASE WHEN octet_length(pointers) > 7900 THEN '*' ELSE pointers END);
    END IF;
    -- Runs handed back or retried at once are runnable now (not the hot path).
    FOREACH lane_name IN ARRAY coalesce(woken, '{}') LOOP
        PERFORM pg_notify('runlane_lane_' || lower(lane_name), '');
    END LOOP;

    IF coalesce(cardinality(done), 0) = n THEN
        RETURN QUERY SELECT * FROM unnest(done) ORDER BY 1;
        RETURN;
    END IF;
    -- The items not applied, judged as they stand now: a replay is answered as it was first.
    RETURN QUERY
    SELECT d.* FROM unnest(done) d
    UNION ALL
    SELECT i.item::integer, v.code,
           CASE v.code WHEN 'replay' THEN coalesce(r.event_batch_seq, o.event_batch_seq) END,
           CASE WHEN v.code = 'replay' AND r.id IS NULL THEN o.completed_status END, v.message
    FROM unnest(p_run_ids, p_leases, p_ops, p_finish_steps, p_finish_statuses, p_start_steps, p_outcomes)
         WITH ORDINALITY AS i(run_id, lease, op, fstep, fstatus, sstep, outcome, item)
    LEFT JOIN runs r ON r.id = i.run_id AND r.lease = i.lease
    LEFT JOIN LATERAL (SELECT x.* FROM runs x WHERE x.id = i.run_id AND r.id IS NULL) o ON true
    LEFT JOIN run_steps fs ON fs.run_id = r.id AND fs.attempt = r.attempt AND fs.idx = i.fstep
    LEFT JOIN LATERAL (
        SELECT e.kind, e.ord FROM unnest(p_event_items, p_event_kinds, p_event_streams) WITH ORDINALITY AS e(item, kind, stream, ord)
        WHERE e.item = i.item
          AND (coalesce(e.kind, '') !~ '^[a-z]+(\.[a-z_]+)+$' OR reserved_event_kind(e.kind)
               OR (e.stream IS NOT NULL AND e.stream NOT IN ('stdout', 'stderr')))
        ORDER BY e.ord LIMIT 1
    ) bad ON true
    CROSS JOIN LATERAL (SELECT * FROM (VALUES
        (bad.kind IS NOT NULL AND reserved_event_kind(bad.kind), 'RL422',
         format('the kind ''%s'' is reserved for runlane itself (run.*, artifact.*, step.started, step.finished)',
                bad.kind)),
        (bad.ord IS NOT NULL, 'RL422',
         format('event kind ''%s'' is invalid: each event needs a dotted lowercase kind, and stream stdout or '
                'stderr when present', bad.kind)),
        ((i.fstep IS NULL) <> (i.fstatus IS NULL)
            OR i.fstatus NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'skipped')
            OR i.outcome NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted')
            OR (i.sstep IS NOT NULL AND i.outcome IS NOT NULL), 'RL422',
         'an item needs a step status with its step (succeeded, failed, cancelled, timed_out, skipped), an outcome '
         'from succeeded, failed, cancelled, interrupted, and never both a step to start and an ending'),
        (r.id IS NULL AND o.id IS NULL, 'RL404', format('unknown run %s', i.run_id)),
        (r.id IS NULL AND i.outcome IS NOT NULL AND o.completed_lease = i.lease AND o.completed_outcome = i.outcome,
         'replay', NULL),
        (r.id IS NULL, 'RL001',
         format('lease lost for run %s: it was requeued, finished or claimed by another worker', i.run_id)),
        (i.op = r.event_batch, 'replay', NULL),
        (i.op < r.event_batch, 'RL409', format('item %s of run %s is older than the last one written', i.op, i.run_id)),
        (i.fstep IS NOT NULL AND r.running_step IS DISTINCT FROM i.fstep, 'RL409',
         format('step %s of run %s is not running in attempt %s (%s)', i.fstep, i.run_id, r.attempt,
                coalesce(fs.status, 'never started'))),
        (i.sstep IS NOT NULL AND (i.sstep < 0 OR r.steps -> i.sstep IS NULL), 'RL422',
         format('run %s has no step %s', i.run_id, i.sstep)),
        (i.sstep IS NOT NULL AND i.sstep <= r.last_started_step, 'RL409',
         format('step %s of run %s was already started in attempt %s', i.sstep, i.run_id, r.attempt)),
        (i.sstep IS NOT NULL, 'RL409',
         format('step %s of run %s cannot start while step %s is running', i.sstep, i.run_id, r.running_step)),
        (i.outcome = 'succeeded', 'RL409',
         format('run %s cannot succeed: %s', i.run_id,
                coalesce(unsucceeded_step(r.id, r.attempt, r.steps, coalesce(i.fstep, -1), i.fstatus),
                         r.step_problem, 'a step is unfinished'))),
        (true, 'RL409', format('item %s of run %s could not be applied', i.op, i.run_id))
    ) AS rule(hit, code, message) WHERE rule.hit LIMIT 1) v
    WHERE i.item NOT IN (SELECT d.item FROM unnest(done) d)
    ORDER BY 1;
END $$;

-- As in 0014, with the length check above (and jit off, as 0014 set).
CREATE OR REPLACE FUNCTION runlane.enqueue_runs(
    p_templates        text[],
    p_params           jsonb[],
    p_lanes            text[],
    p_priorities       integer[],
    p_run_ats          timestamptz[],
    p_idempotency_keys text[],
    p_session_ids      uuid[]
) RETURNS TABLE (item integer, run_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp SET jit = off AS $$
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
    WITH inserted AS (
        INSERT INTO runs (id, template, template_version, lane, priority, status, params, secret_params, steps,
                          requires, timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                          session_id, next_seq)
        SELECT b.new_id, t.name, t.version, b.lane, b.priority,
               CASE WHEN b.run_at <= now() THEN 'queued' ELSE 'scheduled' END, b.params,
               ARRAY(SELECT k FROM jsonb_each(coalesce(t.params_schema -> 'properties', '{}')) AS e(k, v)
                     WHERE v -> 'secret' = 'true'::jsonb ORDER BY k),
               t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes, b.run_at,
               b.idempotency_key, b.session_id, 2
        FROM unnest(batch) b JOIN run_templates t ON t.name = b.template AND t.version = b.template_version
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

ALTER FUNCTION runlane.claim_runs(uuid, text[], integer, uuid) SET plan_cache_mode = force_generic_plan;
