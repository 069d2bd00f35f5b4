-- The hot path, part two: what a worker writes about its runs, for many runs in one call.
--
-- apply_ops takes a batch of items, one per run: the run's output events, finishing a step, starting
-- the next, ending the attempt — applied in that order, each item all or nothing, fenced by its own
-- lease, answered on its own (one lost lease never fails the others). The batch is one statement
-- per kind of write, one commit and one NOTIFY. Items are numbered per attempt (`op`): the same item
-- sent again after a lost reply is answered as it was and written once. The per-run functions
-- (start_step, finish_step, append_events, complete_run) stay for psql and scripts.

DROP FUNCTION runlane.unsucceeded_step(runlane.runs);

-- Why the lease holder's attempt may not end as succeeded, or NULL (as in 0008), where p_step is
-- taken as finished with p_status (the same call finishes it).
CREATE FUNCTION runlane.unsucceeded_step(p_run_id uuid, p_attempt integer, p_steps jsonb, p_step integer,
                                         p_status text) RETURNS text
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT format('step %s ''%s'' %s', s.n - 1, s.spec ->> 'name',
                  CASE WHEN st.status IS NULL THEN 'never started'
                       WHEN st.status = 'running' THEN 'is running'
                       ELSE st.status END)
    FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS s(spec, n)
    LEFT JOIN LATERAL (
        SELECT CASE WHEN s.n - 1 = p_step THEN p_status ELSE x.status END AS status
        FROM run_steps x WHERE x.run_id = p_run_id AND x.attempt = p_attempt AND x.idx = s.n - 1
    ) st ON true
    WHERE st.status IS NULL OR st.status = 'running'
       OR (st.status NOT IN ('succeeded', 'skipped') AND (s.spec -> 'continue_on_error') IS DISTINCT FROM 'true')
    ORDER BY s.n
    LIMIT 1
$$;

-- As in 0008, keeping the run's step columns (0012) current; a step passed over unstarted is the
-- attempt's step problem (a failed run skips its remaining steps; a succeeded one ran them all).
CREATE OR REPLACE FUNCTION runlane.start_step(p_run_id uuid, p_lease uuid, p_step integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    st run_steps;
    spec jsonb;
BEGIN
    r := hold(p_run_id, p_lease);
    spec := r.steps -> p_step;
    IF p_step IS NULL OR p_step < 0 OR spec IS NULL THEN
        RAISE EXCEPTION 'run % has no step %', p_run_id, p_step USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO st FROM run_steps WHERE run_id = p_run_id AND attempt = r.attempt AND idx = p_step;
    IF FOUND THEN
        IF st.status = 'running' THEN
            RETURN st.started_seq;
        END IF;
        RAISE EXCEPTION 'step % of run % already ended (%) in attempt %', p_step, p_run_id, st.status, r.attempt
            USING ERRCODE = 'RL409';
    END IF;
    IF p_step <= r.last_started_step OR r.running_step IS NOT NULL THEN
        RAISE EXCEPTION 'step % of run % cannot start now: step % was started last, % is running', p_step, p_run_id,
            r.last_started_step, coalesce(r.running_step::text, 'none') USING ERRCODE = 'RL409';
    END IF;
    -- Starting past a step that never ran: the attempt can no longer succeed.
    UPDATE runs SET next_seq = next_seq + 1, running_step = p_step, last_started_step = p_step,
                    step_problem = CASE
                        WHEN step_problem IS NULL AND p_step > last_started_step + 1
                            THEN format('step %s ''%s'' never started', last_started_step + 1,
                                        steps -> (last_started_step + 1) ->> 'name')
                        ELSE step_problem END
    WHERE id = p_run_id;
    INSERT INTO run_steps (run_id, attempt, idx, name, kind, status, started_seq)
    VALUES (p_run_id, r.attempt, p_step, spec ->> 'name', spec ->> 'kind', 'running', r.next_seq);
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, r.next_seq, r.attempt, 'step.started', p_step,
            jsonb_build_object('name', spec ->> 'name', 'kind', spec ->> 'kind'));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || r.next_seq);
    RETURN r.next_seq;
END $$;

CREATE OR REPLACE FUNCTION runlane.finish_step(
    p_run_id    uuid,
    p_lease     uuid,
    p_step      integer,
    p_status    text,
    p_exit_code integer DEFAULT NULL,
    p_error     text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    st run_steps;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'skipped') THEN
        RAISE EXCEPTION 'step status must be succeeded, failed, cancelled, timed_out or skipped, got %', p_status
            USING ERRCODE = 'RL422';
    END IF;
    r := hold(p_run_id, p_lease);
    SELECT * INTO st FROM run_steps WHERE run_id = p_run_id AND attempt = r.attempt AND idx = p_step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step % of run % was not started in attempt %', p_step, p_run_id, r.attempt
            USING ERRCODE = 'RL409';
    END IF;
    IF st.status <> 'running' THEN
        IF st.status = p_status AND st.exit_code IS NOT DISTINCT FROM p_exit_code THEN
            RETURN st.finished_seq;
        END IF;
        RAISE EXCEPTION 'step % of run % already ended (%) in attempt %', p_step, p_run_id, st.status, r.attempt
            USING ERRCODE = 'RL409';
    END IF;
    UPDATE runs SET next_seq = next_seq + 1, running_step = NULL,
                    step_problem = CASE
                        WHEN step_problem IS NULL AND p_status NOT IN ('succeeded', 'skipped')
                             AND (steps -> p_step -> 'continue_on_error') IS DISTINCT FROM 'true'
                            THEN format('step %s ''%s'' %s', p_step, st.name, p_status)
                        ELSE step_problem END
    WHERE id = p_run_id;
    UPDATE run_steps SET status = p_status, exit_code = p_exit_code, error = p_error, finished_at = now(),
                         finished_seq = r.next_seq
    WHERE run_id = p_run_id AND attempt = r.attempt AND idx = p_step
    RETURNING * INTO st;
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, r.next_seq, r.attempt, 'step.finished', p_step,
            jsonb_strip_nulls(jsonb_build_object('name', st.name, 'status', p_status, 'exit_code', p_exit_code,
                'error', p_error,
                'duration_ms', round(extract(epoch FROM st.finished_at - st.started_at) * 1000))));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || r.next_seq);
    RETURN r.next_seq;
END $$;

-- What comes back for each item.
CREATE TYPE runlane.op_outcome AS (
    item     integer,         -- 1-based position in the batch
    code     text,            -- 'ok', 'replay', 'RL001', 'RL404', 'RL409', 'RL422'
    last_seq bigint,          -- the item's last event (for a replay: as first answered)
    status   text,            -- the run's status after an ending (NULL without one)
    message  text             -- why, for an error
);

-- Applies a batch of items (arrays in parallel, one element per item; the events of all items
-- flattened, each naming its 1-based item). Per item: p_ops its number in the attempt (NULL: no
-- replay check), a step to finish (p_finish_*), a step to start (p_start_steps), an ending
-- (p_outcomes, p_results, p_errors). At most 1000 items, one per run, and 20000 events.
--
-- Ending an attempt: failed with attempts left is retried after the backoff (scheduled; queued when
-- the template has none); interrupted (a draining worker) is queued now, no attempt used; a cancel
-- pending turns both into cancelled; succeeded needs every step recorded as succeeded or skipped (or
-- failed with continue_on_error); anything else is final.
--
-- One UPDATE per batch fences every item by its lease, takes its seqs and changes the run's status;
-- items that do not pass (a lost lease, a replay, a conflict) are not touched and are judged after.
CREATE FUNCTION runlane.apply_ops(
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
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
                WHEN r.step_problem IS NULL AND i.sstep > r.last_started_step + 1
                    THEN format('step %s ''%s'' never started', r.last_started_step + 1,
                                r.steps -> (r.last_started_step + 1) ->> 'name')
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

-- As in 0008, through apply_ops (one way to end an attempt; a retry after a backoff is 'scheduled').
CREATE OR REPLACE FUNCTION runlane.complete_run(
    p_run_id  uuid,
    p_lease   uuid,
    p_outcome text,
    p_result  jsonb DEFAULT NULL,
    p_error   text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    o runlane.op_outcome;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted') THEN
        RAISE EXCEPTION 'outcome must be succeeded, failed, cancelled or interrupted, got %', p_outcome
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO o FROM apply_ops(ARRAY[p_run_id], ARRAY[p_lease], ARRAY[NULL::integer], ARRAY[NULL::integer],
                                   ARRAY[NULL::text], ARRAY[NULL::integer], ARRAY[NULL::text], ARRAY[NULL::integer],
                                   ARRAY[p_outcome], ARRAY[p_result], ARRAY[p_error], '{}', '{}', '{}', '{}', '{}', '{}');
    IF o.code IN ('ok', 'replay') THEN
        RETURN o.status;
    END IF;
    RAISE EXCEPTION '%', o.message USING ERRCODE = o.code;
END $$;

REVOKE EXECUTE ON FUNCTION runlane.unsucceeded_step(uuid, integer, jsonb, integer, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION runlane.apply_ops(uuid[], uuid[], integer[], integer[], text[], integer[], text[],
                                             integer[], text[], jsonb[], text[], integer[], text[], integer[],
                                             text[], text[], jsonb[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.apply_ops(uuid[], uuid[], integer[], integer[], text[], integer[], text[],
                                            integer[], text[], jsonb[], text[], integer[], text[], integer[],
                                            text[], text[], jsonb[]) TO runlane_worker;
