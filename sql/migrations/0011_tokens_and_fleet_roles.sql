-- Authentication writes nothing for a token that may not be used. Fleets sharing a cluster are
-- isolated: roles are cluster-wide, so each runlane database gets its own login-facing roles
-- (runlane_worker_<db> …, members of the shared runlane_worker …) and grants CONNECT to those alone.

-- Looks a presented token up by its hash: its id, role and lanes, and whether it may be used now
-- ('ok', 'revoked', 'expired'). No row: unknown token. Only a usable token's last_used_at is
-- written (at most once a minute), so failed authentications cost a read.
CREATE OR REPLACE FUNCTION runlane.authenticate(p_sha256 bytea)
RETURNS TABLE (id uuid, role text, lanes text[], state text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    t api_tokens;
    s text;
BEGIN
    SELECT * INTO t FROM api_tokens WHERE token_sha256 = p_sha256;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    s := CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
              WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN 'expired'
              ELSE 'ok' END;
    IF s = 'ok' AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute') THEN
        UPDATE api_tokens SET last_used_at = now() WHERE api_tokens.id = t.id;
    END IF;
    RETURN QUERY SELECT t.id, t.role, t.lanes, s;
END $$;

-- The role of this database's fleet that a login gets for a job: worker, operator, viewer or api.
CREATE FUNCTION runlane.fleet_role(p_kind text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    name text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('worker', 'operator', 'viewer', 'api') THEN
        RAISE EXCEPTION 'role kind must be worker, operator, viewer or api, got %', p_kind USING ERRCODE = 'RL422';
    END IF;
    name := format('runlane_%s_%s', p_kind, current_database());
    IF octet_length(name) > 63 THEN
        RAISE EXCEPTION 'the database name % is too long for per-fleet role names (% bytes; at most 46)',
            current_database(), octet_length(current_database()) USING ERRCODE = 'RL422';
    END IF;
    RETURN name;
END $$;
GRANT EXECUTE ON FUNCTION runlane.fleet_role(text) TO PUBLIC;

DO $$
DECLARE
    kind text;
    fleet_role text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['worker', 'operator', 'viewer', 'api'] LOOP
        fleet_role := runlane.fleet_role(kind);
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = fleet_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', fleet_role);
        END IF;
        EXECUTE format('GRANT %I TO %I', 'runlane_' || kind, fleet_role);
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), fleet_role);
    END LOOP;
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
END $$;
