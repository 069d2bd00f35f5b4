-- Params schemas that mean what they say, and dry runs.
--
-- A template's params schema may use these JSON Schema keywords, and every way in (enqueue_run,
-- enqueue_runs, dry_run_enqueue) enforces each of them: type, required, properties,
-- additionalProperties, enum, const, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum,
-- minLength, maxLength, items, minItems, maxItems, and default (filled in at enqueue). description,
-- title, examples and secret are annotations. apply_template refuses any other keyword, naming it and
-- where it is: a keyword nobody enforces is never silently ignored.
--
-- The helpers below have no SET search_path: they are called per run and per param from functions
-- that set it, a SET clause costs every call, and they name the schema where they call each other.

-- The param at `p_key` under the param `p_param` (NULL: the root): `db`, `db.port`.
CREATE FUNCTION runlane.param_path(p_param text, p_key text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_param || '.', '') || p_key
$$;

-- Why a regular expression cannot be compiled, or NULL.
CREATE FUNCTION runlane.regex_problem(p_pattern text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM '' ~ p_pattern;
    RETURN NULL;
EXCEPTION WHEN invalid_regular_expression THEN
    RETURN SQLERRM;
END $$;

-- Every violation of one value against one schema (the keywords above), the value being the param
-- `p_param` (NULL: the params object itself). A value of the wrong type gets only that message. The
-- value of a secret param is never repeated in a message.
CREATE FUNCTION runlane.value_violations(p_schema jsonb, p_value jsonb, p_param text, p_secret boolean)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    problems text[] := '{}';
    got text := jsonb_typeof(p_value);
    who text := CASE WHEN p_param IS NULL THEN 'params' ELSE format('param ''%s''', p_param) END;
    was text := CASE WHEN p_secret THEN '' ELSE ', got ' || left(p_value::text, 100) END;
    want jsonb;
    sub jsonb;
    k text;
    n numeric;
    len integer;
    i integer;
BEGIN
    IF p_schema ? 'type' THEN
        want := p_schema -> 'type';
        IF jsonb_typeof(want) = 'string' THEN
            want := jsonb_build_array(want);
        END IF;
        IF NOT (want ? got OR (got = 'number' AND want ? 'integer' AND p_value::numeric = trunc(p_value::numeric))) THEN
            RETURN ARRAY[format('%s must be %s, got %s', who,
                (SELECT string_agg(t, ' or ') FROM jsonb_array_elements_text(want) AS w(t)), got)];
        END IF;
    END IF;
    IF p_schema ? 'enum' AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_schema -> 'enum') AS e(v) WHERE e.v = p_value) THEN
        problems := problems || format('%s must be one of %s%s', who,
            (SELECT string_agg(e.v::text, ', ') FROM jsonb_array_elements(p_schema -> 'enum') AS e(v)), was);
    END IF;
    IF p_schema ? 'const' AND p_schema -> 'const' <> p_value THEN
        problems := problems || format('%s must be %s%s', who, p_schema -> 'const', was);
    END IF;
    IF got = 'string' THEN
        IF p_schema ? 'pattern' AND (p_value #>> '{}') !~ (p_schema ->> 'pattern') THEN
            problems := problems || format('%s must match the pattern ''%s''%s', who, p_schema ->> 'pattern', was);
        END IF;
        IF p_schema ?| '{minLength,maxLength}' THEN
            len := length(p_value #>> '{}');
            IF len < (p_schema ->> 'minLength')::integer THEN
                problems := problems || format('%s must be at least %s characters long, got %s', who,
                                               p_schema -> 'minLength', len);
            END IF;
            IF len > (p_schema ->> 'maxLength')::integer THEN
                problems := problems || format('%s must be at most %s characters long, got %s', who,
                                               p_schema -> 'maxLength', len);
            END IF;
        END IF;
    ELSIF got = 'number' THEN
        IF p_schema ?| '{minimum,maximum,exclusiveMinimum,exclusiveMaximum}' THEN
            n := p_value::numeric;
            IF n < (p_schema ->> 'minimum')::numeric THEN
                problems := problems || format('%s must be at least %s%s', who, p_schema -> 'minimum', was);
            END IF;
            IF n > (p_schema ->> 'maximum')::numeric THEN
                problems := problems || format('%s must be at most %s%s', who, p_schema -> 'maximum', was);
            END IF;
            IF n <= (p_schema ->> 'exclusiveMinimum')::numeric THEN
                problems := problems || format('%s must be greater than %s%s', who, p_schema -> 'exclusiveMinimum', was);
            END IF;
            IF n >= (p_schema ->> 'exclusiveMaximum')::numeric THEN
                problems := problems || format('%s must be less than %s%s', who, p_schema -> 'exclusiveMaximum', was);
            END IF;
        END IF;
    ELSIF got = 'array' THEN
        len := jsonb_array_length(p_value);
        IF len < (p_schema ->> 'minItems')::integer THEN
            problems := problems || format('%s must have at least %s items, got %s', who, p_schema -> 'minItems', len);
        END IF;
        IF len > (p_schema ->> 'maxItems')::integer THEN
            problems := problems || format('%s must have at most %s items, got %s', who, p_schema -> 'maxItems', len);
        END IF;
        IF p_schema ? 'items' THEN
            FOR i, sub IN SELECT o - 1, e FROM jsonb_array_elements(p_value) WITH ORDINALITY AS x(e, o) LOOP
                problems := problems || runlane.value_violations(p_schema -> 'items', sub,
                                                                 format('%s[%s]', p_param, i), p_secret);
            END LOOP;
        END IF;
    ELSIF got = 'object' THEN
        FOR k IN SELECT jsonb_array_elements_text(p_schema -> 'required') LOOP
            IF NOT p_value ? k THEN
                problems := problems || format('missing required param ''%s''', runlane.param_path(p_param, k));
            END IF;
        END LOOP;
        FOR k, sub IN SELECT * FROM jsonb_each(p_schema -> 'properties') LOOP
            IF p_value ? k THEN
                problems := problems || runlane.value_violations(sub, p_value -> k, runlane.param_path(p_param, k),
                    p_secret OR (p_param IS NULL AND sub @> '{"secret": true}'));
            END IF;
        END LOOP;
        IF p_schema ? 'additionalProperties' AND p_schema -> 'additionalProperties' <> 'true' THEN
            FOR k IN SELECT x FROM jsonb_object_keys(p_value) AS o(x)
                     WHERE NOT coalesce(p_schema -> 'properties', '{}') ? x ORDER BY 1 LOOP
                IF p_schema -> 'additionalProperties' = 'false' THEN
                    problems := problems || format('unknown param ''%s''', runlane.param_path(p_param, k));
                ELSE
                    problems := problems || runlane.value_violations(p_schema -> 'additionalProperties', p_value -> k,
                                                                     runlane.param_path(p_param, k), p_secret);
                END IF;
            END LOOP;
        END IF;
    END IF;
    RETURN problems;
END $$;

-- The value with the defaults of absent params filled in, at every depth the schema describes (a
-- default filled in gets the defaults inside it too). Only absent params get a default, never a null.
CREATE FUNCTION runlane.with_defaults(p_schema jsonb, p_value jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    nested constant text[] := '{properties,items,additionalProperties}';
    k text;
    sub jsonb;
    v jsonb;
BEGIN
    IF jsonb_typeof(p_value) = 'object' THEN
        FOR k, sub IN SELECT * FROM jsonb_each(p_schema -> 'properties') LOOP
            v := p_value -> k;
            IF v IS NULL AND sub ? 'default' THEN
                v := sub -> 'default';
                p_value := p_value || jsonb_build_object(k, v);
            END IF;
            IF v IS NOT NULL AND jsonb_typeof(v) IN ('object', 'array') AND sub ?| nested THEN
                p_value := p_value || jsonb_build_object(k, runlane.with_defaults(sub, v));
            END IF;
        END LOOP;
        sub := p_schema -> 'additionalProperties';
        IF jsonb_typeof(sub) = 'object' AND sub ?| nested THEN
            FOR k IN SELECT x FROM jsonb_object_keys(p_value) AS o(x)
                     WHERE NOT coalesce(p_schema -> 'properties', '{}') ? x LOOP
                p_value := p_value || jsonb_build_object(k, runlane.with_defaults(sub, p_value -> k));
            END LOOP;
        END IF;
    ELSIF jsonb_typeof(p_value) = 'array' AND jsonb_array_length(p_value) > 0
          AND jsonb_typeof(p_schema -> 'items') = 'object' AND (p_schema -> 'items') ?| nested THEN
        p_value := (SELECT jsonb_agg(runlane.with_defaults(p_schema -> 'items', x.e) ORDER BY x.o)
                    FROM jsonb_array_elements(p_value) WITH ORDINALITY AS x(e, o));
    END IF;
    RETURN p_value;
END $$;

-- Params as a run stores them (defaults filled in) and every violation of the schema. A schema that
-- declares nothing ({"type": "object"}, the default) is answered at once: the bulk enqueue's no-op
-- runs pay for no walk.
CREATE FUNCTION runlane.check_params(p_schema jsonb, p_params jsonb, OUT params jsonb, OUT problems text[])
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    params := p_params;
    IF p_params IS NULL OR jsonb_typeof(p_params) <> 'object' THEN
        problems := ARRAY[format('params must be a JSON object, got %s', coalesce(jsonb_typeof(p_params), 'null'))];
    ELSIF NOT (p_schema ?| '{properties,required,additionalProperties}') THEN
        problems := '{}';
    ELSE
        params := runlane.with_defaults(p_schema, p_params);
        problems := runlane.value_violations(p_schema, params, NULL, false);
    END IF;
END $$;

-- As in 0002, with every keyword above: the violations of the params with their defaults filled in.
CREATE OR REPLACE FUNCTION runlane.param_violations(p_schema jsonb, p_params jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = runlane, pg_temp AS $$
    SELECT (runlane.check_params(p_schema, p_params)).problems
$$;

-- The names of a schema's secret params (`"secret": true` on a top-level property), sorted.
-- plpgsql, not sql: a SQL function with a subquery that is not inlined is planned again at every
-- call (25 µs of each enqueue_run), a plpgsql one once per session.
CREATE FUNCTION runlane.secret_param_names(p_schema jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(p_schema -> 'properties') IS DISTINCT FROM 'object' THEN
        RETURN '{}';
    END IF;
    RETURN ARRAY(SELECT k FROM jsonb_each(p_schema -> 'properties') AS e(k, v)
                 WHERE v -> 'secret' = 'true'::jsonb ORDER BY k);
END $$;

-- The first thing in one (sub)schema that runlane would not enforce as written, or NULL: a keyword
-- outside the list, a keyword's value of the wrong shape, a keyword the schema's own type can never
-- meet (a pattern on an integer), a default that breaks its own schema. `p_param` names where it is
-- (NULL: the root of params); `p_top` is true for a top-level param, the only place `secret` works
-- (the worker masks top-level params by name).
CREATE FUNCTION runlane.schema_problem(p_schema jsonb, p_param text, p_top boolean) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    types constant text[] := '{object,array,string,number,integer,boolean,"null"}';
    enforced constant text := 'type, required, properties, additionalProperties, enum, const, pattern, minimum, maximum, '
                              'exclusiveMinimum, exclusiveMaximum, minLength, maxLength, items, minItems, maxItems, '
                              'default; annotations: description, title, examples, secret';
    -- The type of value each keyword constrains (a value of another type passes it).
    constrains constant jsonb := '{"pattern": "string", "minLength": "string", "maxLength": "string",
        "minimum": "number", "maximum": "number", "exclusiveMinimum": "number", "exclusiveMaximum": "number",
        "items": "array", "minItems": "array", "maxItems": "array",
        "properties": "object", "required": "object", "additionalProperties": "object"}';
    at text := CASE WHEN p_param IS NULL THEN 'at the root of params'
                    ELSE format('in the schema of param ''%s''', p_param) END;
    declared text[];
    k text;
    v jsonb;
    problem text;
    problems text[];
BEGIN
    IF jsonb_typeof(p_schema) IS DISTINCT FROM 'object' THEN
        RETURN format('the schema of param ''%s'' must be an object, got %s', p_param,
                      coalesce(jsonb_typeof(p_schema), 'nothing'));
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p_schema) ORDER BY 1 LOOP
        problem := CASE
            WHEN k = 'type' THEN
                CASE WHEN NOT (jsonb_typeof(v) = 'string' AND (v #>> '{}') = ANY (types)
                               OR jsonb_typeof(v) = 'array' AND jsonb_array_length(v) > 0
                                  AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(v) AS e(t)
                                                  WHERE jsonb_typeof(e.t) <> 'string' OR NOT (e.t #>> '{}') = ANY (types)))
                     THEN format('''type'' %s must be one of %s, or a list of them', at, array_to_string(types, ', ')) END
            WHEN k = 'properties' THEN
                CASE WHEN jsonb_typeof(v) <> 'object' THEN format('''properties'' %s must be an object of schemas', at) END
            WHEN k = 'required' THEN
                CASE WHEN jsonb_typeof(v) <> 'array'
                          OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) AS e(x) WHERE jsonb_typeof(e.x) <> 'string')
                     THEN format('''required'' %s must be a list of param names', at) END
            WHEN k = 'additionalProperties' THEN
                CASE WHEN jsonb_typeof(v) NOT IN ('boolean', 'object')
                     THEN format('''additionalProperties'' %s must be true, false or a schema', at) END
            WHEN k = 'enum' THEN
                CASE WHEN jsonb_typeof(v) <> 'array' OR jsonb_array_length(v) = 0
                     THEN format('''enum'' %s must be a non-empty list of values', at) END
            WHEN k = 'pattern' THEN
                CASE WHEN jsonb_typeof(v) <> 'string' THEN format('''pattern'' %s must be a string', at)
                     ELSE (SELECT format('''pattern'' %s is not a valid regular expression: %s', at, e)
                           FROM runlane.regex_problem(v #>> '{}') AS e WHERE e IS NOT NULL) END
            WHEN k IN ('minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum') THEN
                CASE WHEN jsonb_typeof(v) <> 'number' THEN format('''%s'' %s must be a number', k, at) END
            WHEN k IN ('minLength', 'maxLength', 'minItems', 'maxItems') THEN
                CASE WHEN jsonb_typeof(v) <> 'number' OR v::text !~ '^[0-9]{1,9}$'
                     THEN format('''%s'' %s must be a whole number >= 0', k, at) END
            WHEN k = 'items' THEN
                CASE WHEN jsonb_typeof(v) <> 'object' THEN format('''items'' %s must be a schema (an object)', at) END
            WHEN k = 'default' THEN
                CASE WHEN p_param IS NULL THEN format('''default'' %s has no effect (give each param its own)', at) END
            WHEN k = 'const' THEN NULL
            WHEN k IN ('description', 'title') THEN
                CASE WHEN jsonb_typeof(v) <> 'string' THEN format('''%s'' %s must be a string', k, at) END
            WHEN k = 'examples' THEN
                CASE WHEN jsonb_typeof(v) <> 'array' THEN format('''examples'' %s must be a list', at) END
            WHEN k = 'secret' THEN
                CASE WHEN jsonb_typeof(v) <> 'boolean' THEN format('''secret'' %s must be true or false', at)
                     WHEN NOT p_top AND v = 'true'
                         THEN format('''secret'' %s: only top-level params can be secret (their values are masked by name)', at) END
            ELSE format('unsupported keyword ''%s'' %s (runlane enforces %s)', k, at, enforced)
        END;
        IF problem IS NOT NULL THEN
            RETURN problem;
        END IF;
    END LOOP;
    IF p_param IS NULL AND p_schema ?| '{enum,const,pattern,minimum,maximum,exclusiveMinimum,exclusiveMaximum,minLength,maxLength,items,minItems,maxItems}' THEN
        RETURN format('%s only type, properties, required, additionalProperties and annotations are supported (found %s)', at,
                      (SELECT string_agg(x, ', ' ORDER BY x) FROM jsonb_object_keys(p_schema) AS o(x)
                       WHERE x NOT IN ('type', 'properties', 'required', 'additionalProperties', 'description', 'title',
                                       'examples', 'secret')));
    END IF;
    IF p_schema ? 'type' THEN
        declared := CASE jsonb_typeof(p_schema -> 'type') WHEN 'string' THEN ARRAY[p_schema ->> 'type']
                         ELSE ARRAY(SELECT jsonb_array_elements_text(p_schema -> 'type')) END;
        SELECT format('''%s'' %s can never apply: it constrains %s values, and the param''s type is %s', c.k, at,
                      c.t, array_to_string(declared, ' or '))
        INTO problem
        FROM jsonb_each_text(constrains) AS c(k, t)
        WHERE p_schema ? c.k AND NOT (c.t = ANY (declared) OR (c.t = 'number' AND 'integer' = ANY (declared)))
        ORDER BY c.k LIMIT 1;
        IF problem IS NOT NULL THEN
            RETURN problem;
        END IF;
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p_schema -> 'properties') ORDER BY 1 LOOP
        problem := runlane.schema_problem(v, runlane.param_path(p_param, k), p_param IS NULL);
        IF problem IS NOT NULL THEN
            RETURN problem;
        END IF;
    END LOOP;
    IF jsonb_typeof(p_schema -> 'additionalProperties') = 'object' THEN
        problem := runlane.schema_problem(p_schema -> 'additionalProperties', runlane.param_path(p_param, '*'), false);
        IF problem IS NOT NULL THEN
            RETURN problem;
        END IF;
    END IF;
    IF p_schema ? 'items' THEN
        problem := runlane.schema_problem(p_schema -> 'items', coalesce(p_param, '') || '[]', false);
        IF problem IS NOT NULL THEN
            RETURN problem;
        END IF;
    END IF;
    IF p_param IS NOT NULL AND p_schema ? 'default' THEN
        problems := runlane.value_violations(p_schema, p_schema -> 'default', p_param,
                                             p_top AND p_schema @> '{"secret": true}');
        IF cardinality(problems) > 0 THEN
            RETURN format('the default of param ''%s'' breaks its own schema: %s', p_param, array_to_string(problems, '; '));
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- The first reason a template's params schema cannot be stored, or NULL.
CREATE FUNCTION runlane.params_schema_problem(p_schema jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(p_schema) IS DISTINCT FROM 'object' OR p_schema -> 'type' IS DISTINCT FROM '"object"' THEN
        RETURN 'params must be a JSON Schema with type: object';
    END IF;
    RETURN runlane.schema_problem(p_schema, NULL, false);
END $$;

-- As in 0010, and: the params schema is checked keyword by keyword (params_schema_problem), before
-- anything else about the spec is compared or stored.
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
    IF p_spec ? 'params' THEN
        problem := params_schema_problem(p_spec -> 'params');
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'template ''%'': %', p_name, problem USING ERRCODE = 'RL422';
        END IF;
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

-- Why runs of a stored template version cannot be enqueued because of its params schema, or NULL: a
-- version stored before this migration may use a keyword runlane does not enforce, and it is refused
-- rather than half-enforced. The default schema needs no walk.
CREATE FUNCTION runlane.stored_schema_problem(p_template runlane.run_templates) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('template ''%s'' version %s has a params schema runlane cannot enforce (%s): apply a corrected version',
                  p_template.name, p_template.version, p)
    FROM runlane.params_schema_problem(p_template.params_schema) AS p
    WHERE p_template.params_schema <> '{"type": "object"}' AND p IS NOT NULL
$$;

-- What enqueue_run checks before it writes, in its order, shared with dry_run_enqueue so that both
-- answer alike: the newest version of the template, the lane, params (bounded, their defaults filled
-- in, checked against the schema), priority and session. Returns the template, the lane and the
-- params as the run would store them.
CREATE FUNCTION runlane.check_enqueue(p_template text, p_params jsonb, p_lane text, p_priority integer,
                                      p_session_id uuid, OUT tpl runlane.run_templates, OUT run_lane text,
                                      OUT run_params jsonb)
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    big record;
    problem text;
    problems text[];
BEGIN
    SELECT * INTO tpl FROM run_templates WHERE name = p_template ORDER BY version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', unknown_template(p_template) USING ERRCODE = 'RL404';
    END IF;
    run_lane := coalesce(p_lane, tpl.default_lane);
    PERFORM check_lane(run_lane);
    problem := stored_schema_problem(tpl);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'RL422';
    END IF;
    SELECT c.params, c.problems INTO run_params, problems FROM check_params(tpl.params_schema, p_params) AS c;
    -- The bounds hold for the params as stored, defaults included (as in enqueue_runs).
    IF octet_length(run_params::text) > 1024 * 1024 THEN
        RAISE EXCEPTION 'params are % bytes, over the 1 MiB limit', octet_length(run_params::text)
            USING ERRCODE = 'RL422';
    END IF;
    IF jsonb_typeof(run_params) = 'object' THEN
        SELECT k, octet_length(run_params ->> k) AS n INTO big FROM jsonb_object_keys(run_params) AS o(k)
        WHERE octet_length(run_params ->> k) > 256 * 1024 ORDER BY k LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'param ''%'' is % bytes, over the 256 KiB limit for one value', big.k, big.n
                USING ERRCODE = 'RL422';
        END IF;
    END IF;
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
END $$;

-- As in 0012, with its checks in check_enqueue: the run stores its params with their defaults.
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
    checked record;
    t run_templates;
    new_id uuid;
    due boolean := coalesce(p_run_at, now()) <= now();
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN new_id;
        END IF;
    END IF;
    SELECT * INTO checked FROM check_enqueue(p_template, p_params, p_lane, p_priority, p_session_id);
    t := checked.tpl;

    INSERT INTO runs (template, template_version, lane, priority, status, params, secret_params, steps, requires,
                      timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                      session_id, next_seq)
    VALUES (t.name, t.version, checked.run_lane, coalesce(p_priority, t.default_priority),
            CASE WHEN due THEN 'queued' ELSE 'scheduled' END, checked.run_params,
            secret_param_names(t.params_schema), t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms,
            t.max_crashes, coalesce(p_run_at, now()), p_idempotency_key, p_session_id, 2)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        -- A concurrent enqueue with the same key won the insert.
        SELECT id INTO new_id FROM runs WHERE idempotency_key = p_idempotency_key;
        RETURN new_id;
    END IF;
    INSERT INTO run_events (run_id, seq, attempt, kind, data)
    VALUES (new_id, 1, 0, 'run.queued', jsonb_build_object('template', t.name, 'version', t.version,
            'lane', checked.run_lane, 'by', session_user));
    INSERT INTO lane_counts (lane, status, n)
    VALUES (checked.run_lane, CASE WHEN due THEN 'queued' ELSE 'scheduled' END, 1);
    IF due THEN
        PERFORM pg_notify('runlane_lane_' || lower(checked.run_lane), '');
    END IF;
    RETURN new_id;
END $$;

-- As in 0014, and: params are stored with their defaults filled in and checked against every keyword
-- of the schema. Each template named is read once (its newest version), not once per run; runs of a
-- template whose schema declares nothing skip the walk.
CREATE OR REPLACE FUNCTION runlane.enqueue_runs(
    p_templates        text[],
    p_params           jsonb[],
    p_lanes            text[],
    p_priorities       integer[],
    p_run_ats          timestamptz[],
    p_idempotency_keys text[],
    p_session_ids      uuid[]
) RETURNS TABLE (item integer, run_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    n integer := coalesce(cardinality(p_templates), 0);
    used run_templates[];
    u run_templates;
    walked text[] := '{}';      -- templates whose schema has something to fill in or check
    unusable jsonb := '{}';     -- template -> why its stored schema cannot be enforced
    batch enqueue_item[];
    bad record;
    lanes_woken text[];
    l text;
BEGIN
    IF n > 100000 THEN
        RAISE EXCEPTION 'enqueue_runs takes at most 100000 runs a call, got %', n USING ERRCODE = 'RL422';
    END IF;
    IF n <> ANY (ARRAY[cardinality(p_params), cardinality(p_lanes), cardinality(p_priorities), cardinality(p_run_ats),
                       cardinality(p_idempotency_keys), cardinality(p_session_ids)]) THEN
        RAISE EXCEPTION 'enqueue_runs: every array needs % elements', n USING ERRCODE = 'RL422';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;

    -- The newest version of each template named, once.
    used := ARRAY(SELECT t FROM run_templates t
                  WHERE (t.name, t.version) IN (SELECT x.name, max(x.version) FROM run_templates x
                                                WHERE x.name = ANY (p_templates) GROUP BY x.name));
    FOREACH u IN ARRAY used LOOP
        IF stored_schema_problem(u) IS NOT NULL THEN
            unusable := unusable || jsonb_build_object(u.name, stored_schema_problem(u));
        ELSIF u.params_schema ?| '{properties,required,additionalProperties}' THEN
            walked := walked || u.name;
        END IF;
    END LOOP;

    -- Each position against its template (defaults filled in), and the run its key already names.
    batch := ARRAY(
        SELECT ROW(i.item::integer, i.template, t.version,
                   CASE WHEN i.template = ANY (walked) THEN with_defaults(t.params_schema, coalesce(i.params, '{}'))
                        ELSE coalesce(i.params, '{}') END,
                   coalesce(i.lane, t.default_lane), coalesce(i.priority, t.default_priority), coalesce(i.run_at, now()),
                   i.key, i.session,
                   CASE WHEN i.key IS NOT NULL THEN (SELECT r.id FROM runs r WHERE r.idempotency_key = i.key) END,
                   NULL)::enqueue_item
        FROM unnest(p_templates, p_params, p_lanes, p_priorities, p_run_ats, p_idempotency_keys, p_session_ids)
             WITH ORDINALITY AS i(template, params, lane, priority, run_at, key, session, item)
        LEFT JOIN unnest(used) t ON t.name = i.template
        ORDER BY i.item);

    SELECT v.item, v.code, v.message INTO bad FROM (
        SELECT b.item,
               CASE WHEN b.template_version IS NULL
                      OR (b.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id))
                    THEN 'RL404' ELSE 'RL422' END AS code,
               CASE WHEN b.template_version IS NULL THEN unknown_template(b.template)
                    WHEN b.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id)
                        THEN format('unknown session %s', b.session_id)
                    WHEN b.lane IS NULL OR b.lane NOT IN ('A', 'B', 'C', 'D')
                        THEN format('unknown lane ''%s'' (lanes: %s)', coalesce(b.lane, 'NULL'), lane_names())
                    WHEN b.priority NOT BETWEEN -100 AND 100
                        THEN format('priority %s is out of range (-100 to 100)', b.priority)
                    WHEN unusable ? b.template THEN unusable ->> b.template
                    WHEN octet_length(b.params::text) > 1024 * 1024
                        THEN format('params are %s bytes, over the 1 MiB limit', octet_length(b.params::text))
                    WHEN jsonb_typeof(b.params) = 'object' AND EXISTS (
                            SELECT 1 FROM jsonb_object_keys(b.params) AS o(k) WHERE octet_length(b.params ->> k) > 256 * 1024)
                        THEN (SELECT format('param ''%s'' is %s bytes, over the 256 KiB limit for one value', k,
                                            octet_length(b.params ->> k))
                              FROM jsonb_object_keys(b.params) AS o(k)
                              WHERE octet_length(b.params ->> k) > 256 * 1024 ORDER BY k LIMIT 1)
                    WHEN jsonb_typeof(b.params) <> 'object'
                        THEN format('invalid params for template ''%s'': params must be a JSON object, got %s', b.template,
                                    jsonb_typeof(b.params))
                    WHEN b.template = ANY (walked)
                        THEN (SELECT format('invalid params for template ''%s'': %s', b.template, array_to_string(pv.v, '; '))
                              FROM (SELECT value_violations(t.params_schema, b.params, NULL, false) AS v
                                    FROM unnest(used) t WHERE t.name = b.template) pv
                              WHERE cardinality(pv.v) > 0)
               END AS message
        FROM unnest(batch) b
        WHERE b.existing IS NULL
    ) v
    WHERE v.message IS NOT NULL
    ORDER BY v.item
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run #%: %', bad.item, bad.message USING ERRCODE = bad.code;
    END IF;

    -- One new run per key (the first position naming it) and per position without a key.
    batch := ARRAY(
        SELECT ROW(b.item, b.template, b.template_version, b.params, b.lane, b.priority, b.run_at, b.idempotency_key,
                   b.session_id, b.existing,
                   CASE WHEN b.existing IS NULL AND (b.idempotency_key IS NULL OR b.item = min(b.item) OVER
                                                     (PARTITION BY b.idempotency_key))
                        THEN uuid_v7() END)::enqueue_item
        FROM unnest(batch) b ORDER BY b.item);
    WITH templates AS MATERIALIZED (
        SELECT t.*, secret_param_names(t.params_schema) AS secrets FROM unnest(used) t
    ), inserted AS (
        INSERT INTO runs (id, template, template_version, lane, priority, status, params, secret_params, steps,
                          requires, timeout_ms, max_attempts, backoff_base_ms, max_crashes, run_at, idempotency_key,
                          session_id, next_seq)
        SELECT b.new_id, t.name, t.version, b.lane, b.priority,
               CASE WHEN b.run_at <= now() THEN 'queued' ELSE 'scheduled' END, b.params, t.secrets,
               t.steps, t.requires, t.timeout_ms, t.max_attempts, t.backoff_base_ms, t.max_crashes, b.run_at,
               b.idempotency_key, b.session_id, 2
        FROM unnest(batch) b JOIN templates t ON t.name = b.template
        WHERE b.new_id IS NOT NULL
        ORDER BY b.item
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, template, template_version, lane, run_at, status
    ), counted AS (
        INSERT INTO lane_counts (lane, status, n) SELECT i.lane, i.status, count(*) FROM inserted i GROUP BY 1, 2
    ), logged AS (
        INSERT INTO run_events (run_id, seq, attempt, kind, data)
        SELECT i.id, 1, 0, 'run.queued', jsonb_build_object('template', i.template, 'version', i.template_version,
                                                           'lane', i.lane, 'by', session_user)
        FROM inserted i
    )
    SELECT array_agg(DISTINCT i.lane) FILTER (WHERE i.run_at <= now()) INTO lanes_woken FROM inserted i;
    FOREACH l IN ARRAY coalesce(lanes_woken, '{}') LOOP
        PERFORM pg_notify('runlane_lane_' || lower(l), '');
    END LOOP;

    RETURN QUERY
    SELECT b.item, coalesce(b.existing, k.id, b.new_id)
    FROM unnest(batch) b
    -- A position sharing a key with an earlier one, or a key a concurrent enqueue took meanwhile.
    LEFT JOIN runs k ON b.idempotency_key IS NOT NULL AND k.idempotency_key = b.idempotency_key
    ORDER BY b.item;
END $$;

-- What an enqueue would do, written nowhere: see dry_run_enqueue.
CREATE TYPE runlane.enqueue_preview AS (
    existing_run  uuid,        -- the run the idempotency key already names: enqueue would return it
    template      text,
    version       integer,
    lane          text,
    priority      integer,
    status        text,        -- queued, or scheduled (due later); an existing run's own status
    run_at        timestamptz,
    params        jsonb,       -- defaults filled in, secret values as ***
    secret_params text[],
    requires      text[],
    timeout_ms    integer,
    max_attempts  integer,
    steps         jsonb        -- as frozen into the run; the caller renders them with these params
);

-- Checks a run exactly as enqueue_run would (the same errors, in the same order) and returns what it
-- would enqueue, writing nothing (STABLE: PostgreSQL refuses a write here). If the idempotency key
-- names a run, enqueue_run would return that run: it is described instead.
CREATE FUNCTION runlane.dry_run_enqueue(
    p_template        text,
    p_params          jsonb DEFAULT '{}',
    p_lane            text DEFAULT NULL,
    p_priority        integer DEFAULT NULL,
    p_run_at          timestamptz DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_session_id      uuid DEFAULT NULL
) RETURNS runlane.enqueue_preview
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    r runs;
    checked record;
    t run_templates;
    secrets text[];
    due_at timestamptz := coalesce(p_run_at, now());
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO r FROM runs WHERE idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN ROW(r.id, r.template, r.template_version, r.lane, r.priority, r.status, r.run_at,
                       mask_secrets(r.params, r.secret_params), r.secret_params, r.requires, r.timeout_ms,
                       r.max_attempts, r.steps)::enqueue_preview;
        END IF;
    END IF;
    SELECT * INTO checked FROM check_enqueue(p_template, p_params, p_lane, p_priority, p_session_id);
    t := checked.tpl;
    secrets := secret_param_names(t.params_schema);
    RETURN ROW(NULL, t.name, t.version, checked.run_lane, coalesce(p_priority, t.default_priority),
               CASE WHEN due_at <= now() THEN 'queued' ELSE 'scheduled' END, due_at,
               mask_secrets(checked.run_params, secrets), secrets, t.requires, t.timeout_ms, t.max_attempts,
               t.steps)::enqueue_preview;
END $$;

-- Params with the values of the named (secret) params replaced by "***".
CREATE FUNCTION runlane.mask_secrets(p_params jsonb, p_secrets text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_params || coalesce((SELECT jsonb_object_agg(k, to_jsonb('***'::text)) FROM unnest(p_secrets) AS k
                                 WHERE p_params ? k), '{}')
$$;

REVOKE EXECUTE ON FUNCTION runlane.param_path(text, text), runlane.regex_problem(text),
                           runlane.value_violations(jsonb, jsonb, text, boolean), runlane.with_defaults(jsonb, jsonb),
                           runlane.check_params(jsonb, jsonb), runlane.secret_param_names(jsonb),
                           runlane.schema_problem(jsonb, text, boolean), runlane.params_schema_problem(jsonb),
                           runlane.stored_schema_problem(runlane.run_templates),
                           runlane.check_enqueue(text, jsonb, text, integer, uuid), runlane.mask_secrets(jsonb, text[]),
                           runlane.dry_run_enqueue(text, jsonb, text, integer, timestamptz, text, uuid)
    FROM PUBLIC;
-- A dry run reads what a viewer may read (templates, its own params, secrets masked) and writes nothing.
GRANT EXECUTE ON FUNCTION runlane.dry_run_enqueue(text, jsonb, text, integer, timestamptz, text, uuid)
    TO runlane_operator, runlane_viewer;

ALTER FUNCTION runlane.enqueue_runs(text[], jsonb[], text[], integer[], timestamptz[], text[], uuid[]) SET jit = off;
ALTER FUNCTION runlane.enqueue_run(text, jsonb, text, integer, timestamptz, text, uuid) SET jit = off;
ALTER FUNCTION runlane.dry_run_enqueue(text, jsonb, text, integer, timestamptz, text, uuid) SET jit = off;

-- Template versions stored before this migration whose schema cannot be enforced as written: their
-- runs are refused at enqueue (naming the keyword) until a corrected version is applied. Say which.
DO $$
DECLARE
    t runlane.run_templates;
    problem text;
BEGIN
    FOR t IN SELECT DISTINCT ON (name) * FROM runlane.run_templates ORDER BY name, version DESC LOOP
        problem := runlane.stored_schema_problem(t);
        IF problem IS NOT NULL THEN
            RAISE WARNING '%', problem;
        END IF;
    END LOOP;
END $$;
