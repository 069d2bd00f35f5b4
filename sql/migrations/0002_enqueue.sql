-- Templates, sessions and enqueue: the operator's way in.
-- Errors use SQLSTATE class RL (see docs/SQL.md): RL404 not found, RL422 invalid input.

-- Checks params against the template's schema: object, required keys, JSON types of declared
-- properties, additionalProperties = false. Returns every violation (empty array: valid).
CREATE FUNCTION runlane.param_violations(p_schema jsonb, p_params jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    problems text[] := '{}';
    key text;
    prop jsonb;
    want jsonb;
    got text;
BEGIN
    IF p_params IS NULL OR jsonb_typeof(p_params) <> 'object' THEN
        RETURN ARRAY[format('params must be a JSON object, got %s', coalesce(jsonb_typeof(p_params), 'null'))];
    END IF;
    FOR key IN SELECT jsonb_array_elements_text(coalesce(p_schema -> 'required', '[]')) LOOP
        IF NOT p_params ? key THEN
            problems := problems || format('missing required param ''%s''', key);
        END IF;
    END LOOP;
    FOR key, prop IN SELECT k, v FROM jsonb_each(coalesce(p_schema -> 'properties', '{}')) AS e(k, v) LOOP
        CONTINUE WHEN NOT p_params ? key OR prop -> 'type' IS NULL;
        want := CASE jsonb_typeof(prop -> 'type') WHEN 'array' THEN prop -> 'type'
                     ELSE jsonb_build_array(prop -> 'type') END;
        got := jsonb_typeof(p_params -> key);
        IF got = 'number' AND want ? 'integer' AND (p_params ->> key)::numeric = trunc((p_params ->> key)::numeric) THEN
            CONTINUE;
        END IF;
        IF NOT want ? got THEN
            problems := problems || format('param ''%s'' must be %s, got %s', key,
                (SELECT string_agg(t, ' or ') FROM jsonb_array_elements_text(want) AS w(t)), got);
        END IF;
    END LOOP;
    IF p_schema -> 'additionalProperties' = 'false'::jsonb THEN
        FOR key IN SELECT k FROM jsonb_object_keys(p_params) AS o(k)
                   WHERE NOT coalesce(p_schema -> 'properties', '{}') ? k ORDER BY 1 LOOP
            problems := problems || format('unknown param ''%s''', key);
        END LOOP;
    END IF;
    RETURN problems;
END $$;

CREATE FUNCTION runlane.lane_names() RETURNS text
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT string_agg(name, ', ' ORDER BY name) FROM lanes
$$;

CREATE FUNCTION runlane.check_lane(p_lane text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
BEGIN
    IF p_lane IS NULL OR NOT EXISTS (SELECT 1 FROM lanes WHERE name = p_lane) THEN
        RAISE EXCEPTION 'unknown lane ''%'' (lanes: %)', coalesce(p_lane, 'NULL'), lane_names()
            USING ERRCODE = 'RL422';
    END IF;
END $$;

-- Applies a template spec (JSON of a templates/*.yaml file). Returns its version: a new one when the
-- spec differs from the newest stored version, the newest one when it is the same.
CREATE FUNCTION runlane.apply_template(p_name text, p_spec jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    latest run_templates;
    step jsonb;
    i integer := 0;
    v integer;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid template name ''%'': use lowercase letters, digits, ''.'', ''_'' and ''-''', p_name
            USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'template ''%'': spec must be a JSON object', p_name USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_spec -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(p_spec -> 'steps') = 0 THEN
        RAISE EXCEPTION 'template ''%'': steps must be a non-empty list', p_name USING ERRCODE = 'RL422';
    END IF;
    FOR step IN SELECT jsonb_array_elements(p_spec -> 'steps') LOOP
        IF jsonb_typeof(step -> 'name') IS DISTINCT FROM 'string'
           OR NOT coalesce(step ->> 'kind', '') IN ('shell', 'docker', 'http', 'noop') THEN
            RAISE EXCEPTION 'template ''%'': step % needs a name and a kind (shell, docker, http or noop)', p_name, i
                USING ERRCODE = 'RL422';
        END IF;
        i := i + 1;
    END LOOP;
    IF p_spec ? 'lane' THEN
        PERFORM check_lane(p_spec ->> 'lane');
    END IF;
    SELECT * INTO latest FROM run_templates WHERE name = p_name ORDER BY version DESC LIMIT 1;
    IF FOUND AND latest.spec = p_spec THEN
        RETURN latest.version;
    END IF;
    v := coalesce(latest.version, 0) + 1;
    INSERT INTO run_templates (name, version, description, params_schema, steps, default_lane, default_priority,
                               timeout_ms, max_attempts, backoff_base_ms, max_crashes, requires, spec)
    VALUES (p_name, v, coalesce(p_spec ->> 'description', ''), coalesce(p_spec -> 'params', '{"type": "object"}'),
            p_spec -> 'steps', coalesce(p_spec ->> 'lane', 'C'), coalesce((p_spec ->> 'priority')::integer, 0),
            coalesce((p_spec ->> 'timeout_ms')::integer, 3600000), coalesce((p_spec ->> 'max_attempts')::integer, 1),
            coalesce((p_spec ->> 'backoff_base_ms')::integer, 1000), coalesce((p_spec ->> 'max_crashes')::integer, 3),
            CASE WHEN jsonb_path_exists(p_spec -> 'steps', '$[*] ? (@.kind == "docker")') THEN '{docker}'::text[]
                 ELSE '{}'::text[] END,
            p_spec);
    RETURN v;
EXCEPTION
    WHEN check_violation OR invalid_text_representation OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'template ''%'': %', p_name, SQLERRM USING ERRCODE = 'RL422';
END $$;

CREATE FUNCTION runlane.create_session(p_name text DEFAULT '') RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    INSERT INTO sessions (name, created_by) VALUES (coalesce(p_name, ''), session_user) RETURNING id
$$;

-- Enqueues one run of the newest version of a template. The same idempotency key returns the same run.
CREATE FUNCTION runlane.enqueue_run(
    p_template        text,
    p_params          jsonb DEFAULT '{}',
    p_lane            text DEFAULT NULL,
    p_priority        integer DEFAULT NULL,
    p_run_at          timestamptz DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_session_id      uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    t run_templates;
    lane_name text;
    problems text[];
    new_id uuid;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN new_id;
        END IF;
    END IF;
    SELECT * INTO t FROM run_templates WHERE name = p_template ORDER BY version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown template ''%'' (templates: %)', p_template,
            coalesce((SELECT string_agg(DISTINCT name, ', ') FROM run_templates), 'none applied yet')
            USING ERRCODE = 'RL404';
    END IF;
    lane_name := coalesce(p_lane, t.default_lane);
    PERFORM check_lane(lane_name);
    problems := param_violations(t.params_schema, p_params);
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'invalid params for template ''%'': %', p_template, array_to_string(problems, '; ')
            USING ERRCODE = 'RL422', DETAIL = to_jsonb(problems)::text;
    END IF;
    IF p_priority IS NOT NULL AND p_priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'priority % is out of range (-100 to 100)', p_priority USING ERRCODE = 'RL422';
    END IF;
    IF p_session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions WHERE id = p_session_id) THEN
        RAISE EXCEPTION 'unknown session %', p_session_id USING ERRCODE = 'RL404';
    END IF;

    INSERT INTO runs (template, template_version, lane, priority, params, secret_params, steps, requires,
                      timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                      session_id, next_seq)
    VALUES (t.name, t.version, lane_name, coalesce(p_priority, t.default_priority), p_params,
            ARRAY(SELECT k FROM jsonb_each(coalesce(t.params_schema -> 'properties', '{}')) AS e(k, v)
                  WHERE v -> 'secret' = 'true'::jsonb ORDER BY k),
            t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes,
            coalesce(p_run_at, now()), p_idempotency_key, p_session_id, 2)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        -- A concurrent enqueue with the same key won the insert.
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        RETURN new_id;
    END IF;
    INSERT INTO run_events (run_id, seq, attempt, kind, data)
    VALUES (new_id, 1, 0, 'run.queued', jsonb_build_object('template', t.name, 'version', t.version,
            'lane', lane_name, 'by', session_user));
    IF coalesce(p_run_at, now()) <= now() THEN
        PERFORM pg_notify('runlane_lane_' || lower(lane_name), '');
    END IF;
    RETURN new_id;
END $$;

-- Sets or clears (NULL) a lane's fleet-wide cap on running runs.
CREATE FUNCTION runlane.set_lane_cap(p_lane text, p_max_running integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    PERFORM check_lane(p_lane);
    IF p_max_running < 0 THEN
        RAISE EXCEPTION 'max_running must be NULL or >= 0, got %', p_max_running USING ERRCODE = 'RL422';
    END IF;
    UPDATE lanes SET max_running = p_max_running WHERE name = p_lane;
END $$;
