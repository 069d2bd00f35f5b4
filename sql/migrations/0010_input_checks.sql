-- Input checks, second pass: apply_template checks every key of every step (the same rules as the
-- worker's step parser, so a template that applies is a template that runs, whichever path applied
-- it); params are bounded at enqueue; an unknown template is answered with the closest names.

-- What is wrong with a value given for a key of this type, or NULL.
CREATE FUNCTION runlane.value_problem(p_type text, p_value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text := jsonb_typeof(p_value);
    e jsonb;
BEGIN
    CASE p_type
        WHEN 'any' THEN
            RETURN NULL;
        WHEN 'string' THEN
            IF t <> 'string' THEN RETURN 'must be a string'; END IF;
        WHEN 'boolean' THEN
            IF t <> 'boolean' THEN RETURN 'must be true or false'; END IF;
        WHEN 'number' THEN
            IF t <> 'number' THEN RETURN 'must be a number'; END IF;
        WHEN 'count' THEN
            IF t <> 'number' OR p_value::text !~ '^[0-9]{1,18}$' THEN RETURN 'must be a whole number >= 0'; END IF;
        WHEN 'integer' THEN
            IF t <> 'number' OR p_value::text !~ '^-?[0-9]{1,18}$' THEN RETURN 'must be a whole number'; END IF;
        WHEN 'string_map' THEN
            IF t <> 'object' THEN RETURN 'must be an object of strings'; END IF;
            IF EXISTS (SELECT 1 FROM jsonb_each(p_value) AS x(k, v) WHERE jsonb_typeof(v) <> 'string') THEN
                RETURN 'must be an object of strings';
            END IF;
        WHEN 'string_list' THEN
            IF t <> 'array' THEN RETURN 'must be a list of strings'; END IF;
            IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_value) AS x(v) WHERE jsonb_typeof(v) <> 'string') THEN
                RETURN 'must be a list of strings';
            END IF;
        WHEN 'status_list' THEN
            IF t <> 'array' THEN RETURN 'must be a list of HTTP statuses'; END IF;
            IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_value) AS x(v)
                       WHERE v::text !~ '^[0-9]{1,5}$' OR v::text::integer > 65535) THEN
                RETURN 'must be a list of HTTP statuses';
            END IF;
        WHEN 'pull_policy' THEN
            IF p_value NOT IN ('"never"', '"if-not-present"', '"always"') THEN
                RETURN 'must be never, if-not-present or always';
            END IF;
        WHEN 'mounts' THEN
            IF t <> 'array' THEN RETURN 'must be a list of mounts'; END IF;
            FOR e IN SELECT jsonb_array_elements(p_value) LOOP
                IF jsonb_typeof(e) <> 'object'
                   OR jsonb_typeof(e -> 'source') IS DISTINCT FROM 'string'
                   OR jsonb_typeof(e -> 'target') IS DISTINCT FROM 'string'
                   OR (e ? 'read_only' AND jsonb_typeof(e -> 'read_only') <> 'boolean')
                   OR EXISTS (SELECT 1 FROM jsonb_object_keys(e) AS x(k) WHERE k NOT IN ('source', 'target', 'read_only'))
                THEN
                    RETURN format('must be a list of {source, target, read_only?} (source and target strings): %s',
                                  left(e::text, 100));
                END IF;
            END LOOP;
    END CASE;
    RETURN NULL;
END $$;

-- What is wrong with one step, or NULL. The keys and their types are those of core/src/steps.rs.
CREATE FUNCTION runlane.step_problem(p_step jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    common constant jsonb := '{"name": "string", "kind": "string", "timeout_ms": "count", "cancel_grace_ms": "count",
                               "continue_on_error": "boolean", "always": "boolean"}';
    kinds constant jsonb := '{
        "shell": {"command": "string", "env": "string_map", "working_dir": "string"},
        "docker": {"image": "string", "pull_policy": "pull_policy", "command": "string_list",
                   "entrypoint": "string_list", "env": "string_map", "working_dir": "string", "user": "string",
                   "memory_mb": "count", "cpus": "number", "pids_limit": "integer", "network": "string",
                   "mounts": "mounts", "artifacts": "string_list"},
        "http": {"method": "string", "url": "string", "headers": "string_map", "body": "any",
                 "expect_status": "status_list", "retries": "count", "retry_backoff_ms": "count", "save_as": "string"},
        "noop": {}}';
    required constant jsonb := '{"shell": ["command"], "docker": ["image"], "http": ["url"], "noop": []}';
    name text;
    kind text;
    keys jsonb;
    k text;
    v jsonb;
    problem text;
BEGIN
    IF jsonb_typeof(p_step) IS DISTINCT FROM 'object' THEN
        RETURN 'a step must be an object';
    END IF;
    IF jsonb_typeof(p_step -> 'name') IS DISTINCT FROM 'string' THEN
        RETURN 'each step needs a name (a string)';
    END IF;
    name := p_step ->> 'name';
    kind := p_step ->> 'kind';
    IF kind IS NULL OR NOT kinds ? kind THEN
        RETURN format('''%s'': unknown kind %s (shell, docker, http, noop)', name,
                      coalesce(to_jsonb(kind)::text, 'missing'));
    END IF;
    keys := common || (kinds -> kind);
    FOR k, v IN SELECT * FROM jsonb_each(p_step) LOOP
        IF NOT keys ? k THEN
            RETURN format('''%s'' (%s): unknown key ''%s'' (a %s step has: %s)', name, kind, k, kind,
                          (SELECT string_agg(x, ', ' ORDER BY x) FROM jsonb_object_keys(keys) AS o(x)));
        END IF;
        problem := value_problem(keys ->> k, v);
        IF problem IS NOT NULL THEN
            RETURN format('''%s'' (%s): %s %s', name, kind, k, problem);
        END IF;
    END LOOP;
    FOR k IN SELECT jsonb_array_elements_text(required -> kind) LOOP
        IF NOT p_step ? k THEN
            RETURN format('''%s'' (%s): missing key ''%s''', name, kind, k);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- Applies a template spec (JSON of a templates/*.yaml file, without its name). Returns its version:
-- a new one when the spec differs from the newest stored version, the newest one when it is the
-- same. Every key of the spec and of each step is checked.
CREATE OR REPLACE FUNCTION runlane.apply_template(p_name text, p_spec jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    top constant jsonb := '{"description": "string", "lane": "string", "priority": "integer", "timeout_ms": "count",
                            "max_attempts": "count", "backoff_base_ms": "count", "max_crashes": "count",
                            "params": "any", "steps": "any"}';
    latest run_templates;
    k text;
    v jsonb;
    problem text;
    i integer := 0;
    ver integer;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid template name ''%'': use lowercase letters, digits, ''.'', ''_'' and ''-''', p_name
            USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_spec) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'template ''%'': spec must be a JSON object', p_name USING ERRCODE = 'RL422';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p_spec) LOOP
        IF NOT top ? k THEN
            RAISE EXCEPTION 'template ''%'': unknown key ''%'' (a template has: %)', p_name, k,
                (SELECT string_agg(x, ', ' ORDER BY x) FROM jsonb_object_keys(top) AS o(x)) USING ERRCODE = 'RL422';
        END IF;
        problem := value_problem(top ->> k, v);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'template ''%'': % %', p_name, k, problem USING ERRCODE = 'RL422';
        END IF;
    END LOOP;
    IF p_spec ? 'params' AND (jsonb_typeof(p_spec -> 'params') IS DISTINCT FROM 'object'
                              OR p_spec -> 'params' -> 'type' IS DISTINCT FROM '"object"') THEN
        RAISE EXCEPTION 'template ''%'': params must be a JSON Schema with type: object', p_name USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_spec -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(p_spec -> 'steps') = 0 THEN
        RAISE EXCEPTION 'template ''%'': steps must be a non-empty list', p_name USING ERRCODE = 'RL422';
    END IF;
    FOR v IN SELECT jsonb_array_elements(p_spec -> 'steps') LOOP
        problem := step_problem(v);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'template ''%'': step %: %', p_name, i, problem USING ERRCODE = 'RL422';
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
    ver := coalesce(latest.version, 0) + 1;
    INSERT INTO run_templates (name, version, description, params_schema, steps, default_lane, default_priority,
                               timeout_ms, max_attempts, backoff_base_ms, max_crashes, requires, spec)
    VALUES (p_name, ver, coalesce(p_spec ->> 'description', ''), coalesce(p_spec -> 'params', '{"type": "object"}'),
            p_spec -> 'steps', coalesce(p_spec ->> 'lane', 'C'), coalesce((p_spec ->> 'priority')::integer, 0),
            coalesce((p_spec ->> 'timeout_ms')::integer, 3600000), coalesce((p_spec ->> 'max_attempts')::integer, 1),
            coalesce((p_spec ->> 'backoff_base_ms')::integer, 1000), coalesce((p_spec ->> 'max_crashes')::integer, 3),
            CASE WHEN jsonb_path_exists(p_spec -> 'steps', '$[*] ? (@.kind == "docker")') THEN '{docker}'::text[]
                 ELSE '{}'::text[] END,
            p_spec);
    RETURN ver;
EXCEPTION
    WHEN check_violation OR invalid_text_representation OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'template ''%'': %', p_name, SQLERRM USING ERRCODE = 'RL422';
END $$;

-- Levenshtein distance (insertions, deletions, substitutions), for "did you mean".
CREATE FUNCTION runlane.edit_distance(a text, b text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    prev integer[];
    cur integer[];
    i integer;
    j integer;
BEGIN
    IF a = b THEN RETURN 0; END IF;
    prev := ARRAY(SELECT generate_series(0, length(b)));
    FOR i IN 1 .. length(a) LOOP
        cur := ARRAY[i];
        FOR j IN 1 .. length(b) LOOP
            cur := cur || least(prev[j + 1] + 1, cur[j] + 1,
                                prev[j] + CASE WHEN substr(a, i, 1) = substr(b, j, 1) THEN 0 ELSE 1 END);
        END LOOP;
        prev := cur;
    END LOOP;
    RETURN prev[length(b) + 1];
END $$;

-- An unknown template named, with up to three applied names close to it.
CREATE FUNCTION runlane.unknown_template(p_template text) RETURNS text
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT format('unknown template ''%s''', p_template) || coalesce(
        (SELECT ' (did you mean ' || string_agg(format('''%s''', name), ', ' ORDER BY d, name) || '?)'
         FROM (SELECT name, d
               FROM (SELECT name, edit_distance(name, p_template) AS d
                     FROM (SELECT DISTINCT name FROM run_templates) t) s
               WHERE d <= greatest(2, length(p_template) / 3)
                  OR (length(p_template) >= 3 AND name LIKE replace(replace(p_template, '%', ''), '_', '\_') || '%')
               ORDER BY d, name
               LIMIT 3) c),
        CASE WHEN EXISTS (SELECT 1 FROM run_templates) THEN ' (no applied template has a similar name)'
             ELSE ' (no template has been applied yet)' END)
$$;

-- Enqueues one run of the newest version of a template, as in 0002, and: params are bounded
-- (1 MiB in all, 256 KiB a value, as JSON text); an unknown template is answered with close names.
CREATE OR REPLACE FUNCTION runlane.enqueue_run(
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
    big record;
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
        RAISE EXCEPTION '%', unknown_template(p_template) USING ERRCODE = 'RL404';
    END IF;
    lane_name := coalesce(p_lane, t.default_lane);
    PERFORM check_lane(lane_name);
    IF octet_length(p_params::text) > 1024 * 1024 THEN
        RAISE EXCEPTION 'params are % bytes, over the 1 MiB limit', octet_length(p_params::text)
            USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(p_params) = 'object' THEN
        SELECT k, octet_length(p_params ->> k) AS n INTO big FROM jsonb_object_keys(p_params) AS o(k)
        WHERE octet_length(p_params ->> k) > 256 * 1024 ORDER BY k LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'param ''%'' is % bytes, over the 256 KiB limit for one value', big.k, big.n
                USING ERRCODE = 'RL422';
        END IF;
    END IF;
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

REVOKE EXECUTE ON FUNCTION runlane.value_problem(text, jsonb), runlane.step_problem(jsonb),
                           runlane.edit_distance(text, text), runlane.unknown_template(text)
    FROM PUBLIC;
