-- qml migration 0002: recurring templates, server registry, paused queues.

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
