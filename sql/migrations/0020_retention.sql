-- Retention per template. A finished run (succeeded, failed or cancelled) is kept for the retention
-- of its template version (0017: run_templates.retention) or, where that is NULL, for the fleet's
-- (0009: fleet.retention); then a prune deletes it with its events, steps and artifacts, and hands the
-- object store keys of its large artifacts to doomed_objects in the same transaction. prune_preview
-- says what pruning would delete, template by template, and writes nothing.

-- Expired runs are found per template version: each version's probe reads only its own runs past its
-- own retention, oldest first, however long other templates keep theirs (with one index on finished_at,
-- a template kept for an hour beside a fleet retention of a week meant walking a week of runs each time).
-- It replaces runs_finished_idx (finished_at alone), which only the prune used, so a run that finishes
-- still enters one index for it.
DROP INDEX runlane.runs_finished_idx;
CREATE INDEX runs_expiry_idx ON runlane.runs (template, template_version, finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- Every template version with how long its finished runs are kept: its own retention, or
-- p_fleet_retention where it has none. Every run's template version is stored (versions are never
-- deleted), so every finished run has a row here. Plain SQL, so it is inlined into its callers
-- (prune_at, prune_preview), which decide alike through it.
CREATE FUNCTION runlane.template_retentions(p_fleet_retention interval)
RETURNS TABLE (template text, version integer, retention interval, retention_from text)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.version, coalesce(t.retention, p_fleet_retention),
           CASE WHEN t.retention IS NULL THEN 'fleet' ELSE 'template' END
    FROM runlane.run_templates t
$$;

-- Deletes finished runs past their retention as of p_now: each template version's own, else
-- p_retention (the fleet's unless given). At most p_limit runs a call (the fleet's prune limit unless
-- given), with their events, steps and artifacts; the store keys of their large artifacts go to
-- doomed_objects. Then workers gone for longer than the fleet's retention, and sessions older than it
-- that no run refers to. Runs locked by a concurrent writer (a retry) are skipped and re-checked, never
-- deleted. Returns what it deleted and whether more waits.
CREATE OR REPLACE FUNCTION runlane.prune_at(p_now timestamptz, p_retention interval DEFAULT NULL,
                                            p_limit integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    policy fleet;
    doomed uuid[];
    gone record;
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
    -- Lock the chunk first (one probe of runs_expiry_idx per template version, lazily: the probes stop
    -- at the limit), then delete by id: a join of the chunk with runs could be planned as a scan of the
    -- whole table, and the chunk is known exactly before anything is deleted.
    SELECT coalesce(array_agg(x.id), '{}') INTO doomed
    FROM (SELECT e.id FROM template_retentions(p_retention) k
          CROSS JOIN LATERAL (
              SELECT r.id FROM runs r
              WHERE r.template = k.template AND r.template_version = k.version
                AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.finished_at < p_now - k.retention
              ORDER BY r.finished_at
              FOR UPDATE SKIP LOCKED) e
          LIMIT p_limit) x;
    WITH runs_gone AS (
        DELETE FROM runs WHERE id = ANY (doomed) RETURNING 1
    ), events AS (
        DELETE FROM run_events WHERE run_id = ANY (doomed) RETURNING 1
    ), steps AS (
        DELETE FROM run_steps WHERE run_id = ANY (doomed) RETURNING 1
    ), arts AS (
        DELETE FROM artifacts WHERE run_id = ANY (doomed) RETURNING store_key, size_bytes
    ), objects AS (
        INSERT INTO doomed_objects (store_key)
        SELECT store_key FROM arts WHERE store_key IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT (SELECT count(*) FROM runs_gone) AS runs, (SELECT count(*) FROM events) AS events,
           (SELECT count(*) FROM steps) AS steps, (SELECT count(*) FROM arts) AS artifacts,
           (SELECT count(*) FROM arts WHERE store_key IS NOT NULL) AS stored_objects,
           (SELECT coalesce(sum(size_bytes), 0) FROM arts WHERE store_key IS NOT NULL) AS stored_bytes
    INTO gone;
    DELETE FROM workers WHERE state = 'gone' AND last_seen_at < p_now - p_retention;
    GET DIAGNOSTICS workers_pruned = ROW_COUNT;
    DELETE FROM sessions s WHERE s.created_at < p_now - p_retention
                            AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.session_id = s.id);
    GET DIAGNOSTICS sessions_pruned = ROW_COUNT;
    RETURN jsonb_build_object('skipped', false, 'pruned', gone.runs, 'events_pruned', gone.events,
                              'steps_pruned', gone.steps, 'artifacts_pruned', gone.artifacts,
                              'stored_objects', gone.stored_objects, 'stored_bytes', gone.stored_bytes,
                              'workers_pruned', workers_pruned, 'sessions_pruned', sessions_pruned,
                              'more', cardinality(doomed) >= p_limit);
END $$;

-- What pruning as of p_now (with p_retention in place of the fleet's, when given) would delete, once
-- every chunk is done: per template and the retention that applies (its own, or the fleet's), the runs,
-- their events, steps and artifacts, and the stored objects (and their bytes) that would leave the
-- object store; then the totals, with the gone workers and idle sessions. The same test of expiry as
-- prune_at (template_retentions). STABLE: PostgreSQL refuses any write in it.
CREATE FUNCTION runlane.prune_preview(p_now timestamptz DEFAULT NULL, p_retention interval DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    fleet_retention interval;
    preview jsonb;
BEGIN
    p_now := coalesce(p_now, now());
    fleet_retention := coalesce(p_retention, (SELECT retention FROM fleet));
    -- OFFSET 0 keeps the subquery per template version (one probe of runs_expiry_idx each), where the
    -- planner might otherwise join every finished run with the templates.
    WITH expired AS (
        SELECT k.template, k.version, k.retention, k.retention_from, e.id, e.finished_at, e.session_id
        FROM template_retentions(fleet_retention) k
        CROSS JOIN LATERAL (
            SELECT r.id, r.finished_at, r.session_id FROM runs r
            WHERE r.template = k.template AND r.template_version = k.version
              AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.finished_at < p_now - k.retention
            OFFSET 0) e
    ), per_run AS (
        SELECT x.*,
               (SELECT count(*) FROM run_events v WHERE v.run_id = x.id) AS events,
               (SELECT count(*) FROM run_steps s WHERE s.run_id = x.id) AS steps,
               a.artifacts, a.stored_objects, a.stored_bytes
        FROM expired x
        CROSS JOIN LATERAL (
            SELECT count(*) AS artifacts, count(store_key) AS stored_objects,
                   coalesce(sum(size_bytes) FILTER (WHERE store_key IS NOT NULL), 0) AS stored_bytes
            FROM artifacts WHERE run_id = x.id) a
    ), per_template AS (
        SELECT template, retention, retention_from, array_agg(DISTINCT version ORDER BY version) AS versions,
               count(*) AS runs, sum(events)::bigint AS events, sum(steps)::bigint AS steps,
               sum(artifacts)::bigint AS artifacts, sum(stored_objects)::bigint AS stored_objects,
               sum(stored_bytes)::bigint AS stored_bytes, min(finished_at) AS oldest_finished_at
        FROM per_run GROUP BY template, retention, retention_from
    )
    SELECT jsonb_build_object(
        'as_of', p_now,
        'fleet_retention_s', extract(epoch FROM fleet_retention)::bigint,
        'runs', coalesce(sum(p.runs), 0), 'events', coalesce(sum(p.events), 0), 'steps', coalesce(sum(p.steps), 0),
        'artifacts', coalesce(sum(p.artifacts), 0), 'stored_objects', coalesce(sum(p.stored_objects), 0),
        'stored_bytes', coalesce(sum(p.stored_bytes), 0),
        'workers', (SELECT count(*) FROM workers w WHERE w.state = 'gone' AND w.last_seen_at < p_now - fleet_retention),
        -- A session goes once every run of it has.
        'sessions', (SELECT count(*) FROM sessions s
                     LEFT JOIN (SELECT session_id, count(*) AS n FROM expired GROUP BY session_id) x
                            ON x.session_id = s.id
                     WHERE s.created_at < p_now - fleet_retention
                       AND coalesce(x.n, 0) = (SELECT count(*) FROM runs r WHERE r.session_id = s.id)),
        'templates', coalesce(jsonb_agg(jsonb_build_object(
            'template', p.template, 'versions', to_jsonb(p.versions),
            'retention_s', extract(epoch FROM p.retention)::bigint, 'retention_from', p.retention_from,
            'runs', p.runs, 'events', p.events, 'steps', p.steps, 'artifacts', p.artifacts,
            'stored_objects', p.stored_objects, 'stored_bytes', p.stored_bytes,
            'oldest_finished_at', p.oldest_finished_at) ORDER BY p.template, p.retention), '[]'))
    INTO preview
    FROM per_template p;
    RETURN preview;
END $$;

REVOKE EXECUTE ON FUNCTION runlane.template_retentions(interval), runlane.prune_preview(timestamptz, interval)
    FROM PUBLIC;
-- A preview reads only what a viewer may read (runs, events, steps, artifacts) and writes nothing.
-- Pruning itself stays with workers and operators (prune(), by the fleet's policy) and the owner (prune_at).
GRANT EXECUTE ON FUNCTION runlane.prune_preview(timestamptz, interval) TO runlane_viewer, runlane_operator;

-- CREATE OR REPLACE resets a function's settings: prune_at keeps 0014's.
ALTER FUNCTION runlane.prune_at(timestamptz, interval, integer) SET jit = off;
ALTER FUNCTION runlane.prune_preview(timestamptz, interval) SET jit = off;
