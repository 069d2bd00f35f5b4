-- The executor API: bearer tokens (only their sha256 is stored) and the API's database role.

-- Creating and revoking tokens is the database owner's (`runlane token create|revoke`); no role
-- is granted these.
CREATE FUNCTION runlane.create_token(
    p_name       text,
    p_role       text,
    p_lanes      text[],
    p_expires_at timestamptz,
    p_sha256     bytea
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    l text;
    new_id uuid;
BEGIN
    IF p_role NOT IN ('worker', 'operator', 'viewer') THEN
        RAISE EXCEPTION 'role must be worker, operator or viewer, got %', p_role USING ERRCODE = 'RL422';
    END IF;
    FOREACH l IN ARRAY coalesce(p_lanes, '{}') LOOP
        PERFORM check_lane(l);
    END LOOP;
    IF p_expires_at IS NOT NULL AND p_expires_at <= now() THEN
        RAISE EXCEPTION 'the expiry % is in the past', p_expires_at USING ERRCODE = 'RL422';
    END IF;
    INSERT INTO api_tokens (name, role, lanes, token_sha256, expires_at)
    VALUES (coalesce(p_name, ''), p_role, p_lanes, p_sha256, p_expires_at)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

CREATE FUNCTION runlane.revoke_token(p_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown token %', p_id USING ERRCODE = 'RL404';
    END IF;
END $$;

-- Looks a presented token up by its hash: its id, role and lanes, and whether it may be used
-- now ('ok', 'revoked', 'expired'). No row: unknown token.
CREATE FUNCTION runlane.authenticate(p_sha256 bytea)
RETURNS TABLE (id uuid, role text, lanes text[], state text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    -- last_used_at at most once a minute per token, to keep authentication read-mostly.
    UPDATE api_tokens t SET last_used_at = now()
    WHERE t.token_sha256 = p_sha256 AND t.revoked_at IS NULL
      AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute');
    RETURN QUERY
    SELECT t.id, t.role, t.lanes,
           CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
                WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN 'expired'
                ELSE 'ok' END
    FROM api_tokens t WHERE t.token_sha256 = p_sha256;
END $$;

REVOKE EXECUTE ON FUNCTION runlane.create_token(text, text, text[], timestamptz, bytea),
                           runlane.revoke_token(uuid), runlane.authenticate(bytea) FROM PUBLIC;

-- The API server's role: it serves every kind of client, so it holds the operator's and the
-- worker's rights (it checks each token's role itself), plus authentication by hash. It still
-- cannot read api_tokens or write a table directly.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'runlane_api') THEN
        CREATE ROLE runlane_api NOLOGIN;
    END IF;
END $$;
GRANT runlane_operator, runlane_worker TO runlane_api;
GRANT EXECUTE ON FUNCTION runlane.authenticate(bytea) TO runlane_api;
