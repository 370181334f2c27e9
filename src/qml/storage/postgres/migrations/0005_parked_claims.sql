-- qml migration 0005: claims parked by idle servers, handed over at enqueue.
--
-- An idle server that found nothing to claim parks its claim here; an enqueue of
-- ready jobs takes the longest-parked row whose queues hold one of theirs, writes
-- up to its limit of them straight to Processing with the row's lease tokens,
-- deletes the row and sends the jobs to the server (pg_notify on the row's
-- channel, at commit). UNLOGGED: parkings live for seconds and a crash forgets them (a
-- server whose parking vanished finds by its tokens whether it was handed jobs).
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
