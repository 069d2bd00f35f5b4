-- Schedules: recurring runs of a template, by a cron expression read in a time zone. A tick (one at
-- a time fleet-wide, by a transaction-scoped advisory lock) enqueues each due slot once, through
-- enqueue_run with an idempotency key per schedule and slot. Slots missed while no tick ran are
-- caught up by one run, the newest slot's, whose event `run.caught_up` counts the others.

-- A parsed cron expression: the allowed values of each field, sorted.
CREATE TYPE runlane.cron_spec AS (
    seconds     integer[],
    minutes     integer[],
    hours       integer[],
    days        integer[],  -- of the month, 1–31
    months      integer[],  -- 1–12
    weekdays    integer[],  -- 0–6, Sunday 0
    any_day     boolean,    -- the day-of-month field starts with * or ?
    any_weekday boolean,    -- the day-of-week field starts with * or ?
    wall_clock  boolean     -- no second, minute or hour field starts with *: a time of day (see cron_next)
);

-- One value of a field: a number, or a name (JAN–DEC, SUN–SAT) when the field has names.
CREATE FUNCTION runlane.cron_value(p_context text, p_text text, p_min integer, p_max integer, p_names text[])
RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v integer;
BEGIN
    IF p_text ~ '^[0-9]+$' THEN
        IF length(p_text) > 4 THEN
            RAISE EXCEPTION '%: % is out of range (%-%)', p_context, p_text, p_min, p_max USING ERRCODE = 'RL422';
        END IF;
        v := p_text::integer;
    ELSIF p_names IS NOT NULL AND upper(p_text) = ANY (p_names) THEN
        v := p_min + array_position(p_names, upper(p_text)) - 1;
    ELSIF p_names IS NOT NULL THEN
        RAISE EXCEPTION '%: unknown name ''%'' (names: %)', p_context, p_text, array_to_string(p_names, ', ')
            USING ERRCODE = 'RL422';
    ELSE
        RAISE EXCEPTION '%: ''%'' is not a number', p_context, p_text USING ERRCODE = 'RL422';
    END IF;
    IF v NOT BETWEEN p_min AND p_max THEN
        RAISE EXCEPTION '%: % is out of range (%-%)', p_context, p_text, p_min, p_max USING ERRCODE = 'RL422';
    END IF;
    RETURN v;
END $$;

-- The values one field allows: a comma-separated list of `*`, `?` (day fields), `v`, `a-b`, each
-- with an optional step `/n` (`*/15`, `10-50/10`, `5/20` = from 5 to the end every 20).
CREATE FUNCTION runlane.cron_field(p_expr text, p_label text, p_text text, p_min integer, p_max integer,
                                   p_names text[] DEFAULT NULL)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    context text := format('cron expression ''%s'': %s field ''%s''', p_expr, p_label, p_text);
    item text;
    m text[];
    lo integer;
    hi integer;
    step integer;
    vals integer[] := '{}';
BEGIN
    FOREACH item IN ARRAY string_to_array(p_text, ',') LOOP
        m := regexp_match(item, '^(\*|\?|[A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?(?:/([0-9]+))?$');
        IF m IS NULL THEN
            RAISE EXCEPTION '%: cannot read ''%'' (write *, a value, a range a-b, a list a,b, or a step */n or a-b/n)',
                context, item USING ERRCODE = 'RL422';
        END IF;
        IF m[1] IN ('*', '?') THEN
            IF m[2] IS NOT NULL THEN
                RAISE EXCEPTION '%: ''%'' cannot start a range', context, m[1] USING ERRCODE = 'RL422';
            END IF;
            IF m[1] = '?' AND p_label NOT IN ('day-of-month', 'day-of-week') THEN
                RAISE EXCEPTION '%: ''?'' is only for the day-of-month and day-of-week fields', context
                    USING ERRCODE = 'RL422';
            END IF;
            lo := p_min;
            hi := p_max;
        ELSE
            lo := cron_value(context, m[1], p_min, p_max, p_names);
            hi := CASE WHEN m[2] IS NOT NULL THEN cron_value(context, m[2], p_min, p_max, p_names)
                       WHEN m[3] IS NOT NULL THEN p_max
                       ELSE lo END;
        END IF;
        IF m[3] IS NOT NULL AND (CASE WHEN length(m[3]) > 4 THEN true ELSE m[3]::integer NOT BETWEEN 1 AND p_max END) THEN
            RAISE EXCEPTION '%: step ''%'' must be between 1 and %', context, m[3], p_max USING ERRCODE = 'RL422';
        END IF;
        step := coalesce(m[3]::integer, 1);
        IF lo > hi THEN
            RAISE EXCEPTION '%: the range ''%'' goes backwards', context, item USING ERRCODE = 'RL422';
        END IF;
        vals := vals || ARRAY(SELECT generate_series(lo, hi, step));
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT v FROM unnest(vals) AS v ORDER BY v);
END $$;

-- Parses a cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with a
-- second field first, or a macro (@yearly, @annually, @monthly, @weekly, @daily, @midnight,
-- @hourly). When both day fields are restricted, a day matching either runs (as in cron).
CREATE FUNCTION runlane.cron_parse(p_expr text) RETURNS runlane.cron_spec
LANGUAGE plpgsql IMMUTABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    expr text := btrim(coalesce(p_expr, ''), E' \t\n\r');
    f text[];
    s cron_spec;
BEGIN
    expr := CASE lower(expr)
        WHEN '@yearly' THEN '0 0 0 1 1 *' WHEN '@annually' THEN '0 0 0 1 1 *'
        WHEN '@monthly' THEN '0 0 0 1 * *' WHEN '@weekly' THEN '0 0 0 * * 0'
        WHEN '@daily' THEN '0 0 0 * * *' WHEN '@midnight' THEN '0 0 0 * * *'
        WHEN '@hourly' THEN '0 0 * * * *'
        ELSE expr END;
    f := regexp_split_to_array(expr, '\s+');
    IF expr = '' OR cardinality(f) NOT IN (5, 6) THEN
        RAISE EXCEPTION 'cron expression ''%'': needs 5 fields (minute hour day-of-month month day-of-week), '
                        'or 6 with a second field first, got %', p_expr, CASE WHEN expr = '' THEN 0 ELSE cardinality(f) END
            USING ERRCODE = 'RL422';
    END IF;
    IF cardinality(f) = 5 THEN
        f := '0'::text || f;
    END IF;
    s.seconds := cron_field(p_expr, 'second', f[1], 0, 59);
    s.minutes := cron_field(p_expr, 'minute', f[2], 0, 59);
    s.hours := cron_field(p_expr, 'hour', f[3], 0, 23);
    s.days := cron_field(p_expr, 'day-of-month', f[4], 1, 31);
    s.months := cron_field(p_expr, 'month', f[5], 1, 12,
                           ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC']);
    -- 7 is Sunday too.
    s.weekdays := ARRAY(SELECT DISTINCT v % 7 FROM unnest(cron_field(p_expr, 'day-of-week', f[6], 0, 7,
                            ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'])) AS v ORDER BY 1);
    s.any_day := left(f[4], 1) IN ('*', '?');
    s.any_weekday := left(f[6], 1) IN ('*', '?');
    s.wall_clock := left(f[1], 1) <> '*' AND left(f[2], 1) <> '*' AND left(f[3], 1) <> '*';
    RETURN s;
END $$;

-- The smallest of the sorted values above p_x, or NULL.
CREATE FUNCTION runlane.cron_after(p_values integer[], p_x integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v integer;
BEGIN
    FOREACH v IN ARRAY p_values LOOP
        IF v > p_x THEN
            RETURN v;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- The first wall-clock time (whole seconds) after p_after that the expression matches, within 8
-- years; NULL if none. Field by field: a field that does not match moves to its next allowed value
-- and resets the smaller fields.
CREATE FUNCTION runlane.cron_next_local(s runlane.cron_spec, p_after timestamp) RETURNS timestamp
LANGUAGE plpgsql IMMUTABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    t timestamp := date_trunc('second', p_after) + interval '1 second';
    horizon timestamp := p_after + interval '8 years';
    v integer;
    n integer;
    d integer;
    w integer;
BEGIN
    WHILE t < horizon LOOP
        v := extract(month FROM t);
        IF NOT v = ANY (s.months) THEN
            n := cron_after(s.months, v);
            t := CASE WHEN n IS NULL THEN make_timestamp(extract(year FROM t)::integer + 1, s.months[1], 1, 0, 0, 0)
                      ELSE make_timestamp(extract(year FROM t)::integer, n, 1, 0, 0, 0) END;
            CONTINUE;
        END IF;
        d := extract(day FROM t);
        w := extract(dow FROM t);
        IF NOT (CASE WHEN s.any_day OR s.any_weekday THEN d = ANY (s.days) AND w = ANY (s.weekdays)
                     ELSE d = ANY (s.days) OR w = ANY (s.weekdays) END) THEN
            t := date_trunc('day', t) + interval '1 day';
            CONTINUE;
        END IF;
        v := extract(hour FROM t);
        IF NOT v = ANY (s.hours) THEN
            n := cron_after(s.hours, v);
            t := date_trunc('day', t) + CASE WHEN n IS NULL THEN interval '1 day' ELSE make_interval(hours => n) END;
            CONTINUE;
        END IF;
        v := extract(minute FROM t);
        IF NOT v = ANY (s.minutes) THEN
            n := cron_after(s.minutes, v);
            t := date_trunc('hour', t) + CASE WHEN n IS NULL THEN interval '1 hour' ELSE make_interval(mins => n) END;
            CONTINUE;
        END IF;
        v := floor(extract(second FROM t));
        IF NOT v = ANY (s.seconds) THEN
            n := cron_after(s.seconds, v);
            t := date_trunc('minute', t) + CASE WHEN n IS NULL THEN interval '1 minute' ELSE make_interval(secs => n) END;
            CONTINUE;
        END IF;
        RETURN t;
    END LOOP;
    RETURN NULL;
END $$;

-- The time zone's offset from UTC at an instant.
CREATE FUNCTION runlane.cron_offset(p_tz text, p_at timestamptz) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT (p_at AT TIME ZONE p_tz) - (p_at AT TIME ZONE 'UTC')
$$;

-- The first instant in [p_from, p_to] whose offset is not p_offset (a DST change), or NULL.
-- Looks a day at a time, then bisects to the second.
CREATE FUNCTION runlane.cron_transition(p_tz text, p_from timestamptz, p_to timestamptz, p_offset interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    x timestamptz := p_from;
    y timestamptz;
    lo timestamptz;
    hi timestamptz;
    mid timestamptz;
BEGIN
    LOOP
        y := least(x + interval '1 day', p_to);
        IF cron_offset(p_tz, y) <> p_offset THEN
            lo := x;
            hi := y;
            WHILE hi - lo > interval '1 second' LOOP
                mid := lo + date_trunc('second', (hi - lo) / 2);
                IF cron_offset(p_tz, mid) = p_offset THEN lo := mid; ELSE hi := mid; END IF;
            END LOOP;
            RETURN hi;
        END IF;
        IF y >= p_to THEN
            RETURN NULL;
        END IF;
        x := y;
    END LOOP;
END $$;

-- The first slot after p_after: an instant, in whole seconds, whose wall-clock time in p_tz the
-- expression matches. Where daylight saving time moves the clock:
-- * an expression with * in its second, minute or hour field follows the clock: it has slots in
--   both passes of a repeated hour, and none in a skipped one;
-- * any other expression names times of day (wall_clock): each matching time runs once, at its
--   first pass when the hour repeats, and shifted forward by the gap when it falls in a skipped hour
--   (02:30 on the spring-forward night in Europe/Paris runs at 03:30 CEST, as PostgreSQL reads it).
-- Walks the instants between DST changes, where local time is UTC plus one offset.
CREATE FUNCTION runlane.cron_next(s runlane.cron_spec, p_tz text, p_after timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    u timestamptz := date_trunc('second', p_after);
    o interval;
    o2 interval;
    t_local timestamp;
    floor_local timestamp;  -- wall-clock expressions: local times up to this one ran before the clock went back
    l timestamp;
    cand timestamptz;
    t timestamptz;
BEGIN
    FOR i IN 1 .. 32 LOOP
        o := cron_offset(p_tz, u + interval '1 second');
        l := cron_next_local(s, greatest((u AT TIME ZONE 'UTC') + o, floor_local));
        IF l IS NULL THEN
            RETURN NULL;
        END IF;
        cand := (l - o) AT TIME ZONE 'UTC';
        t := cron_transition(p_tz, u + interval '1 second', cand, o);
        IF t IS NULL THEN
            RETURN cand;
        END IF;
        -- The clock changes at t, before the candidate.
        o2 := cron_offset(p_tz, t);
        t_local := t AT TIME ZONE 'UTC';
        IF s.wall_clock AND o2 > o THEN
            -- Local times from t_local + o to t_local + o2 never show; a matching one runs shifted
            -- forward by the gap, unless a time after the gap comes first.
            l := cron_next_local(s, greatest(t_local + o - interval '1 second', floor_local));
            IF l < t_local + o2 THEN
                RETURN least((l - o) AT TIME ZONE 'UTC',
                             (cron_next_local(s, t_local + o2 - interval '1 second') - o2) AT TIME ZONE 'UTC');
            END IF;
        ELSIF s.wall_clock AND o2 < o THEN
            floor_local := t_local + o - interval '1 second';
        END IF;
        u := t - interval '1 second';
    END LOOP;
    RETURN NULL;
END $$;

-- A time zone's IANA name as PostgreSQL spells it (any case given), or RL422 naming close ones.
CREATE FUNCTION runlane.time_zone_name(p_tz text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    found text;
BEGIN
    SELECT name INTO found FROM pg_timezone_names WHERE lower(name) = lower(p_tz) AND name NOT LIKE 'posix/%'
    ORDER BY name = p_tz DESC LIMIT 1;
    IF found IS NULL THEN
        RAISE EXCEPTION 'unknown time zone ''%''%', p_tz, coalesce(
            (SELECT ' (did you mean ' || string_agg(format('''%s''', name), ', ' ORDER BY d, name) || '?)'
             FROM (SELECT name, edit_distance(lower(name), lower(p_tz)) AS d FROM pg_timezone_names
                   WHERE name NOT LIKE 'posix/%' AND name NOT LIKE 'right/%'
                     AND lower(split_part(name, '/', 1)) = lower(split_part(p_tz, '/', 1))
                   ORDER BY 2, 1 LIMIT 3) c
             WHERE d <= 2),
            ' (an IANA name such as Europe/Paris, America/New_York or UTC)')
            USING ERRCODE = 'RL422';
    END IF;
    RETURN found;
END $$;

-- The next p_count slots of an expression after p_after: for trying an expression out.
CREATE FUNCTION runlane.cron_slots(p_cron text, p_time_zone text DEFAULT 'UTC', p_after timestamptz DEFAULT now(),
                                   p_count integer DEFAULT 5)
RETURNS SETOF timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    s cron_spec := cron_parse(p_cron);
    tz text := time_zone_name(p_time_zone);
    t timestamptz := p_after;
BEGIN
    IF p_count NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'count % is out of range (1 to 1000)', p_count USING ERRCODE = 'RL422';
    END IF;
    FOR i IN 1 .. p_count LOOP
        t := cron_next(s, tz, t);
        EXIT WHEN t IS NULL;
        RETURN NEXT t;
    END LOOP;
END $$;

CREATE TABLE runlane.schedules (
    id               uuid PRIMARY KEY DEFAULT runlane.uuid_v7(),
    name             text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    template         text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}',
    lane             text CHECK (lane IN ('A', 'B', 'C', 'D')),       -- NULL: the template's default
    priority         integer CHECK (priority BETWEEN -100 AND 100),  -- NULL: the template's default
    cron             text NOT NULL,
    time_zone        text NOT NULL DEFAULT 'UTC',
    spec             runlane.cron_spec NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    paused_at        timestamptz,
    paused_by        text,
    pause_reason     text,
    created_by       text NOT NULL DEFAULT session_user,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_due         timestamptz,  -- the next slot to enqueue; NULL: the expression has no more
    last_slot        timestamptz,  -- the newest slot enqueued (or refused by enqueue_run)
    last_run_id      uuid,
    last_enqueued_at timestamptz,
    last_error       text,         -- why enqueue_run refused the slot of last_error_at
    last_error_at    timestamptz
);
CREATE INDEX schedules_due_idx ON runlane.schedules (next_due) WHERE enabled;

ALTER TABLE runlane.schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON runlane.schedules FOR SELECT TO runlane_viewer, runlane_operator USING (true);
-- Params may hold secrets: viewers read schedules through list_schedules (masked), or these columns.
GRANT SELECT ON runlane.schedules TO runlane_operator;
GRANT SELECT (id, name, template, lane, priority, cron, time_zone, enabled, paused_at, paused_by, pause_reason,
              created_by, created_at, next_due, last_slot, last_run_id, last_enqueued_at, last_error, last_error_at)
    ON runlane.schedules TO runlane_viewer;

-- A schedule's slot as the idempotency key of its run.
CREATE FUNCTION runlane.schedule_key(p_id uuid, p_slot timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('schedule:%s:%s', p_id, to_char(p_slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
$$;

CREATE FUNCTION runlane.unknown_schedule(p_name text) RETURNS text
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT format('unknown schedule ''%s''', p_name) || CASE WHEN EXISTS (SELECT 1 FROM schedules)
        THEN format(' (schedules: %s)', (SELECT string_agg(name, ', ' ORDER BY name)
                                          FROM (SELECT name FROM schedules ORDER BY name LIMIT 20) n))
        ELSE ' (there are no schedules)' END
$$;

-- Adds a schedule. What each slot will enqueue is checked now, by enqueue_run itself (template,
-- params, lane, priority), in a subtransaction that is rolled back; so are the expression and the
-- time zone. The first slot is the first after now.
CREATE FUNCTION runlane.add_schedule(
    p_name      text,
    p_template  text,
    p_cron      text,
    p_time_zone text DEFAULT 'UTC',
    p_params    jsonb DEFAULT '{}',
    p_lane      text DEFAULT NULL,
    p_priority  integer DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    s cron_spec;
    tz text;
    first_slot timestamptz;
    new_id uuid;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid schedule name ''%'': use lowercase letters, digits, ''.'', ''_'' and ''-'' '
                        '(at most 63, starting with a letter or digit)', p_name USING ERRCODE = 'RL422';
    END IF;
    s := cron_parse(p_cron);
    tz := time_zone_name(coalesce(p_time_zone, 'UTC'));
    first_slot := cron_next(s, tz, now());
    IF first_slot IS NULL THEN
        RAISE EXCEPTION 'cron expression ''%'' matches no time in the next 8 years', p_cron USING ERRCODE = 'RL422';
    END IF;
    BEGIN
        PERFORM enqueue_run(p_template, coalesce(p_params, '{}'), p_lane, p_priority, NULL, NULL, NULL);
        RAISE EXCEPTION 'checked' USING ERRCODE = 'RL200';
    EXCEPTION WHEN SQLSTATE 'RL200' THEN  -- not RL000: a code ending in 000 catches its whole class
        NULL;  -- enqueue_run accepted it; the trial run is rolled back
    END;
    INSERT INTO schedules (name, template, params, lane, priority, cron, time_zone, spec, next_due)
    VALUES (p_name, p_template, coalesce(p_params, '{}'), p_lane, p_priority, p_cron, tz, s, first_slot)
    ON CONFLICT (name) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        RAISE EXCEPTION 'schedule ''%'' exists: remove it first, or choose another name', p_name
            USING ERRCODE = 'RL409';
    END IF;
    RETURN new_id;
END $$;

-- Pauses a schedule: no slot is enqueued until it is resumed. Pausing a paused one changes nothing.
CREATE FUNCTION runlane.pause_schedule(p_name text, p_reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    UPDATE schedules SET enabled = false, paused_at = now(), paused_by = session_user, pause_reason = p_reason
    WHERE name = p_name AND enabled;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM schedules WHERE name = p_name) THEN
        RAISE EXCEPTION '%', unknown_schedule(p_name) USING ERRCODE = 'RL404';
    END IF;
END $$;

-- Resumes a schedule from its first slot after now (or after its newest enqueued slot, if later):
-- slots that passed while it was paused are not caught up. Returns the next slot.
CREATE FUNCTION runlane.resume_schedule(p_name text) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    s schedules;
BEGIN
    SELECT * INTO s FROM schedules WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', unknown_schedule(p_name) USING ERRCODE = 'RL404';
    END IF;
    IF s.enabled THEN
        RETURN s.next_due;
    END IF;
    UPDATE schedules SET enabled = true, paused_at = NULL, paused_by = NULL, pause_reason = NULL,
                         next_due = cron_next(s.spec, s.time_zone, greatest(now(), s.last_slot))
    WHERE id = s.id
    RETURNING next_due INTO s.next_due;
    RETURN s.next_due;
END $$;

-- Removes a schedule. The runs it enqueued stay.
CREATE FUNCTION runlane.remove_schedule(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
BEGIN
    DELETE FROM schedules WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', unknown_schedule(p_name) USING ERRCODE = 'RL404';
    END IF;
END $$;

-- Every schedule, by name, with the values of its template's secret params shown as ***.
CREATE FUNCTION runlane.list_schedules()
RETURNS TABLE (id uuid, name text, template text, params jsonb, lane text, priority integer, cron text,
               time_zone text, enabled boolean, paused_at timestamptz, paused_by text, pause_reason text,
               created_by text, created_at timestamptz, next_due timestamptz, last_slot timestamptz,
               last_run_id uuid, last_enqueued_at timestamptz, last_error text, last_error_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT s.id, s.name, s.template,
           s.params || coalesce((SELECT jsonb_object_agg(e.k, to_jsonb('***'::text))
                                 FROM jsonb_each(coalesce(t.params_schema -> 'properties', '{}')) AS e(k, v)
                                 WHERE e.v -> 'secret' = 'true'::jsonb AND s.params ? e.k), '{}'),
           s.lane, s.priority, s.cron, s.time_zone, s.enabled, s.paused_at, s.paused_by, s.pause_reason,
           s.created_by, s.created_at, s.next_due, s.last_slot, s.last_run_id, s.last_enqueued_at, s.last_error,
           s.last_error_at
    FROM schedules s
    LEFT JOIN LATERAL (SELECT x.params_schema FROM run_templates x WHERE x.name = s.template
                       ORDER BY x.version DESC LIMIT 1) t ON true
    ORDER BY s.name
$$;

-- A schedule's next p_count slots from now (from its next due slot while enabled, from where
-- resume_schedule would start while paused), each with the wall-clock time it stands for.
CREATE FUNCTION runlane.schedule_slots(p_name text, p_count integer DEFAULT 5)
RETURNS TABLE (slot timestamptz, local_time timestamp)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    s schedules;
    t timestamptz;
BEGIN
    SELECT * INTO s FROM schedules WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', unknown_schedule(p_name) USING ERRCODE = 'RL404';
    END IF;
    IF p_count NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'count % is out of range (1 to 1000)', p_count USING ERRCODE = 'RL422';
    END IF;
    t := CASE WHEN s.enabled THEN greatest(s.next_due - interval '1 second', now())
              ELSE greatest(now(), s.last_slot) END;
    FOR i IN 1 .. p_count LOOP
        t := cron_next(s.spec, s.time_zone, t);
        EXIT WHEN t IS NULL;
        slot := t;
        local_time := t AT TIME ZONE s.time_zone;
        RETURN NEXT;
    END LOOP;
END $$;

-- The newest slot at or before p_now, from p_due (a due slot) on: the slot a tick enqueues. Counts
-- the slots passed over (exactly up to 10 000; past that, `exact` is false and the newest is found
-- from p_now backwards), with the first and last of them.
CREATE FUNCTION runlane.newest_slot(s runlane.cron_spec, p_tz text, p_due timestamptz, p_now timestamptz,
                                    OUT slot timestamptz, OUT missed integer, OUT first_missed timestamptz,
                                    OUT last_missed timestamptz, OUT exact boolean)
LANGUAGE plpgsql STABLE SET search_path = runlane, pg_temp AS $$
DECLARE
    nxt timestamptz;
    back interval;
BEGIN
    slot := p_due;
    missed := 0;
    exact := true;
    LOOP
        nxt := cron_next(s, p_tz, slot);
        EXIT WHEN nxt IS NULL OR nxt > p_now;
        missed := missed + 1;
        first_missed := coalesce(first_missed, slot);
        last_missed := slot;
        slot := nxt;
        IF missed >= 10000 THEN
            exact := false;
            -- The first slot of the shortest look back from p_now that has one, then forwards.
            FOREACH back IN ARRAY ARRAY[interval '1 minute', '1 hour', '1 day', '32 days', '366 days', '8 years'] LOOP
                IF p_now - back > slot THEN
                    nxt := cron_next(s, p_tz, p_now - back);
                    IF nxt <= p_now THEN
                        slot := nxt;
                        EXIT;
                    END IF;
                END IF;
            END LOOP;
            LOOP
                nxt := cron_next(s, p_tz, slot);
                EXIT WHEN nxt IS NULL OR nxt > p_now;
                last_missed := slot;
                slot := nxt;
            END LOOP;
            EXIT;
        END IF;
    END LOOP;
END $$;

-- How long until the earliest enabled schedule is due, in ms (0: due now; NULL: none is enabled).
CREATE FUNCTION runlane.schedules_wait_ms() RETURNS bigint
LANGUAGE sql STABLE SET search_path = runlane, pg_temp AS $$
    SELECT greatest(0, ceil(extract(epoch FROM min(next_due) - clock_timestamp()) * 1000))::bigint
    FROM schedules WHERE enabled
$$;

-- One tick as of p_now: for each enabled schedule due by then (at most p_limit, earliest first),
-- enqueues its newest due slot through enqueue_run (idempotency key: schedule id and slot) and moves
-- next_due past p_now. Slots passed over are recorded on that run in a `run.caught_up` event. A slot
-- enqueue_run refuses (the template changed since) is recorded on the schedule (last_error) and the
-- schedule moves on; one whose slots cannot be computed at all is paused, saying why, so it cannot
-- stall the others. One tick runs at a time: pg_try_advisory_xact_lock, else {"skipped": true}.
CREATE FUNCTION runlane.tick_schedules_at(p_now timestamptz, p_limit integer DEFAULT 100) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
DECLARE
    s schedules;
    n record;
    slot timestamptz;
    key text;
    run uuid;
    seen integer := 0;
    enqueued integer := 0;
    caught_up integer := 0;
    missed bigint := 0;
    failed jsonb := '[]';
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('runlane.schedules')) THEN
        RETURN jsonb_build_object('skipped', true, 'wait_ms', schedules_wait_ms());
    END IF;
    p_now := coalesce(p_now, now());
    FOR s IN SELECT * FROM schedules WHERE enabled AND next_due <= p_now
             ORDER BY next_due LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        seen := seen + 1;
        slot := NULL;
        BEGIN
            SELECT * INTO n FROM newest_slot(s.spec, s.time_zone, s.next_due, p_now);
            slot := n.slot;
            key := schedule_key(s.id, slot);
            SELECT id INTO run FROM runs WHERE idempotency_key = key;
            IF NOT FOUND THEN
                run := enqueue_run(s.template, s.params, s.lane, s.priority, slot, key, NULL);
                enqueued := enqueued + 1;
                IF n.missed > 0 THEN
                    PERFORM add_event(run, 'run.caught_up', jsonb_build_object(
                        'schedule', s.name, 'slot', slot, 'missed', n.missed, 'from', n.first_missed,
                        'to', n.last_missed) || CASE WHEN n.exact THEN '{}' ELSE '{"at_least": true}' END::jsonb);
                    caught_up := caught_up + 1;
                    missed := missed + n.missed;
                END IF;
            END IF;
            UPDATE schedules SET next_due = cron_next(s.spec, s.time_zone, slot), last_slot = slot,
                                 last_run_id = run, last_enqueued_at = now()
            WHERE id = s.id;
        EXCEPTION WHEN OTHERS THEN
            IF slot IS NULL THEN
                UPDATE schedules SET enabled = false, paused_at = now(), paused_by = 'runlane',
                                     pause_reason = 'its slots cannot be computed: ' || SQLERRM,
                                     last_error = SQLERRM, last_error_at = now()
                WHERE id = s.id;
            ELSE
                UPDATE schedules SET next_due = cron_next(s.spec, s.time_zone, slot), last_slot = slot,
                                     last_error = SQLERRM, last_error_at = now()
                WHERE id = s.id;
            END IF;
            failed := failed || jsonb_build_object('schedule', s.name, 'slot', coalesce(slot, s.next_due),
                                                   'error', SQLERRM);
        END;
    END LOOP;
    RETURN jsonb_build_object('skipped', false, 'enqueued', enqueued, 'caught_up', caught_up, 'missed', missed,
                              'failed', failed, 'more', seen >= p_limit, 'wait_ms', schedules_wait_ms());
END $$;

-- One tick now: what the sweeper loops of workers and the API call.
CREATE FUNCTION runlane.tick_schedules() RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = runlane, pg_temp AS $$
    SELECT tick_schedules_at(now())
$$;

REVOKE EXECUTE ON FUNCTION
    runlane.cron_value(text, text, integer, integer, text[]),
    runlane.cron_field(text, text, text, integer, integer, text[]),
    runlane.cron_parse(text),
    runlane.cron_after(integer[], integer),
    runlane.cron_next_local(runlane.cron_spec, timestamp),
    runlane.cron_offset(text, timestamptz),
    runlane.cron_transition(text, timestamptz, timestamptz, interval),
    runlane.cron_next(runlane.cron_spec, text, timestamptz),
    runlane.time_zone_name(text),
    runlane.cron_slots(text, text, timestamptz, integer),
    runlane.schedule_key(uuid, timestamptz),
    runlane.unknown_schedule(text),
    runlane.add_schedule(text, text, text, text, jsonb, text, integer),
    runlane.pause_schedule(text, text),
    runlane.resume_schedule(text),
    runlane.remove_schedule(text),
    runlane.list_schedules(),
    runlane.schedule_slots(text, integer),
    runlane.newest_slot(runlane.cron_spec, text, timestamptz, timestamptz),
    runlane.schedules_wait_ms(),
    runlane.tick_schedules_at(timestamptz, integer),
    runlane.tick_schedules()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION runlane.list_schedules(), runlane.schedule_slots(text, integer),
                          runlane.cron_slots(text, text, timestamptz, integer)
    TO runlane_viewer, runlane_operator;
GRANT EXECUTE ON FUNCTION runlane.add_schedule(text, text, text, text, jsonb, text, integer),
                          runlane.pause_schedule(text, text), runlane.resume_schedule(text),
                          runlane.remove_schedule(text)
    TO runlane_operator;
GRANT EXECUTE ON FUNCTION runlane.tick_schedules() TO runlane_worker;
