-- qml SQLite schema, version 1.
--
-- Applied by SqliteStorage at open, inside one BEGIN IMMEDIATE transaction;
-- every statement is idempotent, so several processes may open the same file
-- at once. Times are REAL epoch seconds (UTC); JSON values are stored as text.

CREATE TABLE IF NOT EXISTS qml_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- schema_version: the version of this file; wake_seq: bumped by every change
-- that makes work available (enqueue, release, recovery, activation, resume),
-- so waiters in other processes can tell new work from other writes.
INSERT OR IGNORE INTO qml_meta (key, value) VALUES ('schema_version', 1), ('wake_seq', 0);

CREATE TABLE IF NOT EXISTS qml_jobs (
    id               TEXT PRIMARY KEY NOT NULL,   -- UUIDv7: sorts by creation time
    method           TEXT NOT NULL,
    args             TEXT NOT NULL,               -- JSON
    queue            TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,  -- higher runs first
    max_retries      INTEGER,
    run_at           REAL,
    timeout          REAL,
    dedup_key        TEXT,
    meta             TEXT NOT NULL DEFAULT '{}',  -- JSON object
    state            TEXT NOT NULL,               -- JobState value
    attempts         INTEGER NOT NULL DEFAULT 0,
    crashes          INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL,
    enqueued_at      REAL,                        -- when it last became Enqueued
    started_at       REAL,
    finished_at      REAL,
    expires_at       REAL,
    error_type       TEXT,
    error            TEXT,
    traceback        TEXT,
    result           TEXT,                        -- JSON, NULL for None
    server_id        TEXT,
    lease_token      TEXT,                        -- fencing token of the holder
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress         REAL,
    history          TEXT NOT NULL DEFAULT '[]'   -- JSON array of state changes
);

-- Claiming: only Enqueued rows, in claim order.
CREATE INDEX IF NOT EXISTS qml_jobs_claim
    ON qml_jobs (queue, priority DESC, enqueued_at, id) WHERE state = 'enqueued';
-- Enqueued jobs that were running when a worker died (crashes > 0), in claim order:
-- a claim bounded in suspects finds the few it may take without walking a queue.
CREATE INDEX IF NOT EXISTS qml_jobs_suspects
    ON qml_jobs (queue, priority DESC, enqueued_at, id) WHERE state = 'enqueued' AND crashes > 0;
-- Oldest Enqueued job per queue, by the time it became Enqueued (dashboard).
DROP INDEX IF EXISTS qml_jobs_oldest;
CREATE INDEX IF NOT EXISTS qml_jobs_oldest_enqueued
    ON qml_jobs (queue, enqueued_at) WHERE state = 'enqueued';
-- Activation of due Scheduled / AwaitingRetry jobs.
CREATE INDEX IF NOT EXISTS qml_jobs_due
    ON qml_jobs (run_at) WHERE state IN ('scheduled', 'awaiting_retry');
-- Recovery of expired leases.
CREATE INDEX IF NOT EXISTS qml_jobs_lease
    ON qml_jobs (lease_expires_at) WHERE state = 'processing';
-- Cleanup of expired final jobs.
CREATE INDEX IF NOT EXISTS qml_jobs_expiry
    ON qml_jobs (expires_at) WHERE state IN ('succeeded', 'failed', 'deleted');
-- List filters, each keyed on id for keyset pagination.
CREATE INDEX IF NOT EXISTS qml_jobs_state ON qml_jobs (state, id);
CREATE INDEX IF NOT EXISTS qml_jobs_queue ON qml_jobs (queue, state, id);
DROP INDEX IF EXISTS qml_jobs_method;
CREATE INDEX IF NOT EXISTS qml_jobs_method_state ON qml_jobs (method, state, id);

-- Job counts per (queue, state), changed in the same transaction as the jobs.
CREATE TABLE IF NOT EXISTS qml_counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

-- Succeeded / failed attempts per minute (minute = epoch seconds // 60).
CREATE TABLE IF NOT EXISTS qml_minute_stats (
    minute    INTEGER PRIMARY KEY NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0
);

-- Deduplication keys outlive their jobs; only prune() drops them.
CREATE TABLE IF NOT EXISTS qml_dedup (
    key        TEXT PRIMARY KEY NOT NULL,
    job_id     TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS qml_dedup_created ON qml_dedup (created_at);

CREATE TABLE IF NOT EXISTS qml_recurring (
    id               TEXT PRIMARY KEY NOT NULL,
    cron             TEXT NOT NULL,
    method           TEXT NOT NULL,
    args             TEXT NOT NULL,   -- JSON
    queue            TEXT NOT NULL,
    timezone         TEXT NOT NULL,
    misfire          TEXT NOT NULL,
    max_catchup      INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    max_retries      INTEGER,
    paused           INTEGER NOT NULL DEFAULT 0,
    next_run_at      REAL,
    last_run_at      REAL,
    last_job_id      TEXT,
    claimed_by       TEXT,            -- "<server>#<token>" while a server holds it
    claim_expires_at REAL,
    created_at       REAL,
    updated_at       REAL
);

CREATE TABLE IF NOT EXISTS qml_servers (
    id           TEXT PRIMARY KEY NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT NOT NULL,       -- JSON array
    worker_count INTEGER NOT NULL,
    busy         INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   REAL,
    heartbeat_at REAL,
    current_jobs TEXT NOT NULL        -- JSON array
);

CREATE TABLE IF NOT EXISTS qml_paused_queues (
    queue TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
