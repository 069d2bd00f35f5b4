-- Fair waiting: priority aging, per lane.
--
-- A lane may age its runs: a run waiting in it gains one priority point every `aging_ms_per_point`
-- milliseconds, so a low-priority run is not starved by a flood of high-priority ones. Effective
-- priority at time T is `priority + (T − run_at) / s`; ordering runs by it, highest first, is the same
-- at every T as ordering them by `run_at − priority · s`, lowest first. That static key is what the
-- claim index holds, so the claim stays one walk of an index, never a sort of the backlog.
--
-- Each run carries its lane's rate (`runs.aging_ms_per_point`, set at enqueue and by set_lane_aging),
-- because an index can only be built from the run's own columns. The key is computed from run_at,
-- which every way into the queue sets to when the run became claimable (enqueue, promotion of a due
-- scheduled run, requeue after an expired lease, an interrupted hand-back, a retry): no function that
-- queues a run has to know about aging.

ALTER TABLE runlane.lanes
    ADD COLUMN aging_ms_per_point integer
        CONSTRAINT lanes_aging_range CHECK (aging_ms_per_point BETWEEN 1 AND 86400000);
ALTER TABLE runlane.runs ADD COLUMN aging_ms_per_point integer;

-- Where a run stands in its lane's line, ascending: its rank, its key, its id.
--   rank = CASE WHEN aging_ms_per_point IS NULL THEN -priority END
--   key  = (run_at AT TIME ZONE 'UTC') - priority::bigint * coalesce(aging_ms_per_point, 0) * interval '1 millisecond'
-- Without aging the rank is −priority and the key is run_at: strict priority, then first come. With
-- aging the rank is NULL (after every strict rank: only a run the lane's rate never reached is ever
-- compared with one) and the key alone orders: run_at moved earlier by priority × the rate. The key
-- is a UTC timestamp, not a timestamptz, so that the expression is immutable, as an index needs.
-- The claim and oldest_queued repeat these expressions word for word (the planner matches them to
-- the index by their form); they are not wrapped in SQL functions, because whether the planner
-- inlines such a function depends on the calling role's EXECUTE right, and an index expression
-- cached uninlined by one role would stop matching the claim's inlined ORDER BY.
DROP INDEX runlane.runs_claim_idx;
CREATE INDEX runs_claim_idx ON runlane.runs
    (lane,
     (CASE WHEN aging_ms_per_point IS NULL THEN -priority END),
     ((run_at AT TIME ZONE 'UTC') - priority::bigint * coalesce(aging_ms_per_point, 0) * interval '1 millisecond'),
     id)
    WHERE status = 'queued';
-- The oldest queued run of an aging lane (lane_stats): its place in the claim index says nothing of
-- its age. Only runs of aging lanes are in it, so lanes without aging pay nothing for it.
CREATE INDEX runs_aging_queued_idx ON runlane.runs (lane, run_at)
    WHERE status = 'queued' AND aging_ms_per_point IS NOT NULL;

-- As in 0016, in the order of the new claim index.
CREATE OR REPLACE FUNCTION runlane.claim_runs(
    p_worker_id  uuid,
    p_lanes      text[],
    p_limit      integer,
    p_session_id uuid DEFAULT NULL
) RETURNS SETOF runlane.claimed_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp
SET jit = off SET plan_cache_mode = force_generic_plan AS $$
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
    FROM lanes WHERE name = ANY (p_lanes) AND max_running IS NOT NULL AND paused_at IS NULL ORDER BY name;

    RETURN QUERY
    WITH lane_room AS MATERIALIZED (
        SELECT o.name, o.ord,
               CASE WHEN ln.max_running IS NULL THEN p_limit
                    ELSE greatest(0, ln.max_running - (SELECT count(*) FROM runs x
                                                       WHERE x.lane = o.name AND x.status = 'running'))::integer
               END AS room
        FROM unnest(p_lanes) WITH ORDINALITY AS o(name, ord)
        JOIN lanes ln ON ln.name = o.name
        WHERE ln.paused_at IS NULL
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
            ORDER BY (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END),
                     ((r.run_at AT TIME ZONE 'UTC')
                      - r.priority::bigint * coalesce(r.aging_ms_per_point, 0) * interval '1 millisecond'),
                     r.id
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

-- When the oldest queued run of a lane became due. Runs without aging: one probe of the claim index
-- per rank present (a loose index scan, as in 0012; the aging runs' NULL rank ends it). Runs with
-- aging: the first entry of runs_aging_queued_idx. Milliseconds, whatever the backlog.
CREATE OR REPLACE FUNCTION runlane.oldest_queued(p_lane text) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    WITH RECURSIVE firsts AS (
        (SELECT (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END) AS rank, r.run_at
         FROM runs r WHERE r.lane = p_lane AND r.status = 'queued'
         ORDER BY (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END),
                  ((r.run_at AT TIME ZONE 'UTC')
                   - r.priority::bigint * coalesce(r.aging_ms_per_point, 0) * interval '1 millisecond'),
                  r.id
         LIMIT 1)
        UNION ALL
        SELECT n.rank, n.run_at FROM firsts f
        CROSS JOIN LATERAL (
            SELECT (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END) AS rank, r.run_at
            FROM runs r
            WHERE r.lane = p_lane AND r.status = 'queued'
              AND (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END) > f.rank
            ORDER BY (CASE WHEN r.aging_ms_per_point IS NULL THEN -r.priority END),
                     ((r.run_at AT TIME ZONE 'UTC')
                      - r.priority::bigint * coalesce(r.aging_ms_per_point, 0) * interval '1 millisecond'),
                     r.id
            LIMIT 1) n
    )
    SELECT least((SELECT min(run_at) FROM firsts),
                 (SELECT min(r.run_at) FROM runs r
                  WHERE r.lane = p_lane AND r.status = 'queued' AND r.aging_ms_per_point IS NOT NULL))
$$;

-- As in 0016, and: the lane's aging rate (NULL: none, strict priority). Its result changes, so it is
-- made again (and granted again).
DROP FUNCTION runlane.lane_stats();
CREATE FUNCTION runlane.lane_stats()
RETURNS TABLE (lane text, queued bigint, scheduled bigint, running bigint, max_running integer,
               oldest_queued_s double precision, paused boolean, paused_at timestamptz, paused_by text,
               pause_reason text, aging_ms_per_point integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp SET jit = off AS $$
    SELECT l.name,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'queued'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'scheduled'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'running'), 0)::bigint,
           l.max_running,
           coalesce(extract(epoch FROM now() - oldest_queued(l.name)), 0)::double precision,
           l.paused_at IS NOT NULL, l.paused_at, l.paused_by, l.pause_reason, l.aging_ms_per_point
    FROM lanes l
    LEFT JOIN lane_counts c ON c.lane = l.name
    GROUP BY l.name, l.max_running, l.paused_at, l.paused_by, l.pause_reason, l.aging_ms_per_point
    ORDER BY l.name
$$;
REVOKE EXECUTE ON FUNCTION runlane.lane_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.lane_stats() TO runlane_viewer, runlane_operator, runlane_worker;

-- An enqueue takes its lanes' rates under a shared transaction advisory lock per lane; set_lane_aging
-- takes it exclusively. So a run enqueued while a lane's rate changes is either visible to the change
-- (and rekeyed by it) or reads the new rate: none keeps the old one.
CREATE FUNCTION runlane.share_lane_aging(p_lane text) RETURNS integer
LANGUAGE plpgsql SET search_path = runlane, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('runlane.aging.' || p_lane));
    RETURN (SELECT aging_ms_per_point FROM lanes WHERE name = p_lane);
END $$;

-- As in 0015, and: the run carries its lane's aging rate.
CREATE OR REPLACE FUNCTION runlane.enqueue_run(
    p_template        text,
    p_params          jsonb DEFAULT '{}',
    p_lane            text DEFAULT NULL,
    p_priority        integer DEFAULT NULL,
    p_run_at          timestamptz DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_session_id      uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp SET jit = off AS $$
DECLARE
    checked record;
    t run_templates;
    new_id uuid;
    due boolean := coalesce(p_run_at, now()) <= now();
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN new_id;
        END IF;
    END IF;
    SELECT * INTO checked FROM check_enqueue(p_template, p_params, p_lane, p_priority, p_session_id);
    t := checked.tpl;

    INSERT INTO runs (template, template_version, lane, priority, status, params, secret_params, steps, requires,
                      timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                      session_id, next_seq, aging_ms_per_point)
    VALUES (t.name, t.version, checked.run_lane, coalesce(p_priority, t.default_priority),
            CASE WHEN due THEN 'queued' ELSE 'scheduled' END, checked.run_params,
            secret_param_names(t.params_schema), t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms,
            t.max_crashes, coalesce(p_run_at, now()), p_idempotency_key, p_session_id, 2,
            share_lane_aging(checked.run_lane))
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        -- A concurrent enqueue with the same key won the insert.
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        RETURN new_id;
    END IF;
    INSERT INTO run_events (run_id, seq, attempt, kind, data)
    VALUES (new_id, 1, 0, 'run.queued', jsonb_build_object('template', t.name, 'version', t.version,
            'lane', checked.run_lane, 'by', session_user));
    INSERT INTO lane_counts (lane, status, n)
    VALUES (checked.run_lane, CASE WHEN due THEN 'queued' ELSE 'scheduled' END, 1);
    IF due THEN
        PERFORM pg_notify('runlane_lane_' || lower(checked.run_lane), '');
    END IF;
    RETURN new_id;
END $$;

-- As in 0015, and: each run carries its lane's aging rate.
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
    used run_templates[];
    u run_templates;
    walked text[] := '{}';      -- templates whose schema has something to fill in or check
    unusable jsonb := '{}';     -- template -> why its stored schema cannot be enforced
    batch enqueue_item[];
    bad record;
    lanes_woken text[];
    rates jsonb;                -- lane -> its aging rate (null: none)
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

    -- The newest version of each template named, once.
    used := ARRAY(SELECT t FROM run_templates t
                  WHERE (t.name, t.version) IN (SELECT x.name, max(x.version) FROM run_templates x
                                                WHERE x.name = ANY (p_templates) GROUP BY x.name));
    FOREACH u IN ARRAY used LOOP
        IF stored_schema_problem(u) IS NOT NULL THEN
            unusable := unusable || jsonb_build_object(u.name, stored_schema_problem(u));
        ELSIF u.params_schema ?| '{properties,required,additionalProperties}' THEN
            walked := walked || u.name;
        END IF;
    END LOOP;

    -- Each position against its template (defaults filled in), and the run its key already names.
    batch := ARRAY(
        SELECT ROW(i.item::integer, i.template, t.version,
                   CASE WHEN i.template = ANY (walked) THEN with_defaults(t.params_schema, coalesce(i.params, '{}'))
                        ELSE coalesce(i.params, '{}') END,
                   coalesce(i.lane, t.default_lane), coalesce(i.priority, t.default_priority), coalesce(i.run_at, now()),
                   i.key, i.session,
                   CASE WHEN i.key IS NOT NULL THEN (SELECT r.id FROM runs r WHERE r.idempotency_key = i.key) END,
                   NULL)::enqueue_item
        FROM unnest(p_templates, p_params, p_lanes, p_priorities, p_run_ats, p_idempotency_keys, p_session_ids)
             WITH ORDINALITY AS i(template, params, lane, priority, run_at, key, session, item)
        LEFT JOIN unnest(used) t ON t.name = i.template
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
                    WHEN unusable ? b.template THEN unusable ->> b.template
                    WHEN octet_length(b.params::text) > 1024 * 1024
                        THEN format('params are %s bytes, over the 1 MiB limit', octet_length(b.params::text))
                    WHEN jsonb_typeof(b.params) = 'object' AND EXISTS (
                            SELECT 1 FROM jsonb_object_keys(b.params) AS o(k) WHERE octet_length(b.params ->> k) > 256 * 1024)
                        THEN (SELECT format('param ''%s'' is %s bytes, over the 256 KiB limit for one value', k,
                                            octet_length(b.params ->> k))
                              FROM jsonb_object_keys(b.params) AS o(k)
                              WHERE octet_length(b.params ->> k) > 256 * 1024 ORDER BY k LIMIT 1)
                    WHEN jsonb_typeof(b.params) <> 'object'
                        THEN format('invalid params for template ''%s'': params must be a JSON object, got %s', b.template,
                                    jsonb_typeof(b.params))
                    WHEN b.template = ANY (walked)
                        THEN (SELECT format('invalid params for template ''%s'': %s', b.template, array_to_string(pv.v, '; '))
                              FROM (SELECT value_violations(t.params_schema, b.params, NULL, false) AS v
                                    FROM unnest(used) t WHERE t.name = b.template) pv
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
    -- The rate of each lane the new runs go to, under its shared lock (see share_lane_aging).
    rates := (SELECT jsonb_object_agg(x.lane, share_lane_aging(x.lane))
              FROM (SELECT DISTINCT b.lane FROM unnest(batch) b WHERE b.new_id IS NOT NULL ORDER BY 1) x);
    WITH templates AS MATERIALIZED (
        SELECT t.*, secret_param_names(t.params_schema) AS secrets FROM unnest(used) t
    ), inserted AS (
        INSERT INTO runs (id, template, template_version, lane, priority, status, params, secret_params, steps,
                          requires, timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                          session_id, next_seq, aging_ms_per_point)
        SELECT b.new_id, t.name, t.version, b.lane, b.priority,
               CASE WHEN b.run_at <= now() THEN 'queued' ELSE 'scheduled' END, b.params, t.secrets,
               t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes, b.run_at,
               b.idempotency_key, b.session_id, 2, (rates ->> b.lane)::integer
        FROM unnest(batch) b JOIN templates t ON t.name = b.template
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

-- What set_lane_aging did: the lane's rate now, and how many of its runs took it.
CREATE TYPE runlane.lane_aging AS (
    lane               text,
    aging_ms_per_point integer,   -- NULL: no aging (strict priority)
    rekeyed            bigint     -- the lane's scheduled, queued and running runs whose rate changed
);

-- Sets how fast a lane's waiting runs gain priority: one point every p_ms_per_point milliseconds
-- (1 ms to one day); NULL or 0 turns aging off (strict priority, then first come). The rate is
-- given to the lane's scheduled, queued and running runs at once (a running run keeps it if it comes
-- back to the queue), under the lock enqueues take per lane, so no run keeps the old rate. That is
-- one UPDATE of those runs: claims skip the queued ones while it runs (SKIP LOCKED) and enqueues into
-- the lane wait for it. Gives up after 5 s of waiting for a lock (RL409).
CREATE FUNCTION runlane.set_lane_aging(p_lane text, p_ms_per_point integer) RETURNS runlane.lane_aging
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    rate integer := nullif(p_ms_per_point, 0);
    n bigint;
    total bigint := 0;
BEGIN
    PERFORM check_lane(p_lane);
    IF rate NOT BETWEEN 1 AND 86400000 THEN
        RAISE EXCEPTION 'aging must be between 1 and 86400000 ms per priority point (one day), or 0 or NULL for none, got %',
            p_ms_per_point USING ERRCODE = 'RL422';
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('runlane.aging.' || p_lane));
        UPDATE lanes SET aging_ms_per_point = rate WHERE name = p_lane;
        -- One statement per status, each through its own partial index.
        UPDATE runs SET aging_ms_per_point = rate
        WHERE lane = p_lane AND status = 'queued' AND aging_ms_per_point IS DISTINCT FROM rate;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        UPDATE runs SET aging_ms_per_point = rate
        WHERE lane = p_lane AND status = 'scheduled' AND aging_ms_per_point IS DISTINCT FROM rate;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        UPDATE runs SET aging_ms_per_point = rate
        WHERE lane = p_lane AND status = 'running' AND aging_ms_per_point IS DISTINCT FROM rate;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'lane % is held by another transaction (waited 5 s): an enqueue into it or a write to one of its runs is still open; try again',
            p_lane USING ERRCODE = 'RL409';
    END;
    RETURN (p_lane, rate, total)::lane_aging;
END $$;

-- Operators set a lane's rate; everyone sees it in lane_stats. (A new function is executable by
-- PUBLIC until revoked.)
REVOKE EXECUTE ON FUNCTION runlane.share_lane_aging(text), runlane.set_lane_aging(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.set_lane_aging(text, integer) TO runlane_operator;
