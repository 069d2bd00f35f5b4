-- Template policy, stated and validated. A template's policy is its description, default lane and
-- priority, run timeout, retry policy (max attempts, first delay, multiplier, cap, jitter), crash cap,
-- required capabilities and retention. One function, template_problems, checks every field and names
-- each problem with its field and rule (`backoff_multiplier must be between 1 and 10, got 0.5`);
-- apply_template (psql, the API, the CLI) refuses a template with any, and `runlane templates validate`
-- asks it without writing. The retry policy takes effect where an attempt fails (apply_ops).

-- The retry policy's shape and the retention, per template version. The defaults are what every
-- retry did before (doubling, at most an hour, up to 25% extra). NULL retention: the fleet's (pruning
-- by it: 0020).
ALTER TABLE runlane.run_templates
    ADD COLUMN backoff_multiplier float8 NOT NULL DEFAULT 2 CHECK (backoff_multiplier BETWEEN 1 AND 10),
    ADD COLUMN backoff_max_ms integer NOT NULL DEFAULT 3600000 CHECK (backoff_max_ms BETWEEN 0 AND 604800000),
    ADD COLUMN backoff_jitter float8 NOT NULL DEFAULT 0.25 CHECK (backoff_jitter BETWEEN 0 AND 1),
    ADD COLUMN retention interval CHECK (retention >= interval '1 minute');

-- Every problem of a template spec (the JSON of a templates/*.yaml file, without its name), in a fixed
-- order, each with the top-level field it is about ('' for the spec as a whole); no rows: the template
-- applies. Writes nothing, so a viewer may ask too.
CREATE FUNCTION runlane.template_problems(p_name text, p_spec jsonb) RETURNS TABLE (field text, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    -- [field, type (as value_problem names it), least, greatest]: every field a spec may have, in the
    -- order their problems are reported. docs/TEMPLATES.md describes each.
    fields constant jsonb := '[
        ["description", "string"], ["lane", "string"], ["priority", "integer", -100, 100],
        ["timeout_ms", "count", 1000, 2147483647], ["max_attempts", "count", 1, 1000],
        ["backoff_base_ms", "count", 0, 604800000], ["backoff_multiplier", "number", 1, 10],
        ["backoff_max_ms", "count", 0, 604800000], ["backoff_jitter", "number", 0, 1],
        ["max_crashes", "count", 0, 100], ["requires", "string_list"], ["retention_s", "count", 60, 315360000],
        ["params", "any"], ["steps", "any"]]';
    names text[];
    f jsonb;
    k text;
    v jsonb;
    bad text;
    usable text[] := '{}';   -- fields present whose value has the right type and is within bounds
    base_ms bigint;
    max_ms bigint;
    i integer := 0;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        field := 'name';
        problem := format('name must be lowercase letters, digits, ''.'', ''_'' and ''-'', starting with a letter '
                          'or digit, at most 63 characters, got %s', coalesce(to_jsonb(p_name)::text, 'null'));
        RETURN NEXT;
    END IF;
    IF jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        field := '';
        problem := 'a template must be an object of fields';
        RETURN NEXT;
        RETURN;
    END IF;
    names := ARRAY(SELECT x ->> 0 FROM jsonb_array_elements(fields) WITH ORDINALITY AS e(x, n) ORDER BY n);
    FOR k IN SELECT o.key FROM jsonb_object_keys(p_spec) AS o(key) WHERE NOT o.key = ANY (names) ORDER BY o.key LOOP
        field := k;
        problem := format('unknown field ''%s'' (%s)', k, coalesce(
            (SELECT format('did you mean ''%s''?', n) FROM unnest(names) AS u(n)
             WHERE edit_distance(n, k) <= 2 ORDER BY edit_distance(n, k), n LIMIT 1),
            'a template has: name, ' || array_to_string(names, ', ')));
        RETURN NEXT;
    END LOOP;

    -- Types, then bounds.
    FOR f IN SELECT x FROM jsonb_array_elements(fields) WITH ORDINALITY AS e(x, n) ORDER BY n LOOP
        k := f ->> 0;
        CONTINUE WHEN NOT p_spec ? k;
        v := p_spec -> k;
        bad := value_problem(f ->> 1, v);
        field := k;
        IF bad IS NOT NULL THEN
            problem := format('%s %s, got %s', k, bad, left(v::text, 100));
            RETURN NEXT;
        ELSIF jsonb_array_length(f) = 4 AND v::text::numeric NOT BETWEEN (f ->> 2)::numeric AND (f ->> 3)::numeric THEN
            problem := format('%s must be between %s and %s, got %s', k, f ->> 2, f ->> 3, v::text);
            RETURN NEXT;
        ELSE
            usable := usable || k;
        END IF;
    END LOOP;

    -- What a type and bounds cannot say, field by field in the same order.
    IF 'description' = ANY (usable) AND length(p_spec ->> 'description') > 1000 THEN
        field := 'description';
        problem := format('description must be at most 1000 characters, got %s', length(p_spec ->> 'description'));
        RETURN NEXT;
    END IF;
    IF 'lane' = ANY (usable) AND NOT EXISTS (SELECT 1 FROM lanes WHERE name = p_spec ->> 'lane') THEN
        field := 'lane';
        problem := format('lane must be one of %s, got %s', lane_names(), p_spec -> 'lane');
        RETURN NEXT;
    END IF;
    -- The first delay may not be above the cap (either may be the default); an invalid one was named above.
    IF (NOT p_spec ? 'backoff_base_ms' OR 'backoff_base_ms' = ANY (usable))
       AND (NOT p_spec ? 'backoff_max_ms' OR 'backoff_max_ms' = ANY (usable)) THEN
        base_ms := coalesce((p_spec ->> 'backoff_base_ms')::bigint, 1000);
        max_ms := coalesce((p_spec ->> 'backoff_max_ms')::bigint, 3600000);
        IF base_ms > max_ms THEN
            field := CASE WHEN p_spec ? 'backoff_base_ms' THEN 'backoff_base_ms' ELSE 'backoff_max_ms' END;
            problem := format('backoff_base_ms (%s%s) must not be above backoff_max_ms (%s%s)',
                              base_ms, CASE WHEN p_spec ? 'backoff_base_ms' THEN '' ELSE ', the default' END,
                              max_ms, CASE WHEN p_spec ? 'backoff_max_ms' THEN '' ELSE ', the default' END);
            RETURN NEXT;
        END IF;
    END IF;
    IF 'requires' = ANY (usable) THEN
        field := 'requires';
        IF jsonb_array_length(p_spec -> 'requires') > 16 THEN
            problem := format('requires must name at most 16 capabilities, got %s',
                              jsonb_array_length(p_spec -> 'requires'));
            RETURN NEXT;
        END IF;
        FOR problem IN
            SELECT format('requires: %s is not a capability name (lowercase letters, digits, ''.'', ''_'' and '
                          '''-'', starting with a letter or digit, at most 63 characters)', to_jsonb(r.c))
            FROM jsonb_array_elements_text(p_spec -> 'requires') WITH ORDINALITY AS r(c, n)
            WHERE r.c !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' ORDER BY r.n
        LOOP
            RETURN NEXT;
        END LOOP;
        FOR problem IN
            SELECT format('requires names %s more than once', to_jsonb(r.c))
            FROM jsonb_array_elements_text(p_spec -> 'requires') WITH ORDINALITY AS r(c, n)
            GROUP BY r.c HAVING count(*) > 1 ORDER BY min(r.n)
        LOOP
            RETURN NEXT;
        END LOOP;
    END IF;
    -- The schema keyword by keyword, as 0015 checks it: an object schema using only enforced keywords.
    IF p_spec ? 'params' THEN
        field := 'params';
        problem := params_schema_problem(p_spec -> 'params');
        IF problem IS NOT NULL THEN
            RETURN NEXT;
        END IF;
    END IF;
    field := 'steps';
    IF jsonb_typeof(p_spec -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(p_spec -> 'steps') = 0 THEN
        problem := 'steps must be a non-empty list';
        RETURN NEXT;
    ELSE
        FOR v IN SELECT s FROM jsonb_array_elements(p_spec -> 'steps') WITH ORDINALITY AS e(s, n) ORDER BY n LOOP
            bad := step_problem(v);
            IF bad IS NOT NULL THEN
                problem := format('step %s: %s', i, bad);
                RETURN NEXT;
            END IF;
            i := i + 1;
        END LOOP;
    END IF;
END $$;

-- Applies a template spec and returns its version: a new one when the spec differs from the newest
-- stored version, the newest one when it is the same. A spec with any problem (template_problems) is
-- refused with all of them: the message names each, DETAIL is their JSON array.
CREATE OR REPLACE FUNCTION runlane.apply_template(p_name text, p_spec jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    problems text[];
    latest run_templates;
    ver integer;
BEGIN
    problems := ARRAY(SELECT p.problem FROM template_problems(p_name, p_spec) WITH ORDINALITY AS p(field, problem, n)
                      ORDER BY p.n);
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'template ''%'': %', coalesce(p_name, 'NULL'), array_to_string(problems, '; ')
            USING ERRCODE = 'RL422', DETAIL = to_jsonb(problems)::text;
    END IF;
    -- Two applies of one name at once (CI on several machines) take versions one after the other.
    PERFORM pg_advisory_xact_lock(hashtext('runlane.apply_template'), hashtext(p_name));
    SELECT * INTO latest FROM run_templates WHERE name = p_name ORDER BY version DESC LIMIT 1;
    IF FOUND AND latest.spec = p_spec THEN
        RETURN latest.version;
    END IF;
    ver := coalesce(latest.version, 0) + 1;
    INSERT INTO run_templates (name, version, description, params_schema, steps, default_lane, default_priority,
                               timeout_ms, max_attempts, backoff_base_ms, backoff_multiplier, backoff_max_ms,
                               backoff_jitter, max_crashes, requires, retention, spec)
    VALUES (p_name, ver, coalesce(p_spec ->> 'description', ''), coalesce(p_spec -> 'params', '{"type": "object"}'),
            p_spec -> 'steps', coalesce(p_spec ->> 'lane', 'C'), coalesce((p_spec ->> 'priority')::integer, 0),
            coalesce((p_spec ->> 'timeout_ms')::integer, 3600000), coalesce((p_spec ->> 'max_attempts')::integer, 1),
            coalesce((p_spec ->> 'backoff_base_ms')::integer, 1000),
            coalesce((p_spec ->> 'backoff_multiplier')::float8, 2),
            coalesce((p_spec ->> 'backoff_max_ms')::integer, 3600000),
            coalesce((p_spec ->> 'backoff_jitter')::float8, 0.25),
            coalesce((p_spec ->> 'max_crashes')::integer, 3),
            -- What the template declares, and docker when a step needs it.
            ARRAY(SELECT DISTINCT c FROM jsonb_array_elements_text(coalesce(p_spec -> 'requires', '[]')) AS r(c)
                  UNION SELECT 'docker' WHERE jsonb_path_exists(p_spec -> 'steps', '$[*] ? (@.kind == "docker")')
                  ORDER BY 1),
            (p_spec ->> 'retention_s')::bigint * interval '1 second',
            p_spec);
    RETURN ver;
END $$;

-- The wait before retry n (1-based) of a run of this template version: the first delay (the run's
-- backoff_base_ms) × the multiplier^(n−1), at most the cap, plus a random extra of up to jitter × that.
-- Template versions never change, so reading the policy here is as frozen as a copy in every run would
-- be; it is read only when an attempt fails, so enqueue and the claim pay nothing for it. A run whose
-- template row is missing (none is ever deleted) gets the defaults.
CREATE FUNCTION runlane.retry_delay(p_template text, p_version integer, p_base_ms integer, p_n integer)
RETURNS interval
LANGUAGE sql VOLATILE SET search_path = runlane, pg_temp AS $$
    -- numeric: multiplier^(n−1) may pass what a float8 holds before the cap takes over.
    SELECT (least(p_base_ms * power(coalesce(t.backoff_multiplier, 2)::numeric, greatest(p_n - 1, 0)),
                  coalesce(t.backoff_max_ms, 3600000))::float8
            * (1 + random() * coalesce(t.backoff_jitter, 0.25))) * interval '1 millisecond'
    FROM (VALUES (1)) AS one(x)
    LEFT JOIN run_templates t ON t.name = p_template AND t.version = p_version
$$;

-- As in 0013, except the wait before a retry: retry_delay (the template's retry policy) in place of
-- retry_backoff (always doubling, at most an hour, up to 25% extra). The jit and plan cache settings
-- of 0014 are restated, since CREATE OR REPLACE resets them.
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp
    SET jit = off SET plan_cache_mode = force_generic_plan AS $$
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
                    THEN now() + retry_delay(r.template, r.template_version, r.backoff_base_ms, r.failed_attempts + 1)
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

REVOKE EXECUTE ON FUNCTION runlane.template_problems(text, jsonb), runlane.retry_delay(text, integer, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.template_problems(text, jsonb) TO runlane_viewer, runlane_operator;

-- Every runlane command checks the database's schema version before it works (`runlane worker`,
-- `runlane templates validate` …), so every role may read which migrations ran; without this only the
-- owner could start one.
GRANT SELECT ON runlane.schema_migrations TO runlane_viewer, runlane_operator, runlane_worker;
