-- The worker's side: register, claim, heartbeat, steps, events, artifacts, complete.
-- Every write about a run carries its lease; a stale lease raises RL001 (lease lost).

-- Fences a write by lease and takes p_n event seqs. Locks the run row until commit, so
-- concurrent writers of one run commit their events in seq order.
CREATE FUNCTION runlane.fence(p_run_id uuid, p_lease uuid, p_n integer,
                              OUT first_seq bigint, OUT run_attempt integer)
LANGUAGE plpgsql SET search_path = runlane, pg_temp AS $$
BEGIN
    UPDATE runs SET next_seq = next_seq + p_n
    WHERE id = p_run_id AND lease = p_lease
    RETURNING next_seq - p_n, attempt INTO first_seq, run_attempt;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
            RAISE EXCEPTION 'lease lost for run %: it was requeued, finished or claimed by another worker', p_run_id
                USING ERRCODE = 'RL001';
        END IF;
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
END $$;

-- Appends one event written by the system (not by a lease holder). Returns its seq.
CREATE FUNCTION runlane.add_event(p_run_id uuid, p_kind text, p_data jsonb) RETURNS bigint
LANGUAGE plpgsql SET search_path = runlane, pg_temp AS $$
DECLARE
    s bigint;
    a integer;
BEGIN
    UPDATE runs SET next_seq = next_seq + 1 WHERE id = p_run_id RETURNING next_seq - 1, attempt INTO s, a;
    INSERT INTO run_events (run_id, seq, attempt, kind, data) VALUES (p_run_id, s, a, p_kind, p_data);
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || s);
    RETURN s;
END $$;

CREATE FUNCTION runlane.register_worker(
    p_host         text,
    p_lanes        text[],
    p_slots        integer,
    p_version      text,
    p_capabilities text[] DEFAULT '{}',
    p_lease_ms     integer DEFAULT 15000
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    l text;
    new_id uuid := uuid_v7();
BEGIN
    IF cardinality(p_lanes) IS NULL OR cardinality(p_lanes) = 0 THEN
        RAISE EXCEPTION 'a worker needs at least one lane (lanes: %)', lane_names() USING ERRCODE = 'RL422';
    END IF;
    FOREACH l IN ARRAY p_lanes LOOP
        PERFORM check_lane(l);
    END LOOP;
    IF p_slots IS NULL OR p_slots < 1 THEN
        RAISE EXCEPTION 'slots must be at least 1, got %', p_slots USING ERRCODE = 'RL422';
    END IF;
    IF p_lease_ms IS NULL OR p_lease_ms < 100 THEN
        RAISE EXCEPTION 'lease_ms must be at least 100, got %', p_lease_ms USING ERRCODE = 'RL422';
    END IF;
    INSERT INTO workers (id, host, version, lanes, slots, capabilities, lease_ms)
    VALUES (new_id, p_host, p_version, p_lanes, p_slots, coalesce(p_capabilities, '{}'), p_lease_ms);
    RETURN new_id;
END $$;

-- A worker's liveness, and its lanes, slots and capabilities as they are now (after a reload, or
-- when its Docker engine comes or goes). State: active, draining or gone (a clean exit).
CREATE FUNCTION runlane.worker_heartbeat(
    p_worker_id    uuid,
    p_state        text DEFAULT 'active',
    p_lanes        text[] DEFAULT NULL,
    p_slots        integer DEFAULT NULL,
    p_capabilities text[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    IF p_state NOT IN ('active', 'draining', 'gone') THEN
        RAISE EXCEPTION 'worker state must be active, draining or gone, got %', p_state USING ERRCODE = 'RL422';
    END IF;
    UPDATE workers SET state = p_state, last_seen_at = now(),
                       lanes = coalesce(p_lanes, lanes), slots = coalesce(p_slots, slots),
                       capabilities = coalesce(p_capabilities, capabilities)
    WHERE id = p_worker_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown worker %', p_worker_id USING ERRCODE = 'RL404';
    END IF;
END $$;

CREATE TYPE runlane.claimed_run AS (
    run_id           uuid,
    lease            uuid,
    lease_expires_at timestamptz,
    lane             text,
    attempt          integer,
    template         text,
    template_version integer,
    params           jsonb,
    secret_params    text[],
    steps            jsonb,
    timeout_ms       integer,
    session_id       uuid
);

-- Claims up to p_limit runnable runs for a worker: its lanes in the given order, priority (high first),
-- then run_at, then id; per-lane max_running honoured; only runs whose needs the worker's
-- capabilities cover. One claim statement; capped lanes are serialised by a transaction lock.
CREATE FUNCTION runlane.claim_runs(
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
    IF p_limit IS NULL OR p_limit < 1 OR w.state = 'draining' THEN
        RETURN;
    END IF;
    FOREACH l IN ARRAY coalesce(p_lanes, '{}') LOOP
        PERFORM check_lane(l);
    END LOOP;
    -- Capped lanes: one claimer at a time, so the running count below is exact. In lane name order.
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
            WHERE r.lane = lr.name AND r.status = 'queued' AND r.run_at <= now()
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
            next_seq = r.next_seq + 1
        FROM picked
        WHERE r.id = picked.id
        RETURNING r.*
    ),
    logged AS (
        INSERT INTO run_events (run_id, seq, attempt, kind, data)
        SELECT c.id, c.next_seq - 1, c.attempt, 'run.claimed',
               jsonb_build_object('worker_id', w.id, 'host', w.host, 'attempt', c.attempt)
        FROM claimed c
    )
    SELECT c.id, c.lease, c.lease_expires_at, c.lane, c.attempt, c.template, c.template_version, c.params,
           c.secret_params, c.steps, c.timeout_ms, c.session_id
    FROM claimed c;
END $$;

-- Renews a lease. lease_ok = false: the run is no longer this worker's (abort it, write nothing more).
CREATE FUNCTION runlane.heartbeat_run(p_run_id uuid, p_lease uuid,
                                      OUT lease_ok boolean, OUT cancel_requested boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    UPDATE runs r
    SET lease_expires_at = now() + (SELECT w.lease_ms FROM workers w WHERE w.id = r.worker_id) * interval '1 millisecond'
    WHERE r.id = p_run_id AND r.lease = p_lease
    RETURNING true, r.cancel_requested_at IS NOT NULL INTO lease_ok, cancel_requested;
    IF NOT FOUND THEN
        lease_ok := false;
        cancel_requested := false;
    END IF;
END $$;

CREATE FUNCTION runlane.start_step(p_run_id uuid, p_lease uuid, p_step integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    f record;
    spec jsonb;
BEGIN
    SELECT * INTO f FROM fence(p_run_id, p_lease, 1);
    SELECT steps -> p_step INTO spec FROM runs WHERE id = p_run_id;
    IF p_step IS NULL OR p_step < 0 OR spec IS NULL THEN
        RAISE EXCEPTION 'run % has no step %', p_run_id, p_step USING ERRCODE = 'RL422';
    END IF;
    INSERT INTO run_steps (run_id, attempt, idx, name, kind, status)
    VALUES (p_run_id, f.run_attempt, p_step, spec ->> 'name', spec ->> 'kind', 'running');
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, f.first_seq, f.run_attempt, 'step.started', p_step,
            jsonb_build_object('name', spec ->> 'name', 'kind', spec ->> 'kind'));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
    RETURN f.first_seq;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'step % of run % was already started in this attempt', p_step, p_run_id
            USING ERRCODE = 'RL409';
END $$;

CREATE FUNCTION runlane.finish_step(
    p_run_id    uuid,
    p_lease     uuid,
    p_step      integer,
    p_status    text,
    p_exit_code integer DEFAULT NULL,
    p_error     text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    f record;
    st run_steps;
BEGIN
    IF p_status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'skipped') THEN
        RAISE EXCEPTION 'step status must be succeeded, failed, cancelled, timed_out or skipped, got %', p_status
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO f FROM fence(p_run_id, p_lease, 1);
    UPDATE run_steps SET status = p_status, exit_code = p_exit_code, error = p_error, finished_at = now()
    WHERE run_id = p_run_id AND attempt = f.run_attempt AND idx = p_step AND status = 'running'
    RETURNING * INTO st;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step % of run % is not running in attempt %', p_step, p_run_id, f.run_attempt
            USING ERRCODE = 'RL409';
    END IF;
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, f.first_seq, f.run_attempt, 'step.finished', p_step,
            jsonb_strip_nulls(jsonb_build_object('name', st.name, 'status', p_status, 'exit_code', p_exit_code,
                'error', p_error,
                'duration_ms', round(extract(epoch FROM st.finished_at - st.started_at) * 1000))));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
    RETURN f.first_seq;
END $$;

-- Appends a batch of events (a JSON array of {kind, step?, stream?, body?, data?}) in one insert.
-- Returns the last seq. At most 5000 events and 8 MiB a batch.
CREATE FUNCTION runlane.append_events(p_run_id uuid, p_lease uuid, p_events jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    n integer;
    bad record;
    f record;
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array' USING ERRCODE = 'RL422';
    END IF;
    n := jsonb_array_length(p_events);
    IF n = 0 OR n > 5000 THEN
        RAISE EXCEPTION 'an event batch holds 1 to 5000 events, got %', n USING ERRCODE = 'RL422';
    END IF;
    IF octet_length(p_events::text) > 8 * 1024 * 1024 THEN
        RAISE EXCEPTION 'event batch of % bytes is over the 8 MiB limit', octet_length(p_events::text)
            USING ERRCODE = 'RL422';
    END IF;
    SELECT i, e INTO bad FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(e, i)
    WHERE jsonb_typeof(e) IS DISTINCT FROM 'object'
       OR coalesce(e ->> 'kind', '') !~ '^[a-z]+(\.[a-z_]+)+$'
       OR (e ? 'step' AND jsonb_typeof(e -> 'step') IS DISTINCT FROM 'number')
       OR (e ? 'stream' AND NOT coalesce(e ->> 'stream', '') IN ('stdout', 'stderr'))
       OR (e ? 'body' AND jsonb_typeof(e -> 'body') IS DISTINCT FROM 'string')
    ORDER BY i LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event #% is invalid: each event needs a dotted lowercase kind, and step (number), '
                        'stream (stdout or stderr) and body (string) when present: %', bad.i, left(bad.e::text, 200)
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO f FROM fence(p_run_id, p_lease, n);
    INSERT INTO run_events (run_id, seq, attempt, kind, step, stream, body, data)
    SELECT p_run_id, f.first_seq + t.i - 1, f.run_attempt, t.e ->> 'kind', (t.e ->> 'step')::integer,
           t.e ->> 'stream', t.e ->> 'body', t.e -> 'data'
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(e, i);
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || (f.first_seq + n - 1));
    RETURN f.first_seq + n - 1;
END $$;

-- Records an artifact: inline bytes (small) or an object store key (large), never both.
CREATE FUNCTION runlane.put_artifact(
    p_run_id       uuid,
    p_lease        uuid,
    p_step         integer,
    p_name         text,
    p_content_type text,
    p_size_bytes   bigint,
    p_sha256       text,
    p_inline_data  bytea DEFAULT NULL,
    p_store_key    text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    f record;
    new_id uuid;
BEGIN
    IF (p_inline_data IS NULL) = (p_store_key IS NULL) THEN
        RAISE EXCEPTION 'artifact ''%'': give either inline data or a store key', p_name USING ERRCODE = 'RL422';
    END IF;
    IF p_inline_data IS NOT NULL AND octet_length(p_inline_data) <> p_size_bytes THEN
        RAISE EXCEPTION 'artifact ''%'': % bytes given, size says %', p_name, octet_length(p_inline_data), p_size_bytes
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO f FROM fence(p_run_id, p_lease, 1);
    INSERT INTO artifacts (run_id, attempt, step, name, content_type, size_bytes, sha256, inline_data, store_key)
    VALUES (p_run_id, f.run_attempt, p_step, p_name, coalesce(p_content_type, 'application/octet-stream'),
            p_size_bytes, p_sha256, p_inline_data, p_store_key)
    RETURNING id INTO new_id;
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, f.first_seq, f.run_attempt, 'artifact.created', p_step,
            jsonb_build_object('id', new_id, 'name', p_name, 'size_bytes', p_size_bytes, 'sha256', p_sha256));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
    RETURN new_id;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'artifact ''%'' already exists in this attempt of run %', p_name, p_run_id USING ERRCODE = 'RL409';
    WHEN check_violation THEN
        RAISE EXCEPTION 'artifact ''%'': %', p_name, SQLERRM USING ERRCODE = 'RL422';
END $$;

-- Backoff before retry n (1-based): base * 2^(n-1), capped at one hour, plus up to 25% jitter.
CREATE FUNCTION runlane.retry_backoff(p_base_ms integer, p_n integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT (least(p_base_ms::float8 * 2 ^ (p_n - 1), 3600000) * (1 + random() * 0.25)) * interval '1 millisecond'
$$;

-- Ends the lease holder's attempt. p_outcome: succeeded | failed | cancelled | interrupted.
-- failed with attempts left: queued again after the backoff; interrupted (worker draining): queued now,
-- no attempt used. Returns the run's status afterwards.
CREATE FUNCTION runlane.complete_run(
    p_run_id  uuid,
    p_lease   uuid,
    p_outcome text,
    p_result  jsonb DEFAULT NULL,
    p_error   text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    f record;
    wait interval;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted') THEN
        RAISE EXCEPTION 'outcome must be succeeded, failed, cancelled or interrupted, got %', p_outcome
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO f FROM fence(p_run_id, p_lease, 1);
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    IF p_outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts THEN
        wait := retry_backoff(r.backoff_base_ms, r.failed_attempts + 1);
        UPDATE runs SET status = 'queued', failed_attempts = failed_attempts + 1, run_at = now() + wait,
                        lease = NULL, lease_expires_at = NULL, deadline_at = NULL, error = p_error
        WHERE id = p_run_id;
        INSERT INTO run_events (run_id, seq, attempt, kind, data)
        VALUES (p_run_id, f.first_seq, f.run_attempt, 'run.retry_scheduled',
                jsonb_build_object('error', p_error, 'failed_attempts', r.failed_attempts + 1,
                                   'max_attempts', r.max_attempts, 'run_at', now() + wait));
        PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
        RETURN 'queued';
    ELSIF p_outcome = 'interrupted' THEN
        UPDATE runs SET status = 'queued', run_at = now(), lease = NULL, lease_expires_at = NULL, deadline_at = NULL
        WHERE id = p_run_id;
        INSERT INTO run_events (run_id, seq, attempt, kind, data)
        VALUES (p_run_id, f.first_seq, f.run_attempt, 'run.requeued',
                jsonb_strip_nulls(jsonb_build_object('reason', 'interrupted', 'error', p_error)));
        PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
        PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
        RETURN 'queued';
    END IF;
    UPDATE runs SET status = p_outcome, finished_at = now(), result = p_result, error = p_error,
                    failed_attempts = failed_attempts + (p_outcome = 'failed')::integer,
                    lease = NULL, lease_expires_at = NULL
    WHERE id = p_run_id;
    INSERT INTO run_events (run_id, seq, attempt, kind, data)
    VALUES (p_run_id, f.first_seq, f.run_attempt, 'run.finished',
            jsonb_strip_nulls(jsonb_build_object('status', p_outcome, 'error', p_error, 'result', p_result)));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || f.first_seq);
    RETURN p_outcome;
END $$;
