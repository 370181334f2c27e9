-- qml: the whole PostgreSQL schema, installed in one transaction on an empty schema.
-- It equals migrations/0001..NNNN applied in order (a test compares the catalogs).
-- Double-brace placeholders (schema, table, table_<suffix>, channel) are replaced by
-- quoted identifiers (see sql.py).

CREATE TYPE {{schema}}.{{table_state}} AS ENUM (
    'enqueued', 'scheduled', 'processing', 'succeeded', 'failed', 'awaiting_retry', 'deleted'
);
COMMENT ON TYPE {{schema}}.{{table_state}} IS
    'Life-cycle state of a qml job (SPEC section 2).';

CREATE TABLE {{schema}}.{{table_migrations}} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {{schema}}.{{table_migrations}} IS
    'Schema versions of this qml installation, one row per applied migration.';
COMMENT ON COLUMN {{schema}}.{{table_migrations}}.version IS 'Migration number (file NNNN_name.sql).';
COMMENT ON COLUMN {{schema}}.{{table_migrations}}.name IS 'Migration name.';
COMMENT ON COLUMN {{schema}}.{{table_migrations}}.applied_at IS 'When the migration was applied.';

CREATE TABLE {{schema}}.{{table}} (
    id text COLLATE "C" PRIMARY KEY,
    method text NOT NULL,
    args json NOT NULL,
    queue text COLLATE "C" NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    state {{schema}}.{{table_state}} NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    max_retries integer,
    crashes integer NOT NULL DEFAULT 0,
    run_at timestamptz,
    timeout double precision,
    dedup_key text,
    meta json NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    enqueued_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    expires_at timestamptz,
    error_type text,
    error text,
    traceback text,
    result json,
    server_id text,
    lease_token text,
    lease_expires_at timestamptz,
    last_lease_token text,
    cancel_requested boolean NOT NULL DEFAULT false,
    progress double precision,
    history jsonb NOT NULL DEFAULT '[]',
    CONSTRAINT {{table_lease_check}} CHECK (
        state <> 'processing' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT {{table_run_at_check}} CHECK (
        state NOT IN ('scheduled', 'awaiting_retry') OR run_at IS NOT NULL)
);
COMMENT ON TABLE {{schema}}.{{table}} IS
    'qml jobs: one row per job, from enqueue until cleanup removes it after its expires_at.';
COMMENT ON COLUMN {{schema}}.{{table}}.id IS 'Job id: a UUIDv7 string, so ids sort by creation time.';
COMMENT ON COLUMN {{schema}}.{{table}}.method IS 'Name of the worker method that runs the job.';
COMMENT ON COLUMN {{schema}}.{{table}}.args IS 'Job arguments, JSON exactly as encoded by the client.';
COMMENT ON COLUMN {{schema}}.{{table}}.queue IS 'Queue the job waits in.';
COMMENT ON COLUMN {{schema}}.{{table}}.priority IS 'Higher runs first; FIFO inside one priority.';
COMMENT ON COLUMN {{schema}}.{{table}}.state IS 'Current life-cycle state.';
COMMENT ON COLUMN {{schema}}.{{table}}.attempts IS 'Attempts started (claims), minus released ones.';
COMMENT ON COLUMN {{schema}}.{{table}}.max_retries IS 'Retry limit for this job; NULL means the worker''s policy.';
COMMENT ON COLUMN {{schema}}.{{table}}.crashes IS 'Times the holder of this job died (lease expired).';
COMMENT ON COLUMN {{schema}}.{{table}}.run_at IS 'When a Scheduled or AwaitingRetry job becomes due.';
COMMENT ON COLUMN {{schema}}.{{table}}.timeout IS 'Per-attempt timeout in seconds; NULL means the server default.';
COMMENT ON COLUMN {{schema}}.{{table}}.dedup_key IS 'Deduplication key given at enqueue (see the _dedup table).';
COMMENT ON COLUMN {{schema}}.{{table}}.meta IS 'Free-form JSON metadata given at enqueue.';
COMMENT ON COLUMN {{schema}}.{{table}}.created_at IS 'When the job was enqueued first.';
COMMENT ON COLUMN {{schema}}.{{table}}.updated_at IS 'Last change of the row (stamped by a trigger when a statement does not set it).';
COMMENT ON COLUMN {{schema}}.{{table}}.enqueued_at IS 'When the job last became Enqueued: FIFO order of claims.';
COMMENT ON COLUMN {{schema}}.{{table}}.started_at IS 'When the latest attempt was claimed.';
COMMENT ON COLUMN {{schema}}.{{table}}.finished_at IS 'When the job became Succeeded or Failed.';
COMMENT ON COLUMN {{schema}}.{{table}}.expires_at IS 'When cleanup may remove a Succeeded, Failed or Deleted job.';
COMMENT ON COLUMN {{schema}}.{{table}}.error_type IS 'Exception type of the last failed attempt.';
COMMENT ON COLUMN {{schema}}.{{table}}.error IS 'Error message of the last failed attempt.';
COMMENT ON COLUMN {{schema}}.{{table}}.traceback IS 'Traceback of the last failed attempt.';
COMMENT ON COLUMN {{schema}}.{{table}}.result IS 'JSON result of a Succeeded job.';
COMMENT ON COLUMN {{schema}}.{{table}}.server_id IS 'Server holding the job while Processing.';
COMMENT ON COLUMN {{schema}}.{{table}}.lease_token IS 'Fencing token of the current lease: only its holder may record an outcome.';
COMMENT ON COLUMN {{schema}}.{{table}}.lease_expires_at IS 'Lease deadline (database time); renewed by heartbeats, recovered after it passes.';
COMMENT ON COLUMN {{schema}}.{{table}}.last_lease_token IS 'Token of the lease whose outcome was recorded last: lets a finish retried after a lost connection recognise its own write.';
COMMENT ON COLUMN {{schema}}.{{table}}.cancel_requested IS 'Cancellation asked for a Processing job, relayed by its heartbeat.';
COMMENT ON COLUMN {{schema}}.{{table}}.progress IS 'Progress reported by the running job (0 to 1).';
COMMENT ON COLUMN {{schema}}.{{table}}.history IS 'State history: JSON array of {state, at, reason, server, attempt}.';

-- Claim: Enqueued jobs of one queue by priority, then FIFO.
CREATE INDEX {{table_claim_idx}} ON {{schema}}.{{table}}
    (queue, priority DESC, enqueued_at, id) WHERE state = 'enqueued';
-- Enqueued jobs that were running when a worker died (crashes > 0), in claim order:
-- a claim bounded in suspects finds the few it may take without walking a queue.
CREATE INDEX {{table_suspects_idx}} ON {{schema}}.{{table}}
    (queue, priority DESC, enqueued_at, id) WHERE state = 'enqueued' AND crashes > 0;
-- Activation of due Scheduled / AwaitingRetry jobs.
CREATE INDEX {{table_due_idx}} ON {{schema}}.{{table}}
    (run_at) WHERE state IN ('scheduled', 'awaiting_retry');
-- Recovery of expired leases.
CREATE INDEX {{table_lease_idx}} ON {{schema}}.{{table}}
    (lease_expires_at) WHERE state = 'processing';
-- Cleanup of expired final jobs.
CREATE INDEX {{table_expiry_idx}} ON {{schema}}.{{table}}
    (expires_at) WHERE state IN ('succeeded', 'failed', 'deleted');
-- Dashboard filters, each paginated on the id (newest first). The state index
-- covers the final states only (the populations that grow to millions): were it
-- to cover Enqueued or Processing too, a planner misled by the statistics of an
-- emptied queue would claim through it, sorting the whole backlog each time.
CREATE INDEX {{table_state_idx}} ON {{schema}}.{{table}} (state, id)
    WHERE state IN ('succeeded', 'failed', 'deleted');
-- Queue and method filters read one keyset scan per state, however rare the state.
CREATE INDEX {{table_queue_state_idx}} ON {{schema}}.{{table}} (queue, state, id);
CREATE INDEX {{table_method_state_idx}} ON {{schema}}.{{table}} (method, state, id);
-- Joint statistics, so a rare (queue, state) pair is not expected to be common.
CREATE STATISTICS {{schema}}.{{table_queue_state_stats}} (mcv) ON queue, state
    FROM {{schema}}.{{table}};
CREATE STATISTICS {{schema}}.{{table_method_state_stats}} (mcv) ON method, state
    FROM {{schema}}.{{table}};

CREATE TABLE {{schema}}.{{table_dedup}} (
    key text PRIMARY KEY,
    job_id text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX {{table_dedup_created_idx}} ON {{schema}}.{{table_dedup}} (created_at);
COMMENT ON TABLE {{schema}}.{{table_dedup}} IS
    'Deduplication keys already used; outlive their jobs until pruned by age.';
COMMENT ON COLUMN {{schema}}.{{table_dedup}}.key IS 'The dedup_key given at enqueue.';
COMMENT ON COLUMN {{schema}}.{{table_dedup}}.job_id IS 'The job that used the key.';
COMMENT ON COLUMN {{schema}}.{{table_dedup}}.created_at IS 'When that job was created (pruning age).';

CREATE TABLE {{schema}}.{{table_counts}} (
    queue text COLLATE "C" NOT NULL,
    state {{schema}}.{{table_state}} NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (queue, state)
);
COMMENT ON TABLE {{schema}}.{{table_counts}} IS
    'Job counts per queue and state, compacted from the _count_deltas table.';
COMMENT ON COLUMN {{schema}}.{{table_counts}}.queue IS 'Queue name.';
COMMENT ON COLUMN {{schema}}.{{table_counts}}.state IS 'Job state.';
COMMENT ON COLUMN {{schema}}.{{table_counts}}.n IS 'Number of jobs.';

CREATE TABLE {{schema}}.{{table_count_deltas}} (
    queue text COLLATE "C" NOT NULL,
    state {{schema}}.{{table_state}} NOT NULL,
    n bigint NOT NULL
);
COMMENT ON TABLE {{schema}}.{{table_count_deltas}} IS
    'Count changes written by the job table triggers in the same transaction as each change. '
    'Insert-only, so no writer ever waits on another; folded into _counts by compaction.';
COMMENT ON COLUMN {{schema}}.{{table_count_deltas}}.queue IS 'Queue name.';
COMMENT ON COLUMN {{schema}}.{{table_count_deltas}}.state IS 'Job state.';
COMMENT ON COLUMN {{schema}}.{{table_count_deltas}}.n IS 'Signed change of the number of jobs.';

CREATE TABLE {{schema}}.{{table_minute_stats}} (
    minute timestamptz PRIMARY KEY,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE {{schema}}.{{table_minute_stats}} IS
    'Outcomes per minute (the dashboard''s throughput graph), counted by the statements that '
    'finish jobs and recover crashed ones.';
COMMENT ON COLUMN {{schema}}.{{table_minute_stats}}.minute IS 'Start of the minute (UTC).';
COMMENT ON COLUMN {{schema}}.{{table_minute_stats}}.succeeded IS 'Jobs that succeeded in that minute.';
COMMENT ON COLUMN {{schema}}.{{table_minute_stats}}.failed IS 'Jobs that failed for good in that minute.';

CREATE FUNCTION {{schema}}.{{table_history_entry}}(
    p_state text, p_at timestamptz, p_reason text, p_server text, p_attempt integer
) RETURNS jsonb LANGUAGE sql STABLE AS $qml$
    SELECT jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'state', p_state, 'at', p_at, 'reason', p_reason, 'server', p_server,
        'attempt', p_attempt)))
$qml$;
COMMENT ON FUNCTION {{schema}}.{{table_history_entry}}(text, timestamptz, text, text, integer) IS
    'One state-history entry, as a one-element JSON array to append to a job''s history.';

CREATE FUNCTION {{schema}}.{{table_touch}}() RETURNS trigger LANGUAGE plpgsql AS $qml$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$qml$;
COMMENT ON FUNCTION {{schema}}.{{table_touch}}() IS
    'Stamps updated_at on updates that do not set it themselves.';

CREATE FUNCTION {{schema}}.{{table_on_insert}}() RETURNS trigger LANGUAGE plpgsql AS $qml$
BEGIN
    INSERT INTO {{schema}}.{{table_count_deltas}} (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
    IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'enqueued') THEN
        PERFORM pg_notify({{channel}}, '');
    END IF;
    RETURN NULL;
END
$qml$;
COMMENT ON FUNCTION {{schema}}.{{table_on_insert}}() IS
    'After inserting jobs: count them and wake idle servers (NOTIFY at commit).';

CREATE FUNCTION {{schema}}.{{table_on_update}}() RETURNS trigger LANGUAGE plpgsql AS $qml$
DECLARE
    woke boolean;
BEGIN
    WITH d AS (
        SELECT queue, state, sum(n)::bigint AS n
        FROM (SELECT queue, state, 1 AS n FROM new_rows
              UNION ALL SELECT queue, state, -1 FROM old_rows) AS x
        GROUP BY queue, state HAVING sum(n) <> 0
    ), ins AS (
        INSERT INTO {{schema}}.{{table_count_deltas}} (queue, state, n)
        SELECT queue, state, n FROM d
    )
    SELECT coalesce(bool_or(state = 'enqueued' AND n > 0), false) INTO woke FROM d;
    IF woke THEN
        PERFORM pg_notify({{channel}}, '');
    END IF;
    RETURN NULL;
END
$qml$;
COMMENT ON FUNCTION {{schema}}.{{table_on_update}}() IS
    'After updating jobs: record count changes and wake idle servers when jobs became Enqueued.';

CREATE FUNCTION {{schema}}.{{table_on_delete}}() RETURNS trigger LANGUAGE plpgsql AS $qml$
BEGIN
    INSERT INTO {{schema}}.{{table_count_deltas}} (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
    RETURN NULL;
END
$qml$;
COMMENT ON FUNCTION {{schema}}.{{table_on_delete}}() IS 'After deleting jobs: uncount them.';

CREATE TRIGGER {{table_touch_trg}} BEFORE UPDATE ON {{schema}}.{{table}}
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION {{schema}}.{{table_touch}}();
CREATE TRIGGER {{table_insert_trg}} AFTER INSERT ON {{schema}}.{{table}}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.{{table_on_insert}}();
CREATE TRIGGER {{table_update_trg}} AFTER UPDATE ON {{schema}}.{{table}}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.{{table_on_update}}();
CREATE TRIGGER {{table_delete_trg}} AFTER DELETE ON {{schema}}.{{table}}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.{{table_on_delete}}();

CREATE TABLE {{schema}}.{{table_recurring}} (
    id text COLLATE "C" PRIMARY KEY,
    cron text NOT NULL,
    method text NOT NULL,
    args json NOT NULL,
    queue text COLLATE "C" NOT NULL,
    timezone text NOT NULL DEFAULT 'UTC',
    misfire text NOT NULL DEFAULT 'fire_once',
    max_catchup integer NOT NULL DEFAULT 100,
    priority integer NOT NULL DEFAULT 0,
    max_retries integer,
    paused boolean NOT NULL DEFAULT false,
    next_run_at timestamptz,
    last_run_at timestamptz,
    last_job_id text,
    claimed_by text,
    claim_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {{schema}}.{{table_recurring}} IS
    'Recurring (cron) templates shared by all servers; a due tick is claimed, its jobs '
    'enqueued and the template parked at its next tick.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.id IS 'Template id chosen by the application.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.cron IS 'Cron expression (6 fields with seconds, or 5).';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.method IS 'Worker method of the jobs it creates.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.args IS 'JSON arguments of the jobs it creates.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.queue IS 'Queue of the jobs it creates.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.timezone IS 'Time zone the cron expression is read in.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.misfire IS 'What to do about ticks missed while no server ran.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.max_catchup IS 'Most missed ticks fired at once (fire_all).';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.priority IS 'Priority of the jobs it creates.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.max_retries IS 'Retry limit of the jobs it creates.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.paused IS 'A paused template fires no ticks.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.next_run_at IS 'Next tick (database time).';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.last_run_at IS 'Last tick fired.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.last_job_id IS 'Job created by the last tick.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.claimed_by IS 'server#token of the server firing the due tick.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.claim_expires_at IS 'When an unfinished claim may be taken over.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.created_at IS 'When the template was first stored.';
COMMENT ON COLUMN {{schema}}.{{table_recurring}}.updated_at IS 'Last change of the template.';

CREATE TABLE {{schema}}.{{table_servers}} (
    id text COLLATE "C" PRIMARY KEY,
    hostname text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0,
    queues text[] NOT NULL DEFAULT '{}',
    worker_count integer NOT NULL DEFAULT 0,
    busy integer NOT NULL DEFAULT 0,
    version text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    current_jobs text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE {{schema}}.{{table_servers}} IS
    'Running servers, refreshed by their heartbeats; silent ones are pruned.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.id IS 'Server id (ServerConfig name).';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.hostname IS 'Host the server runs on.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.pid IS 'Process id of the server.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.queues IS 'Queues it claims from, in priority order.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.worker_count IS 'Concurrent jobs it may run.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.busy IS 'Jobs it was running at the last heartbeat.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.version IS 'qml version of the server.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.started_at IS 'When the server started.';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.heartbeat_at IS 'Last heartbeat (database time).';
COMMENT ON COLUMN {{schema}}.{{table_servers}}.current_jobs IS 'Ids of the jobs it was running.';

CREATE TABLE {{schema}}.{{table_paused_queues}} (
    queue text COLLATE "C" PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {{schema}}.{{table_paused_queues}} IS 'Queues no server claims from.';
COMMENT ON COLUMN {{schema}}.{{table_paused_queues}}.queue IS 'Queue name.';
COMMENT ON COLUMN {{schema}}.{{table_paused_queues}}.paused_at IS 'When the queue was paused.';

CREATE UNLOGGED TABLE {{schema}}.{{table_parked}} (
    park_id text COLLATE "C" PRIMARY KEY,
    server_id text NOT NULL,
    queues text[] NOT NULL,
    lease_seconds double precision NOT NULL,
    tokens text[] NOT NULL,
    channel text NOT NULL,
    parked_at timestamptz NOT NULL,
    parked_until timestamptz NOT NULL
);
COMMENT ON TABLE {{schema}}.{{table_parked}} IS
    'Claims parked by idle servers: an enqueue of ready jobs claims them for the longest-parked one.';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.park_id IS 'Id of this parking (one wait of one server).';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.server_id IS 'Server the job is claimed for.';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.queues IS 'Queues the server claims from.';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.lease_seconds IS 'Lease of a job claimed for it.';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.tokens IS 'Lease tokens of the jobs claimed for it (as many as it takes).';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.channel IS 'NOTIFY channel the server listens on for the job.';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.parked_at IS 'When it parked (the longest-parked is served first).';
COMMENT ON COLUMN {{schema}}.{{table_parked}}.parked_until IS 'End of the parking: no hand-off after it.';
