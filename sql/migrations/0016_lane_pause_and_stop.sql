-- Pausing a lane, stopping the fleet.
--
-- A paused lane keeps its queued runs queued and claims nothing; its running runs go on to their end.
-- An emergency stop pauses every lane and may request the cancel of every running run. Who did it and
-- why is kept on the lane while it is paused, and for good in lane_events.

ALTER TABLE runlane.lanes
    ADD COLUMN paused_at    timestamptz,
    ADD COLUMN paused_by    text,
    ADD COLUMN pause_reason text,
    ADD CONSTRAINT lanes_pause_whole
        CHECK ((paused_by IS NULL) = (paused_at IS NULL) AND (pause_reason IS NULL) = (paused_at IS NULL));

-- The history of pauses, resumes and stops, oldest first. `actor` is who acted (the database login,
-- or `token:NAME` when the executor API acted for a token); `db_user` is the login that made the call.
CREATE TABLE runlane.lane_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    action  text NOT NULL CHECK (action IN ('pause', 'resume', 'stop')),
    -- NULL for a stop: it concerns the whole fleet (each lane it paused has its own 'pause' row).
    lane    text CHECK (lane IN ('A', 'B', 'C', 'D')),
    actor   text NOT NULL,
    db_user text NOT NULL DEFAULT session_user,
    reason  text NOT NULL,
    data    jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT lane_events_stop_is_fleet_wide CHECK ((action = 'stop') = (lane IS NULL))
);
ALTER TABLE runlane.lane_events ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON runlane.lane_events FROM PUBLIC;
GRANT SELECT ON runlane.lane_events TO runlane_viewer, runlane_operator;
CREATE POLICY read_all ON runlane.lane_events FOR SELECT TO runlane_viewer, runlane_operator USING (true);

-- What a pause or resume leaves: the lane's pause state, and whether this call changed it.
CREATE TYPE runlane.lane_pause AS (
    lane         text,
    paused       boolean,
    paused_at    timestamptz,
    paused_by    text,
    pause_reason text,
    changed      boolean
);

-- What an emergency stop did: its lane_events row, the lanes it paused (the others were paused
-- already), and how many running runs it asked to cancel.
CREATE TYPE runlane.fleet_stop AS (
    event_id         bigint,
    paused           text[],
    cancel_requested integer
);

-- Who acts: the database login; or, when the executor API acts for one of its tokens, that token
-- (`token:NAME`, or `token:ID` for a token without a name). Only the API's role may name a token, so
-- no other login can act under a token's name.
CREATE FUNCTION runlane.acting_for(p_token uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    t api_tokens;
BEGIN
    IF p_token IS NULL THEN
        RETURN session_user;
    END IF;
    IF NOT pg_has_role(session_user, 'runlane_api', 'MEMBER') THEN
        RAISE EXCEPTION 'only the executor API may act for a token (% is not in runlane_api)', session_user
            USING ERRCODE = '42501';
    END IF;
    SELECT * INTO t FROM api_tokens WHERE id = p_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown token %', p_token USING ERRCODE = 'RL404';
    END IF;
    RETURN 'token:' || coalesce(nullif(t.name, ''), t.id::text);
END $$;
REVOKE EXECUTE ON FUNCTION runlane.acting_for(uuid) FROM PUBLIC;

-- The reason an operator gave, trimmed: required, at most 4096 characters.
CREATE FUNCTION runlane.checked_reason(p_reason text, p_action text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = runlane, pg_temp AS $$
BEGIN
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a reason is required to % (it is recorded with who did it)', p_action
            USING ERRCODE = 'RL422';
    END IF;
    IF char_length(btrim(p_reason)) > 4096 THEN
        RAISE EXCEPTION 'the reason is % characters, over the 4096 limit', char_length(btrim(p_reason))
            USING ERRCODE = 'RL422';
    END IF;
    RETURN btrim(p_reason);
END $$;
REVOKE EXECUTE ON FUNCTION runlane.checked_reason(text, text) FROM PUBLIC;

-- Waits until no transaction that read the lanes is still open, and keeps every new one waiting
-- until this transaction ends. Each claim reads the lanes and holds that (shared) lock until it
-- commits; so once a pause holds this lock, every claim that could have seen the lane open has
-- committed (a stop then sees, and cancels, what it claimed), and every later claim sees the pause.
-- Claims pay nothing for this. A transaction left open after reading the lanes would hold the pause
-- up, and the claims queued behind it: after 5 s the pause gives up (RL409) and the claims go on.
CREATE FUNCTION runlane.hold_lanes() RETURNS void
LANGUAGE plpgsql SET search_path = runlane, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    LOCK TABLE lanes IN ACCESS EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'the lanes are held by another transaction (waited 5 s): a transaction that read them is still open; try again'
        USING ERRCODE = 'RL409';
END $$;
REVOKE EXECUTE ON FUNCTION runlane.hold_lanes() FROM PUBLIC;

-- Pauses a lane: its queued runs stay queued and none of its runs is claimed until it is resumed;
-- its running runs go on. Pausing a paused lane changes nothing (and records nothing). `p_token`:
-- the executor API's token the call is made for.
CREATE FUNCTION runlane.pause_lane(p_lane text, p_reason text, p_token uuid DEFAULT NULL)
RETURNS runlane.lane_pause
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    who text := acting_for(p_token);
    why text := checked_reason(p_reason, 'pause a lane');
    l lanes;
BEGIN
    -- The lock first: a lane read before it would make two pauses wait for each other.
    PERFORM hold_lanes();
    PERFORM check_lane(p_lane);
    UPDATE lanes SET paused_at = now(), paused_by = who, pause_reason = why
    WHERE name = p_lane AND paused_at IS NULL
    RETURNING * INTO l;
    IF FOUND THEN
        INSERT INTO lane_events (action, lane, actor, reason) VALUES ('pause', p_lane, who, why);
        RETURN (l.name, true, l.paused_at, l.paused_by, l.pause_reason, true)::lane_pause;
    END IF;
    SELECT * INTO l FROM lanes WHERE name = p_lane;
    RETURN (l.name, true, l.paused_at, l.paused_by, l.pause_reason, false)::lane_pause;
END $$;

-- Resumes a paused lane and wakes its workers, so its queued runs are claimed at once. Resuming a
-- lane that is not paused changes nothing (and records nothing).
CREATE FUNCTION runlane.resume_lane(p_lane text, p_reason text, p_token uuid DEFAULT NULL)
RETURNS runlane.lane_pause
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    who text := acting_for(p_token);
    why text := checked_reason(p_reason, 'resume a lane');
    l lanes;
BEGIN
    PERFORM check_lane(p_lane);
    SELECT * INTO l FROM lanes WHERE name = p_lane FOR NO KEY UPDATE;
    IF l.paused_at IS NULL THEN
        RETURN (l.name, false, NULL, NULL, NULL, false)::lane_pause;
    END IF;
    UPDATE lanes SET paused_at = NULL, paused_by = NULL, pause_reason = NULL WHERE name = p_lane;
    INSERT INTO lane_events (action, lane, actor, reason, data)
    VALUES ('resume', p_lane, who, why,
            jsonb_build_object('paused_at', l.paused_at, 'paused_by', l.paused_by, 'pause_reason', l.pause_reason));
    PERFORM pg_notify('runlane_lane_' || lower(p_lane), '');
    RETURN (l.name, false, NULL, NULL, NULL, true)::lane_pause;
END $$;

-- The emergency stop: pauses every lane that is not paused yet and, with p_cancel_running, requests
-- the cancel of every running run, as cancel_run does (the worker hears it by NOTIFY or its next
-- heartbeat, stops the steps, runs the `always` steps and ends the run cancelled). Queued and
-- scheduled runs are not touched: they wait in their paused lanes until a resume (or a cancel_run).
CREATE FUNCTION runlane.stop_fleet(p_reason text, p_cancel_running boolean DEFAULT false, p_token uuid DEFAULT NULL)
RETURNS runlane.fleet_stop
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    who text := acting_for(p_token);
    why text := checked_reason(p_reason, 'stop the fleet');
    run_reason text;
    newly text[];
    asked integer := 0;
    r record;
    stop_id bigint;
BEGIN
    PERFORM hold_lanes();
    WITH p AS (
        UPDATE lanes SET paused_at = now(), paused_by = who, pause_reason = why
        WHERE paused_at IS NULL
        RETURNING name
    )
    SELECT coalesce(array_agg(name ORDER BY name), '{}') INTO newly FROM p;
    INSERT INTO lane_events (action, lane, actor, reason, data)
    SELECT 'pause', x, who, why, '{"fleet_stop": true}' FROM unnest(newly) AS x ORDER BY x;
    IF coalesce(p_cancel_running, false) THEN
        run_reason := 'fleet stop: ' || why;
        FOR r IN SELECT id, cancel_requested_at FROM runs WHERE status = 'running' ORDER BY id FOR UPDATE LOOP
            IF r.cancel_requested_at IS NULL THEN
                UPDATE runs SET cancel_requested_at = now(), cancel_reason = run_reason WHERE id = r.id;
                PERFORM add_event(r.id, 'run.cancel_requested',
                                  jsonb_build_object('reason', run_reason, 'by', who, 'fleet_stop', true));
                asked := asked + 1;
            END IF;
            PERFORM pg_notify('runlane_cancel', r.id::text);
        END LOOP;
    END IF;
    INSERT INTO lane_events (action, lane, actor, reason, data)
    VALUES ('stop', NULL, who, why, jsonb_build_object('paused', to_jsonb(newly),
            'cancel_running', coalesce(p_cancel_running, false), 'cancel_requested', asked))
    RETURNING id INTO stop_id;
    RETURN (stop_id, newly, asked)::fleet_stop;
END $$;

-- As in 0012, and: a paused lane claims nothing. The pause is read with the lanes the claim reads
-- anyway (lane_room, and the capped lanes' locks: four rows), never tested per run.
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

-- As in 0012, and: whether the lane is paused, since when, by whom and why. Its result changes, so it
-- is made again (and granted again).
DROP FUNCTION runlane.lane_stats();
CREATE FUNCTION runlane.lane_stats()
RETURNS TABLE (lane text, queued bigint, scheduled bigint, running bigint, max_running integer,
               oldest_queued_s double precision, paused boolean, paused_at timestamptz, paused_by text,
               pause_reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp SET jit = off AS $$
    SELECT l.name,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'queued'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'scheduled'), 0)::bigint,
           coalesce(sum(c.n) FILTER (WHERE c.status = 'running'), 0)::bigint,
           l.max_running,
           coalesce(extract(epoch FROM now() - oldest_queued(l.name)), 0)::double precision,
           l.paused_at IS NOT NULL, l.paused_at, l.paused_by, l.pause_reason
    FROM lanes l
    LEFT JOIN lane_counts c ON c.lane = l.name
    GROUP BY l.name, l.max_running, l.paused_at, l.paused_by, l.pause_reason
    ORDER BY l.name
$$;
REVOKE EXECUTE ON FUNCTION runlane.lane_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.lane_stats() TO runlane_viewer, runlane_operator, runlane_worker;

-- Operators pause, resume and stop; viewers read lane_events; workers do neither. (A new function is
-- executable by PUBLIC until revoked: a per-schema default privilege cannot take back the global one.)
REVOKE EXECUTE ON FUNCTION runlane.pause_lane(text, text, uuid), runlane.resume_lane(text, text, uuid),
                           runlane.stop_fleet(text, boolean, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.pause_lane(text, text, uuid), runlane.resume_lane(text, text, uuid),
                          runlane.stop_fleet(text, boolean, uuid)
    TO runlane_operator;
