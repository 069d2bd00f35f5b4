-- Docker support: the fleet's identity (labels on step containers, so fleets sharing an engine
-- never touch each other's containers) and which runs are live (orphan reaping).

CREATE TABLE runlane.fleet (
    id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    one boolean NOT NULL UNIQUE DEFAULT true CHECK (one)
);
INSERT INTO runlane.fleet DEFAULT VALUES;
ALTER TABLE runlane.fleet ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON runlane.fleet FROM PUBLIC;

-- This database's fleet id.
CREATE FUNCTION runlane.fleet_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT id FROM fleet
$$;

-- Of these runs, the ones running now, with their current attempt: a worker asks before it removes
-- Docker containers labelled with a run and attempt (orphans of a crashed worker).
CREATE FUNCTION runlane.running_attempts(p_run_ids uuid[])
RETURNS TABLE (run_id uuid, attempt integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT r.id, r.attempt FROM runs r WHERE r.id = ANY (p_run_ids) AND r.status = 'running'
$$;

REVOKE EXECUTE ON FUNCTION runlane.fleet_id(), runlane.running_attempts(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.fleet_id(), runlane.running_attempts(uuid[])
    TO runlane_worker, runlane_operator, runlane_viewer;
