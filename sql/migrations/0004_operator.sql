-- The operator's side after enqueue: cancel, retry, annotate; the sweeper; lane figures.

-- queued: cancelled now. running: cancel requested (the worker hears it on the runlane_cancel
-- channel at once, or from its next heartbeat). Returns 'cancelled', 'cancel_requested', or the
-- status of a run that had already finished (nothing changed).
CREATE FUNCTION runlane.cancel_run(p_run_id uuid, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    IF r.status = 'queued' THEN
        UPDATE runs SET status = 'cancelled', finished_at = now(), cancel_requested_at = now(),
                        cancel_reason = p_reason, error = 'cancelled before it started'
        WHERE id = p_run_id;
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

-- Queues a failed or cancelled run again, with fresh attempt and crash budgets.
CREATE FUNCTION runlane.retry_run(p_run_id uuid) RETURNS text
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
    PERFORM add_event(p_run_id, 'run.retried', jsonb_build_object('previous_status', r.status, 'by', session_user));
    PERFORM pg_notify('runlane_lane_' || lower(r.lane), '');
    RETURN 'queued';
END $$;

-- An operator's note in a run's event stream.
CREATE FUNCTION runlane.annotate_run(p_run_id uuid, p_message text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
        RAISE EXCEPTION 'unknown run %', p_run_id USING ERRCODE = 'RL404';
    END IF;
    IF coalesce(length(p_message), 0) NOT BETWEEN 1 AND 4096 THEN
        RAISE EXCEPTION 'a note holds 1 to 4096 characters' USING ERRCODE = 'RL422';
    END IF;
    RETURN add_event(p_run_id, 'run.note', jsonb_build_object('message', p_message, 'by', session_user));
END $$;

-- The sweeper. One at a time (transaction advisory lock; a concurrent call returns {"skipped": true}).
-- Requeues runs whose lease expired (crash_count + 1; failed once past max_crashes), fails runs past
-- their deadline by more than p_deadline_slack, marks workers silent for p_worker_timeout gone, and
-- prunes finished runs older than p_retention (at most p_prune_limit a call).
-- p_now is the sweeper's clock: now() in production, a later time in tests.
CREATE FUNCTION runlane.sweep(
    p_now             timestamptz DEFAULT now(),
    p_retention       interval DEFAULT '7 days',
    p_worker_timeout  interval DEFAULT '1 minute',
    p_deadline_slack  interval DEFAULT '30 seconds',
    p_prune_limit     integer DEFAULT 10000
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    requeued integer := 0;
    crashed_out integer := 0;
    timed_out integer := 0;
    gone integer := 0;
    pruned integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('runlane.sweep')) THEN
        RETURN jsonb_build_object('skipped', true);
    END IF;

    FOR r IN SELECT * FROM runs WHERE status = 'running' AND lease_expires_at < p_now
             ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED LOOP
        IF r.crash_count + 1 > r.max_crashes THEN
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

    WITH doomed AS (
        DELETE FROM runs WHERE id IN (
            SELECT id FROM runs
            WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < p_now - p_retention
            ORDER BY finished_at LIMIT p_prune_limit)
        RETURNING id
    ), events AS (
        DELETE FROM run_events WHERE run_id IN (SELECT id FROM doomed)
    )
    SELECT count(*) INTO pruned FROM doomed;

    RETURN jsonb_build_object('skipped', false, 'requeued', requeued, 'crash_failed', crashed_out,
                              'deadline_failed', timed_out, 'workers_gone', gone, 'pruned', pruned);
END $$;

-- Per lane: queued (runnable now), scheduled (run_at in the future), running, cap, oldest runnable age.
CREATE FUNCTION runlane.lane_stats()
RETURNS TABLE (lane text, queued bigint, scheduled bigint, running bigint, max_running integer,
               oldest_queued_s double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT l.name,
           (SELECT count(*) FROM runs r WHERE r.lane = l.name AND r.status = 'queued' AND r.run_at <= now()),
           (SELECT count(*) FROM runs r WHERE r.lane = l.name AND r.status = 'queued' AND r.run_at > now()),
           (SELECT count(*) FROM runs r WHERE r.lane = l.name AND r.status = 'running'),
           l.max_running,
           coalesce((SELECT extract(epoch FROM now() - min(r.run_at)) FROM runs r
                     WHERE r.lane = l.name AND r.status = 'queued' AND r.run_at <= now()), 0)::double precision
    FROM lanes l ORDER BY l.name
$$;
