-- The sweeper, second pass. Its policy (retention, worker timeout, deadline slack) is the fleet's,
-- set by the owner: workers and operators sweep by it and cannot move its clock. A lease is given
-- up to another worker only after its holder's kill grace has also passed. A cancel pending when
-- a lease expires ends the run cancelled. Pruning skips runs locked by a concurrent retry and hands
-- the object store keys of pruned artifacts to whoever holds the store.

ALTER TABLE runlane.fleet
    ADD COLUMN retention      interval NOT NULL DEFAULT '7 days' CHECK (retention >= '0'),
    ADD COLUMN worker_timeout interval NOT NULL DEFAULT '1 minute' CHECK (worker_timeout > '0'),
    ADD COLUMN deadline_slack interval NOT NULL DEFAULT '30 seconds' CHECK (deadline_slack >= '0'),
    ADD COLUMN prune_limit    integer NOT NULL DEFAULT 10000 CHECK (prune_limit > 0);

-- Object store keys of pruned artifacts, until a process that holds the store deletes them.
CREATE TABLE runlane.doomed_objects (
    store_key text PRIMARY KEY,
    doomed_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE runlane.doomed_objects ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON runlane.doomed_objects FROM PUBLIC;

-- The sweeper's policy as it is now.
CREATE FUNCTION runlane.sweep_policy()
RETURNS TABLE (retention_s bigint, worker_timeout_s bigint, deadline_slack_s bigint, prune_limit integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT extract(epoch FROM retention)::bigint, extract(epoch FROM worker_timeout)::bigint,
           extract(epoch FROM deadline_slack)::bigint, prune_limit
    FROM fleet
$$;

-- Changes the policy (the owner's call); NULL keeps a value.
CREATE FUNCTION runlane.set_sweep_policy(
    p_retention      interval,
    p_worker_timeout interval DEFAULT NULL,
    p_deadline_slack interval DEFAULT NULL,
    p_prune_limit    integer DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    UPDATE fleet SET retention = coalesce(p_retention, retention),
                     worker_timeout = coalesce(p_worker_timeout, worker_timeout),
                     deadline_slack = coalesce(p_deadline_slack, deadline_slack),
                     prune_limit = coalesce(p_prune_limit, prune_limit);
EXCEPTION
    WHEN check_violation THEN
        RAISE EXCEPTION 'invalid sweep policy: retention and deadline slack must be >= 0, the worker timeout '
                        'and the prune limit > 0' USING ERRCODE = 'RL422';
END $$;

DROP FUNCTION runlane.sweep(timestamptz, interval, interval, interval, integer);

-- One sweeper pass as of p_now, by the fleet's policy unless a value is given. The owner's (and
-- tests') call: workers and operators call sweep(). One at a time (transaction advisory lock; a
-- concurrent call returns {"skipped": true}). Expired leases, once their holder's kill grace has
-- also passed: the run is requeued (crash_count + 1), failed past max_crashes, or cancelled when a
-- cancel was pending. Runs past their deadline by more than the slack fail; workers silent for the
-- worker timeout are marked gone; finished runs older than the retention are pruned (at most the
-- prune limit a pass; runs locked by a concurrent writer are skipped).
CREATE FUNCTION runlane.sweep_at(
    p_now            timestamptz,
    p_retention      interval DEFAULT NULL,
    p_worker_timeout interval DEFAULT NULL,
    p_deadline_slack interval DEFAULT NULL,
    p_prune_limit    integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    policy fleet;
    r runs;
    requeued integer := 0;
    cancelled integer := 0;
    crashed_out integer := 0;
    timed_out integer := 0;
    gone integer := 0;
    pruned integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('runlane.sweep')) THEN
        RETURN jsonb_build_object('skipped', true);
    END IF;
    SELECT * INTO policy FROM fleet;
    p_now := coalesce(p_now, now());
    p_retention := coalesce(p_retention, policy.retention);
    p_worker_timeout := coalesce(p_worker_timeout, policy.worker_timeout);
    p_deadline_slack := coalesce(p_deadline_slack, policy.deadline_slack);
    p_prune_limit := coalesce(p_prune_limit, policy.prune_limit);

    FOR r IN SELECT x.* FROM runs x LEFT JOIN workers w ON w.id = x.worker_id
             WHERE x.status = 'running' AND x.lease_expires_at < p_now
               AND x.lease_expires_at + coalesce(w.kill_grace_ms, 0) * interval '1 millisecond' < p_now
             ORDER BY x.lease_expires_at FOR UPDATE OF x SKIP LOCKED LOOP
        IF r.cancel_requested_at IS NOT NULL THEN
            UPDATE runs SET status = 'cancelled', crash_count = crash_count + 1, finished_at = now(), lease = NULL,
                            lease_expires_at = NULL, error = 'cancelled: the lease expired while the cancel was pending'
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'cancelled',
                'reason', 'lease_expired', 'crash_count', r.crash_count + 1, 'worker_id', r.worker_id));
            cancelled := cancelled + 1;
        ELSIF r.crash_count + 1 > r.max_crashes THEN
            UPDATE runs SET status = 'failed', crash_count = crash_count + 1, finished_at = now(), lease = NULL,
                            lease_expires_at = NULL,
                            error = format('lease expired %s times: crash cap (max_crashes = %s) reached',
                                           r.crash_count + 1, r.max_crashes)
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'failed', 'reason', 'crash_cap',
                'crash_count', r.crash_count + 1, 'worker_id', r.worker_id));
            crashed_out := crashed_out + 1;
        ELSE
            UPDATE runs SET status = 'queued', crash_count = crash_count + 1, run_at = now(), lease = NULL,
                            lease_expires_at = NULL, deadline_at = NULL
            WHERE id = r.id;
            PERFORM add_event(r.id, 'run.requeued', jsonb_build_object('reason', 'lease_expired',
                'crash_count', r.crash_count + 1, 'worker_id', r.worker_id, 'attempt', r.attempt));
            PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
            requeued := requeued + 1;
        END IF;
    END LOOP;

    FOR r IN SELECT * FROM runs WHERE status = 'running' AND deadline_at + p_deadline_slack < p_now
             FOR UPDATE SKIP LOCKED LOOP
        UPDATE runs SET status = 'failed', finished_at = now(), lease = NULL, lease_expires_at = NULL,
                        error = format('run exceeded its timeout of %s ms', r.timeout_ms)
        WHERE id = r.id;
        PERFORM add_event(r.id, 'run.finished', jsonb_build_object('status', 'failed', 'reason', 'deadline',
            'timeout_ms', r.timeout_ms, 'worker_id', r.worker_id));
        timed_out := timed_out + 1;
    END LOOP;

    UPDATE workers SET state = 'gone' WHERE state <> 'gone' AND last_seen_at < p_now - p_worker_timeout;
    GET DIAGNOSTICS gone = ROW_COUNT;

    -- Locked and re-checked in the subquery: a run retried (or otherwise changed) meanwhile is
    -- skipped, never deleted.
    WITH doomed AS (
        DELETE FROM runs WHERE id IN (
            SELECT id FROM runs
            WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < p_now - p_retention
            ORDER BY finished_at LIMIT p_prune_limit
            FOR UPDATE SKIP LOCKED)
        RETURNING id
    ), events AS (
        DELETE FROM run_events WHERE run_id IN (SELECT id FROM doomed)
    ), objects AS (
        INSERT INTO doomed_objects (store_key)
        SELECT a.store_key FROM artifacts a WHERE a.run_id IN (SELECT id FROM doomed) AND a.store_key IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) INTO pruned FROM doomed;

    RETURN jsonb_build_object('skipped', false, 'requeued', requeued, 'cancelled', cancelled,
                              'crash_failed', crashed_out, 'deadline_failed', timed_out, 'workers_gone', gone,
                              'pruned', pruned);
END $$;

-- One sweeper pass now, by the fleet's policy: what workers, the API and operators call.
CREATE FUNCTION runlane.sweep() RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT sweep_at(now())
$$;

-- Up to p_limit object store keys of pruned artifacts, oldest first.
CREATE FUNCTION runlane.doomed_objects(p_limit integer) RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT store_key FROM doomed_objects ORDER BY doomed_at, store_key LIMIT p_limit
$$;

-- The objects at these keys are deleted from the store.
CREATE FUNCTION runlane.forget_objects(p_keys text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    DELETE FROM doomed_objects WHERE store_key = ANY (p_keys)
$$;

REVOKE EXECUTE ON FUNCTION runlane.sweep_at(timestamptz, interval, interval, interval, integer),
                           runlane.set_sweep_policy(interval, interval, interval, integer),
                           runlane.sweep(), runlane.sweep_policy(), runlane.doomed_objects(integer),
                           runlane.forget_objects(text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.sweep(), runlane.sweep_policy() TO runlane_worker, runlane_operator;
GRANT EXECUTE ON FUNCTION runlane.sweep_policy() TO runlane_viewer;
GRANT EXECUTE ON FUNCTION runlane.doomed_objects(integer), runlane.forget_objects(text[]) TO runlane_worker;
