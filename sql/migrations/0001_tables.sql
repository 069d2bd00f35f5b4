-- runlane queue schema: tables and indexes.
-- Forward-only: never edit a migration once it has landed; add a new one.

CREATE SCHEMA IF NOT EXISTS runlane;

-- Time-ordered uuids (version 7) keep the primary-key index append-only.
CREATE FUNCTION runlane.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE TABLE runlane.lanes (
    name        text PRIMARY KEY CHECK (name ~ '^[A-D]$'),
    -- NULL: no cap. Otherwise at most this many runs of the lane run at once, fleet-wide.
    max_running integer CHECK (max_running IS NULL OR max_running >= 0),
    description text NOT NULL DEFAULT ''
);

INSERT INTO runlane.lanes (name, description) VALUES
    ('A', 'urgent: incident response, rollbacks'),
    ('B', 'deploys and migrations'),
    ('C', 'routine maintenance: backups, rotations'),
    ('D', 'bulk and background work');

CREATE TABLE runlane.run_templates (
    name            text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    version         integer NOT NULL CHECK (version > 0),
    description     text NOT NULL DEFAULT '',
    params_schema   jsonb NOT NULL DEFAULT '{"type": "object"}',
    steps           jsonb NOT NULL CHECK (jsonb_typeof(steps) = 'array' AND jsonb_array_length(steps) > 0),
    default_lane    text NOT NULL DEFAULT 'C' REFERENCES runlane.lanes,
    default_priority integer NOT NULL DEFAULT 0 CHECK (default_priority BETWEEN -100 AND 100),
    timeout_ms      integer NOT NULL DEFAULT 3600000 CHECK (timeout_ms > 0),
    max_attempts    integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    backoff_base_ms integer NOT NULL DEFAULT 1000 CHECK (backoff_base_ms >= 0),
    max_crashes     integer NOT NULL DEFAULT 3 CHECK (max_crashes >= 0),
    -- Worker capabilities a run of this template needs (e.g. 'docker').
    requires        text[] NOT NULL DEFAULT '{}',
    -- The whole spec as applied, for display and for idempotent re-apply.
    spec            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE runlane.sessions (
    id         uuid PRIMARY KEY DEFAULT runlane.uuid_v7(),
    name       text NOT NULL DEFAULT '',
    created_by text NOT NULL DEFAULT session_user,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runlane.workers (
    id           uuid PRIMARY KEY,
    host         text NOT NULL,
    version      text NOT NULL,
    lanes        text[] NOT NULL,
    slots        integer NOT NULL CHECK (slots > 0),
    capabilities text[] NOT NULL DEFAULT '{}',
    lease_ms     integer NOT NULL CHECK (lease_ms >= 100),
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'gone')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runlane.runs (
    id               uuid PRIMARY KEY DEFAULT runlane.uuid_v7(),
    template         text NOT NULL,
    template_version integer NOT NULL,
    lane             text NOT NULL REFERENCES runlane.lanes,
    -- Higher runs first within a lane.
    priority         integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params           jsonb NOT NULL DEFAULT '{}',
    -- Names of params the template marks secret: masked in every event.
    secret_params    text[] NOT NULL DEFAULT '{}',
    -- The template's steps, frozen at enqueue.
    steps            jsonb NOT NULL,
    requires         text[] NOT NULL DEFAULT '{}',
    timeout_ms       integer NOT NULL,
    -- attempt: executions started (each claim adds one; events and steps carry it).
    attempt          integer NOT NULL DEFAULT 0,
    -- failed_attempts: attempts that failed on their own; counted against max_attempts.
    failed_attempts  integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    backoff_base_ms  integer NOT NULL,
    -- crash_count: leases that expired under a silent worker; counted against max_crashes.
    crash_count      integer NOT NULL DEFAULT 0,
    max_crashes      integer NOT NULL,
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    enqueued_by      text NOT NULL DEFAULT session_user,
    claimed_at       timestamptz,
    finished_at      timestamptz,
    deadline_at      timestamptz,
    worker_id        uuid REFERENCES runlane.workers ON DELETE SET NULL,
    lease            uuid,
    lease_expires_at timestamptz,
    cancel_requested_at timestamptz,
    cancel_reason    text,
    idempotency_key  text,
    session_id       uuid REFERENCES runlane.sessions ON DELETE SET NULL,
    result           jsonb,
    error            text,
    -- The seq the next event of this run gets. Allocating from it row-locks the run until commit,
    -- so events commit in seq order and a reader following by cursor never skips one.
    next_seq         bigint NOT NULL DEFAULT 1,
    CHECK ((status = 'running') = (lease IS NOT NULL))
);

-- The claim: queued runs of a lane in claim order. Partial, so finished runs never slow it.
CREATE INDEX runs_claim_idx ON runlane.runs (lane, priority DESC, run_at, id) WHERE status = 'queued';
-- The sweeper's expired leases and the per-lane running count.
CREATE INDEX runs_running_idx ON runlane.runs (lane, lease_expires_at) WHERE status = 'running';
-- Retention pruning.
CREATE INDEX runs_finished_idx ON runlane.runs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE UNIQUE INDEX runs_idempotency_idx ON runlane.runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_session_idx ON runlane.runs (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE runlane.run_steps (
    run_id      uuid NOT NULL REFERENCES runlane.runs ON DELETE CASCADE,
    attempt     integer NOT NULL,
    idx         integer NOT NULL CHECK (idx >= 0),
    name        text NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'timed_out', 'skipped')),
    exit_code   integer,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, attempt, idx)
);

-- Append-only. No foreign key: every writer goes through a function that has just locked the run,
-- and the per-row key check would cost the hottest insert path; pruning deletes events explicitly.
CREATE TABLE runlane.run_events (
    run_id  uuid NOT NULL,
    seq     bigint NOT NULL,
    attempt integer NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,
    step    integer,
    stream  text CHECK (stream IN ('stdout', 'stderr')),
    body    text,
    data    jsonb,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE runlane.artifacts (
    id           uuid PRIMARY KEY DEFAULT runlane.uuid_v7(),
    run_id       uuid NOT NULL REFERENCES runlane.runs ON DELETE CASCADE,
    attempt      integer NOT NULL,
    step         integer,
    name         text NOT NULL CHECK (name <> '' AND length(name) <= 255),
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- Exactly one of: the bytes (small artifacts) or the object store key (large ones).
    inline_data  bytea,
    store_key    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((inline_data IS NULL) <> (store_key IS NULL)),
    UNIQUE (run_id, attempt, name)
);

CREATE TABLE runlane.api_tokens (
    id           uuid PRIMARY KEY DEFAULT runlane.uuid_v7(),
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('worker', 'operator', 'viewer')),
    -- NULL: every lane.
    lanes        text[],
    -- sha256 of the token; the token itself is shown once and never stored.
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
