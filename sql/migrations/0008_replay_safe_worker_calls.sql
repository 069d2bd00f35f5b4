-- Every worker call is safe to repeat after a lost reply: the same transition or the same batch
-- applied twice gives the same answer and writes once. A run cannot succeed while a step of its
-- attempt is unfinished or failed. A worker marked gone must register again before it claims.
-- A cancel pending when a run would go back to the queue ends it cancelled instead.

-- Functions created from here on are nobody's until granted (each migration still revokes and
-- grants explicitly: this only guards against a forgotten REVOKE).
ALTER DEFAULT PRIVILEGES IN SCHEMA runlane REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- What a replay is answered with.
ALTER TABLE runlane.runs
    -- The last event batch a lease holder wrote in this attempt (reset at each claim), and the seq
    -- of its last event: a replayed batch gets that seq back and writes nothing.
    ADD COLUMN event_batch integer NOT NULL DEFAULT 0,
    ADD COLUMN event_batch_seq bigint,
    -- The lease that ended the latest attempt, how it ended it and the answer it got.
    ADD COLUMN completed_lease uuid,
    ADD COLUMN completed_outcome text,
    ADD COLUMN completed_status text;

ALTER TABLE runlane.run_steps
    ADD COLUMN started_seq bigint,
    ADD COLUMN finished_seq bigint;

-- A queued run never carries a pending cancel: every path back to the queue ends such a run
-- cancelled. Runs left that way by earlier versions are ended now.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id FROM runlane.runs WHERE status = 'queued' AND cancel_requested_at IS NOT NULL FOR UPDATE LOOP
        UPDATE runlane.runs SET status = 'cancelled', finished_at = now(), error = 'cancelled before it started again'
        WHERE id = r.id;
        PERFORM runlane.add_event(r.id, 'run.finished',
            jsonb_build_object('status', 'cancelled', 'reason', 'cancel_requested'));
    END LOOP;
END $$;
ALTER TABLE runlane.runs ADD CONSTRAINT runs_queued_without_cancel
    CHECK (status <> 'queued' OR cancel_requested_at IS NULL);

-- How long a worker may take, after it gave a lease up, to stop the run's processes. The sweeper
-- waits this long past a lease's expiry before the run may start elsewhere.
ALTER TABLE runlane.workers ADD COLUMN kill_grace_ms integer NOT NULL DEFAULT 0 CHECK (kill_grace_ms >= 0);

-- The run a lease holds, locked until commit; RL001 when the lease is not (or no longer) held.
CREATE FUNCTION runlane.hold(p_run_id uuid, p_lease uuid) RETURNS runlane.runs
LANGUAGE plpgsql SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id AND lease = p_lease FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
            RAISE EXCEPTION 'lease lost for run %: it was requeued, finished or claimed by another worker', p_run_id
                USING ERRCODE = 'RL001';
        END IF;
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    RETURN r;
END $$;

-- The lease holder's attempt, without writing anything (an upload checks its lease before it
-- stores a byte).
CREATE FUNCTION runlane.check_lease(p_run_id uuid, p_lease uuid) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    a integer;
BEGIN
    SELECT attempt INTO a FROM runs WHERE id = p_run_id AND lease = p_lease;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
            RAISE EXCEPTION 'lease lost for run %: it was requeued, finished or claimed by another worker', p_run_id
                USING ERRCODE = 'RL001';
        END IF;
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    RETURN a;
END $$;

-- The worker as it registers now: with the grace it needs to stop a run after giving its lease up.
DROP FUNCTION runlane.register_worker(text, text[], integer, text, text[], integer);
CREATE FUNCTION runlane.register_worker(
    p_host          text,
    p_lanes         text[],
    p_slots         integer,
    p_version       text,
    p_capabilities  text[] DEFAULT '{}',
    p_lease_ms      integer DEFAULT 15000,
    p_kill_grace_ms integer DEFAULT 0
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
    IF p_kill_grace_ms IS NULL OR p_kill_grace_ms < 0 THEN
        RAISE EXCEPTION 'kill_grace_ms must be at least 0, got %', p_kill_grace_ms USING ERRCODE = 'RL422';
    END IF;
    INSERT INTO workers (id, host, version, lanes, slots, capabilities, lease_ms, kill_grace_ms)
    VALUES (new_id, p_host, p_version, p_lanes, p_slots, coalesce(p_capabilities, '{}'), p_lease_ms, p_kill_grace_ms);
    RETURN new_id;
END $$;

-- A gone worker stays gone: RL410 tells it to register again (its runs were requeued meanwhile).
CREATE OR REPLACE FUNCTION runlane.worker_heartbeat(
    p_worker_id    uuid,
    p_state        text DEFAULT 'active',
    p_lanes        text[] DEFAULT NULL,
    p_slots        integer DEFAULT NULL,
    p_capabilities text[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    w workers;
BEGIN
    IF p_state NOT IN ('active', 'draining', 'gone') THEN
        RAISE EXCEPTION 'worker state must be active, draining or gone, got %', p_state USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO w FROM workers WHERE id = p_worker_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown worker %', p_worker_id USING ERRCODE = 'RL404';
    END IF;
    IF w.state = 'gone' AND p_state <> 'gone' THEN
        RAISE EXCEPTION 'worker % was marked gone (silent since %): register again', p_worker_id, w.last_seen_at
            USING ERRCODE = 'RL410';
    END IF;
    UPDATE workers SET state = p_state, last_seen_at = now(),
                       lanes = coalesce(p_lanes, lanes), slots = coalesce(p_slots, slots),
                       capabilities = coalesce(p_capabilities, capabilities)
    WHERE id = p_worker_id;
END $$;

-- As in 0003, and: a gone worker claims nothing (RL410: register again); each claim starts the
-- attempt's event batches afresh.
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
            next_seq = r.next_seq + 1, event_batch = 0, event_batch_seq = NULL
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

-- Starts a step. Starting a step that is already running in this attempt is a replay: its seq comes
-- back and nothing is written. Starting one that already ended is RL409.
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
    UPDATE runs SET next_seq = next_seq + 1 WHERE id = p_run_id;
    INSERT INTO run_steps (run_id, attempt, idx, name, kind, status, started_seq)
    VALUES (p_run_id, r.attempt, p_step, spec ->> 'name', spec ->> 'kind', 'running', r.next_seq);
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, r.next_seq, r.attempt, 'step.started', p_step,
            jsonb_build_object('name', spec ->> 'name', 'kind', spec ->> 'kind'));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || r.next_seq);
    RETURN r.next_seq;
END $$;

-- Finishes a running step. Finishing it again the same way (status and exit code) is a replay: the
-- seq of its step.finished event comes back. Any other second ending is RL409.
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
    UPDATE runs SET next_seq = next_seq + 1 WHERE id = p_run_id;
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

-- Event kinds only runlane itself writes; a lease holder's batch may not contain them.
CREATE FUNCTION runlane.reserved_event_kind(p_kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_kind LIKE 'run.%' OR p_kind LIKE 'artifact.%' OR p_kind IN ('step.started', 'step.finished')
$$;

-- Appends a batch of events (a JSON array of {kind, step?, stream?, body?, data?}) in one insert and
-- returns the last seq. p_batch numbers a lease holder's batches 1, 2, 3 … within its attempt: the
-- last batch sent again is a replay (its last seq comes back, nothing is written); an older one is
-- RL409. NULL: no replay protection (psql). At most 5000 events and 8 MiB a batch.
DROP FUNCTION runlane.append_events(uuid, uuid, jsonb);
CREATE FUNCTION runlane.append_events(p_run_id uuid, p_lease uuid, p_events jsonb, p_batch integer DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    n integer;
    bad record;
    r runs;
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
    IF p_batch IS NOT NULL AND p_batch < 1 THEN
        RAISE EXCEPTION 'batch numbers start at 1, got %', p_batch USING ERRCODE = 'RL422';
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
    SELECT i, e ->> 'kind' AS kind INTO bad FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(e, i)
    WHERE reserved_event_kind(e ->> 'kind') ORDER BY i LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event #%: the kind ''%'' is reserved for runlane itself (run.*, artifact.*, step.started, '
                        'step.finished)', bad.i, bad.kind
            USING ERRCODE = 'RL422';
    END IF;
    r := hold(p_run_id, p_lease);
    IF p_batch IS NOT NULL AND p_batch <= r.event_batch THEN
        IF p_batch = r.event_batch THEN
            RETURN r.event_batch_seq;
        END IF;
        RAISE EXCEPTION 'event batch % of run % is older than the last one written (%)', p_batch, p_run_id,
            r.event_batch USING ERRCODE = 'RL409';
    END IF;
    UPDATE runs SET next_seq = next_seq + n, event_batch = coalesce(p_batch, event_batch),
                    event_batch_seq = CASE WHEN p_batch IS NULL THEN event_batch_seq ELSE r.next_seq + n - 1 END
    WHERE id = p_run_id;
    INSERT INTO run_events (run_id, seq, attempt, kind, step, stream, body, data)
    SELECT p_run_id, r.next_seq + t.i - 1, r.attempt, t.e ->> 'kind', (t.e ->> 'step')::integer,
           t.e ->> 'stream', t.e ->> 'body', t.e -> 'data'
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(e, i);
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || (r.next_seq + n - 1));
    RETURN r.next_seq + n - 1;
END $$;

-- What is wrong with an artifact name, or NULL: names are relative file paths ('report.txt',
-- 'logs/app.log'): no leading '/', no empty, '.' or '..' part, no backslash or control character.
CREATE FUNCTION runlane.artifact_name_problem(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_name IS NULL OR p_name = '' THEN 'artifact name must not be empty'
        WHEN octet_length(p_name) > 255 THEN format('artifact name ''%s…'' is over 255 bytes', left(p_name, 40))
        WHEN p_name ~ '[\x01-\x1f\x7f\\]' OR p_name ~ '(^|/)\.{1,2}(/|$)' OR p_name ~ '^/' OR p_name ~ '//'
             OR p_name ~ '/$'
            THEN format('artifact name %s must be a relative file path (no leading ''/'', no empty, ''.'' or '
                        '''..'' part, no backslash or control character)', to_jsonb(p_name)::text)
    END
$$;

-- Checks an upload before any byte of it is stored: the lease (RL001) and the name (RL422). Returns
-- the lease holder's attempt.
CREATE FUNCTION runlane.check_artifact_upload(p_run_id uuid, p_lease uuid, p_name text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    problem text := artifact_name_problem(p_name);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'RL422';
    END IF;
    RETURN check_lease(p_run_id, p_lease);
END $$;

-- Records an artifact: inline bytes (small) or an object store key (large), never both. p_id is the
-- caller's id for it: recording the same id again is a replay (the id comes back); another artifact
-- of the same name in the same attempt is RL409.
DROP FUNCTION runlane.put_artifact(uuid, uuid, integer, text, text, bigint, text, bytea, text);
CREATE FUNCTION runlane.put_artifact(
    p_run_id       uuid,
    p_lease        uuid,
    p_id           uuid,
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
    r runs;
    problem text := artifact_name_problem(p_name);
    other artifacts;
    new_id uuid := coalesce(p_id, uuid_v7());
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'RL422';
    END IF;
    IF (p_inline_data IS NULL) = (p_store_key IS NULL) THEN
        RAISE EXCEPTION 'artifact ''%'': give either inline data or a store key', p_name USING ERRCODE = 'RL422';
    END IF;
    IF p_inline_data IS NOT NULL AND octet_length(p_inline_data) <> p_size_bytes THEN
        RAISE EXCEPTION 'artifact ''%'': % bytes given, size says %', p_name, octet_length(p_inline_data), p_size_bytes
            USING ERRCODE = 'RL422';
    END IF;
    r := hold(p_run_id, p_lease);
    SELECT * INTO other FROM artifacts WHERE run_id = p_run_id AND attempt = r.attempt AND name = p_name;
    IF FOUND THEN
        IF other.id = new_id AND other.sha256 = p_sha256 THEN
            RETURN other.id;
        END IF;
        RAISE EXCEPTION 'artifact ''%'' already exists in attempt % of run % (from step %)', p_name, r.attempt,
            p_run_id, coalesce(other.step::text, 'none') USING ERRCODE = 'RL409';
    END IF;
    UPDATE runs SET next_seq = next_seq + 1 WHERE id = p_run_id;
    INSERT INTO artifacts (id, run_id, attempt, step, name, content_type, size_bytes, sha256, inline_data, store_key)
    VALUES (new_id, p_run_id, r.attempt, p_step, p_name, coalesce(p_content_type, 'application/octet-stream'),
            p_size_bytes, p_sha256, p_inline_data, p_store_key);
    INSERT INTO run_events (run_id, seq, attempt, kind, step, data)
    VALUES (p_run_id, r.next_seq, r.attempt, 'artifact.created', p_step,
            jsonb_build_object('id', new_id, 'name', p_name, 'size_bytes', p_size_bytes, 'sha256', p_sha256));
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || r.next_seq);
    RETURN new_id;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'artifact id % is already used', new_id USING ERRCODE = 'RL409';
    WHEN check_violation THEN
        RAISE EXCEPTION 'artifact ''%'': %', p_name, SQLERRM USING ERRCODE = 'RL422';
END $$;

-- Why the lease holder's attempt may not end as succeeded, or NULL: every step of the run must have
-- been recorded in this attempt as succeeded or skipped, or as failed / timed out with
-- continue_on_error.
CREATE FUNCTION runlane.unsucceeded_step(p_run runlane.runs) RETURNS text
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT format('step %s ''%s'' %s', s.n - 1, s.spec ->> 'name',
                  CASE WHEN st.status IS NULL THEN 'never started'
                       WHEN st.status = 'running' THEN 'is running'
                       ELSE st.status END)
    FROM jsonb_array_elements(p_run.steps) WITH ORDINALITY AS s(spec, n)
    LEFT JOIN run_steps st ON st.run_id = p_run.id AND st.attempt = p_run.attempt AND st.idx = s.n - 1
    WHERE st.status IS NULL OR st.status = 'running'
       OR (st.status NOT IN ('succeeded', 'skipped') AND (s.spec -> 'continue_on_error') IS DISTINCT FROM 'true')
    ORDER BY s.n
    LIMIT 1
$$;

-- Ends the lease holder's attempt. p_outcome: succeeded | failed | cancelled | interrupted.
-- failed with attempts left: queued again after the backoff; interrupted (worker draining): queued now,
-- no attempt used — unless a cancel is pending, which ends the run cancelled instead. succeeded is
-- refused (RL409) while a step is unfinished or failed. The same lease ending the attempt the same way
-- again is a replay: the first answer comes back. Returns the run's status afterwards.
CREATE OR REPLACE FUNCTION runlane.complete_run(
    p_run_id  uuid,
    p_lease   uuid,
    p_outcome text,
    p_result  jsonb DEFAULT NULL,
    p_error   text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    wait interval;
    problem text;
    answer text;
    kind text;
    data jsonb;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted') THEN
        RAISE EXCEPTION 'outcome must be succeeded, failed, cancelled or interrupted, got %', p_outcome
            USING ERRCODE = 'RL422';
    END IF;
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    IF r.lease IS DISTINCT FROM p_lease THEN
        IF r.completed_lease = p_lease AND r.completed_outcome = p_outcome THEN
            RETURN r.completed_status;
        END IF;
        RAISE EXCEPTION 'lease lost for run %: it was requeued, finished or claimed by another worker', p_run_id
            USING ERRCODE = 'RL001';
    END IF;
    IF p_outcome = 'succeeded' THEN
        problem := unsucceeded_step(r);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'run % cannot succeed: %', p_run_id, problem USING ERRCODE = 'RL409';
        END IF;
    END IF;

    IF p_outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts AND r.cancel_requested_at IS NULL THEN
        wait := retry_backoff(r.backoff_base_ms, r.failed_attempts + 1);
        answer := 'queued';
        UPDATE runs SET status = 'queued', failed_attempts = failed_attempts + 1, run_at = now() + wait,
                        lease = NULL, lease_expires_at = NULL, deadline_at = NULL, error = p_error
        WHERE id = p_run_id;
        kind := 'run.retry_scheduled';
        data := jsonb_build_object('error', p_error, 'failed_attempts', r.failed_attempts + 1,
                                   'max_attempts', r.max_attempts, 'run_at', now() + wait);
    ELSIF p_outcome = 'interrupted' AND r.cancel_requested_at IS NULL THEN
        answer := 'queued';
        UPDATE runs SET status = 'queued', run_at = now(), lease = NULL, lease_expires_at = NULL, deadline_at = NULL
        WHERE id = p_run_id;
        kind := 'run.requeued';
        data := jsonb_strip_nulls(jsonb_build_object('reason', 'interrupted', 'error', p_error));
        PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
    ELSE
        -- A cancel pending while the attempt failed with attempts left or was handed back: the run
        -- never starts another attempt.
        answer := CASE WHEN p_outcome = 'interrupted'
                         OR (p_outcome = 'failed' AND r.failed_attempts + 1 < r.max_attempts) THEN 'cancelled'
                       ELSE p_outcome END;
        UPDATE runs SET status = answer, finished_at = now(), result = p_result,
                        error = CASE WHEN answer = 'cancelled' AND p_outcome <> 'cancelled'
                                     THEN coalesce(p_error || ' (then cancelled as requested)', 'cancelled as requested')
                                     ELSE p_error END,
                        failed_attempts = failed_attempts + (p_outcome = 'failed')::integer,
                        lease = NULL, lease_expires_at = NULL
        WHERE id = p_run_id;
        kind := 'run.finished';
        data := jsonb_strip_nulls(jsonb_build_object('status', answer, 'error', p_error, 'result', p_result,
            'reason', CASE WHEN answer <> p_outcome THEN 'cancel_requested' END));
    END IF;
    UPDATE runs SET next_seq = next_seq + 1, completed_lease = p_lease, completed_outcome = p_outcome,
                    completed_status = answer
    WHERE id = p_run_id;
    INSERT INTO run_events (run_id, seq, attempt, kind, data) VALUES (p_run_id, r.next_seq, r.attempt, kind, data);
    PERFORM pg_notify('runlane_events', p_run_id::text || ':' || r.next_seq);
    RETURN answer;
END $$;

REVOKE EXECUTE ON FUNCTION runlane.hold(uuid, uuid), runlane.reserved_event_kind(text),
                           runlane.artifact_name_problem(text), runlane.unsucceeded_step(runlane.runs),
                           runlane.check_lease(uuid, uuid), runlane.check_artifact_upload(uuid, uuid, text),
                           runlane.register_worker(text, text[], integer, text, text[], integer, integer),
                           runlane.append_events(uuid, uuid, jsonb, integer),
                           runlane.put_artifact(uuid, uuid, uuid, integer, text, text, bigint, text, bytea, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    runlane.check_lease(uuid, uuid),
    runlane.check_artifact_upload(uuid, uuid, text),
    runlane.register_worker(text, text[], integer, text, text[], integer, integer),
    runlane.append_events(uuid, uuid, jsonb, integer),
    runlane.put_artifact(uuid, uuid, uuid, integer, text, text, bigint, text, bytea, text)
TO runlane_worker;
