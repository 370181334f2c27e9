-- Named queries of the SQLite backend, loaded once by sql.py.
--
-- Each query starts at a "-- name: <name>" header and runs to the next one.
-- {job_columns} and {brief_columns} are replaced at load time by the column
-- lists that codec.py decodes. Parameters are numbered (?1, ?2, ...) so a
-- value can be used twice; the comment under each header says what they are.
-- Every write runs inside a BEGIN IMMEDIATE transaction opened by the caller.

-- name: read_meta
-- ?1 key
SELECT value FROM qml_meta WHERE key = ?1;

-- name: bump_wake_seq
-- New work is available: tell waiters in other processes.
UPDATE qml_meta SET value = value + 1 WHERE key = 'wake_seq' RETURNING value;

-- name: bump_counts
-- ?1 queue, ?2 state, ?3 delta
INSERT INTO qml_counts (queue, state, n) VALUES (?1, ?2, ?3)
ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n;

-- name: bump_minute
-- ?1 minute, ?2 succeeded delta, ?3 failed delta
INSERT INTO qml_minute_stats (minute, succeeded, failed) VALUES (?1, ?2, ?3)
ON CONFLICT (minute) DO UPDATE SET
    succeeded = succeeded + excluded.succeeded,
    failed = failed + excluded.failed;

-- name: insert_job
INSERT INTO qml_jobs (
    id, method, args, queue, priority, max_retries, run_at, timeout, dedup_key, meta,
    state, attempts, crashes, created_at, updated_at, enqueued_at, started_at,
    finished_at, expires_at, error_type, error, traceback, result, server_id,
    lease_token, lease_expires_at, cancel_requested, progress, history
) VALUES (
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
);

-- name: insert_dedup
-- ?1 key, ?2 job id, ?3 created_at; a used key violates the primary key.
INSERT INTO qml_dedup (key, job_id, created_at) VALUES (?1, ?2, ?3);

-- name: insert_dedup_if_new
-- As insert_dedup, but a used key inserts nothing (rowcount 0).
INSERT INTO qml_dedup (key, job_id, created_at) VALUES (?1, ?2, ?3)
ON CONFLICT (key) DO NOTHING;

-- name: paused_queues
SELECT queue FROM qml_paused_queues ORDER BY queue;

-- name: claim_jobs
-- Claim up to ?2 Enqueued jobs of queue ?1 in claim order. ?3 now, ?4 server id,
-- ?5 token prefix (random per call; the rowid makes each token unique),
-- ?6 lease deadline, ?7 history entry without its attempt number and closing brace,
-- ?8 how many suspects (crashes >= ?9, ?9 >= 1) it may take, in claim order (-1: any
-- number); the others are passed over and keep their place.
UPDATE qml_jobs SET
    state = 'processing',
    attempts = attempts + 1,
    started_at = ?3,
    updated_at = ?3,
    server_id = ?4,
    lease_token = ?5 || printf('%x', rowid),
    lease_expires_at = ?6,
    cancel_requested = 0,
    history = json_insert(history, '$[#]', json(?7 || (attempts + 1) || '}'))
WHERE rowid IN (
    SELECT rowid FROM qml_jobs INDEXED BY qml_jobs_claim
    WHERE state = 'enqueued' AND queue = ?1 AND (crashes < ?9 OR ?8 < 0 OR rowid IN (
        SELECT rowid FROM qml_jobs INDEXED BY qml_jobs_suspects
        WHERE state = 'enqueued' AND crashes > 0 AND crashes >= ?9 AND queue = ?1
        ORDER BY priority DESC, enqueued_at, id
        LIMIT ?8
    ))
    ORDER BY priority DESC, enqueued_at, id
    LIMIT ?2
)
RETURNING {job_columns};

-- name: select_jobs
-- The brief rows of the ids in the JSON array ?1.
SELECT {brief_columns} FROM qml_jobs WHERE id IN (SELECT value FROM json_each(?1));

-- name: finish_job
-- ?1 id, ?2 token, ?3 new state, ?4 now, ?5 1 for a release (attempt not counted),
-- ?6 1 to set the result, ?7 result JSON, ?8 1 if final, ?9 expires_at,
-- ?10 1 to set the error, ?11 error type, ?12 message, ?13 traceback,
-- ?14 new run_at (NULL keeps it), ?15 history entry JSON.
UPDATE qml_jobs SET
    state = ?3,
    updated_at = ?4,
    attempts = max(0, attempts - ?5),
    result = CASE WHEN ?6 THEN ?7 ELSE result END,
    finished_at = CASE WHEN ?8 THEN ?4 ELSE finished_at END,
    expires_at = CASE WHEN ?8 THEN ?9 ELSE expires_at END,
    error_type = CASE WHEN ?10 THEN ?11 ELSE error_type END,
    error = CASE WHEN ?10 THEN ?12 ELSE error END,
    traceback = CASE WHEN ?10 THEN ?13 ELSE traceback END,
    run_at = coalesce(?14, run_at),
    enqueued_at = CASE WHEN ?3 = 'enqueued' THEN ?4 ELSE enqueued_at END,
    server_id = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    cancel_requested = 0,
    history = json_insert(history, '$[#]', json(?15))
WHERE id = ?1 AND state = 'processing' AND lease_token = ?2;

-- name: extend_lease
-- ?1 id, ?2 token, ?3 new lease deadline
UPDATE qml_jobs SET lease_expires_at = ?3
WHERE id = ?1 AND state = 'processing' AND lease_token = ?2;

-- name: select_expired_leases
-- ?1 now, ?2 limit
SELECT {brief_columns} FROM qml_jobs INDEXED BY qml_jobs_lease
WHERE state = 'processing' AND lease_expires_at <= ?1
ORDER BY lease_expires_at
LIMIT ?2;

-- name: recover_job
-- ?1 id, ?2 token it had, ?3 new state, ?4 now, ?5 new run_at (NULL keeps it),
-- ?6 error message (when Failed), ?7 expires_at (when Failed), ?8 history entry JSON.
-- The job keeps its place in the queue: enqueued_at is not stamped again.
UPDATE qml_jobs SET
    state = ?3,
    updated_at = ?4,
    crashes = crashes + 1,
    run_at = coalesce(?5, run_at),
    enqueued_at = CASE WHEN ?3 = 'enqueued' THEN coalesce(enqueued_at, ?4) ELSE enqueued_at END,
    error_type = CASE WHEN ?3 = 'failed' THEN 'WorkerCrashed' ELSE error_type END,
    error = CASE WHEN ?3 = 'failed' THEN ?6 ELSE error END,
    traceback = CASE WHEN ?3 = 'failed' THEN NULL ELSE traceback END,
    finished_at = CASE WHEN ?3 = 'failed' THEN ?4 ELSE finished_at END,
    expires_at = CASE WHEN ?3 = 'failed' THEN ?7 ELSE expires_at END,
    server_id = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    cancel_requested = 0,
    history = json_insert(history, '$[#]', json(?8))
WHERE id = ?1 AND state = 'processing' AND lease_token IS ?2;

-- name: select_due
-- ?1 now, ?2 limit
SELECT {brief_columns} FROM qml_jobs INDEXED BY qml_jobs_due
WHERE state IN ('scheduled', 'awaiting_retry') AND run_at <= ?1
ORDER BY run_at
LIMIT ?2;

-- name: activate_job
-- ?1 id, ?2 state it had, ?3 now, ?4 history entry JSON. A job that waited out a
-- crash backoff (AwaitingRetry by reason lease_expired) keeps its place in the
-- queue; any other job joins the back.
UPDATE qml_jobs SET
    state = 'enqueued',
    updated_at = ?3,
    enqueued_at = CASE
        WHEN ?2 = 'awaiting_retry' AND json_extract(history, '$[#-1].reason') = 'lease_expired'
        THEN coalesce(enqueued_at, ?3) ELSE ?3 END,
    history = json_insert(history, '$[#]', json(?4))
WHERE id = ?1 AND state = ?2;

-- name: transition_job
-- ?1 id, ?2 state it had, ?3 new state, ?4 now, ?5 expires_at (NULL clears it),
-- ?6 1 to stamp finished_at, ?7 1 to reset attempts and crashes,
-- ?8 1 to set run_at, ?9 new run_at, ?10 history entry JSON.
UPDATE qml_jobs SET
    state = ?3,
    updated_at = ?4,
    expires_at = ?5,
    finished_at = CASE WHEN ?6 THEN ?4 ELSE finished_at END,
    attempts = CASE WHEN ?7 THEN 0 ELSE attempts END,
    crashes = CASE WHEN ?7 THEN 0 ELSE crashes END,
    run_at = CASE WHEN ?8 THEN ?9 ELSE run_at END,
    enqueued_at = CASE WHEN ?3 = 'enqueued' THEN ?4 ELSE enqueued_at END,
    history = json_insert(history, '$[#]', json(?10))
WHERE id = ?1 AND state = ?2;

-- name: request_cancel
-- ?1 id
UPDATE qml_jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'processing';

-- name: get_job
-- ?1 id
SELECT {job_columns} FROM qml_jobs WHERE id = ?1;

-- name: list_jobs
-- The filters, keyset condition, order and limit are appended by the caller.
SELECT {job_columns} FROM qml_jobs

-- name: counts
SELECT queue, state, n FROM qml_counts WHERE n != 0;

-- name: minute_stats
-- ?1 first minute, ?2 last minute
SELECT minute, succeeded, failed FROM qml_minute_stats WHERE minute BETWEEN ?1 AND ?2;

-- name: oldest_enqueued
-- ?1 JSON array of queue names; the time is NULL for a queue with no Enqueued job.
SELECT q.value, (
    SELECT min(enqueued_at) FROM qml_jobs INDEXED BY qml_jobs_oldest_enqueued
    WHERE state = 'enqueued' AND queue = q.value
)
FROM json_each(?1) AS q;

-- name: pause_queue
-- ?1 queue
INSERT INTO qml_paused_queues (queue) VALUES (?1) ON CONFLICT (queue) DO NOTHING;

-- name: resume_queue
-- ?1 queue
DELETE FROM qml_paused_queues WHERE queue = ?1;

-- name: upsert_recurring
-- ?1..?16 the template's columns up to claim_expires_at, ?17 now. A replaced
-- template keeps its claim and creation time, and its last run unless given.
INSERT INTO qml_recurring (
    id, cron, method, args, queue, timezone, misfire, max_catchup, priority, max_retries,
    paused, next_run_at, last_run_at, last_job_id, claimed_by, claim_expires_at,
    created_at, updated_at
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17)
ON CONFLICT (id) DO UPDATE SET
    cron = excluded.cron,
    method = excluded.method,
    args = excluded.args,
    queue = excluded.queue,
    timezone = excluded.timezone,
    misfire = excluded.misfire,
    max_catchup = excluded.max_catchup,
    priority = excluded.priority,
    max_retries = excluded.max_retries,
    paused = excluded.paused,
    next_run_at = excluded.next_run_at,
    last_job_id = CASE WHEN excluded.last_run_at IS NULL THEN qml_recurring.last_job_id
                       ELSE excluded.last_job_id END,
    last_run_at = coalesce(excluded.last_run_at, qml_recurring.last_run_at),
    updated_at = excluded.updated_at;

-- name: get_recurring
-- ?1 id
SELECT {recurring_columns} FROM qml_recurring WHERE id = ?1;

-- name: list_recurring
SELECT {recurring_columns} FROM qml_recurring ORDER BY id;

-- name: remove_recurring
-- ?1 id
DELETE FROM qml_recurring WHERE id = ?1;

-- name: set_recurring_paused
-- ?1 id, ?2 paused (0/1), ?3 now
UPDATE qml_recurring SET paused = ?2, updated_at = ?3 WHERE id = ?1;

-- name: select_due_recurring
-- ?1 now, ?2 limit: due, not paused, and not held by a live claim.
SELECT {recurring_columns} FROM qml_recurring
WHERE paused = 0 AND next_run_at IS NOT NULL AND next_run_at <= ?1
  AND (claimed_by IS NULL OR claim_expires_at IS NULL OR claim_expires_at <= ?1)
ORDER BY id
LIMIT ?2;

-- name: claim_recurring
-- ?1 id, ?2 claimed_by ("<server>#<token>"), ?3 claim deadline
UPDATE qml_recurring SET claimed_by = ?2, claim_expires_at = ?3 WHERE id = ?1;

-- name: recurring_claimed_by
-- ?1 id
SELECT claimed_by FROM qml_recurring WHERE id = ?1;

-- name: park_recurring
-- ?1 id, ?2 next_run_at, ?3 last_run_at (NULL keeps it), ?4 last job id (NULL keeps it)
UPDATE qml_recurring SET
    claimed_by = NULL,
    claim_expires_at = NULL,
    next_run_at = ?2,
    last_run_at = coalesce(?3, last_run_at),
    last_job_id = coalesce(?4, last_job_id)
WHERE id = ?1;

-- name: delete_expired
-- ?1 now, ?2 limit
DELETE FROM qml_jobs WHERE rowid IN (
    SELECT rowid FROM qml_jobs INDEXED BY qml_jobs_expiry
    WHERE state IN ('succeeded', 'failed', 'deleted') AND expires_at <= ?1
    ORDER BY expires_at
    LIMIT ?2
)
RETURNING queue, state;

-- name: drop_zero_counts
DELETE FROM qml_counts WHERE n = 0;

-- name: prune_dedup
-- ?1 cutoff (epoch seconds)
DELETE FROM qml_dedup WHERE created_at < ?1;

-- name: prune_minutes
-- ?1 first minute to keep
DELETE FROM qml_minute_stats WHERE minute < ?1;

-- name: heartbeat_server
-- ?1 id, ?2 hostname, ?3 pid, ?4 queues JSON, ?5 worker_count, ?6 busy, ?7 version,
-- ?8 started_at (NULL keeps the first one), ?9 now, ?10 current jobs JSON
INSERT INTO qml_servers (
    id, hostname, pid, queues, worker_count, busy, version, started_at, heartbeat_at,
    current_jobs
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(?8, ?9), ?9, ?10)
ON CONFLICT (id) DO UPDATE SET
    hostname = excluded.hostname,
    pid = excluded.pid,
    queues = excluded.queues,
    worker_count = excluded.worker_count,
    busy = excluded.busy,
    version = excluded.version,
    started_at = coalesce(?8, qml_servers.started_at, ?9),
    heartbeat_at = excluded.heartbeat_at,
    current_jobs = excluded.current_jobs;

-- name: remove_server
-- ?1 id
DELETE FROM qml_servers WHERE id = ?1;

-- name: list_servers
SELECT id, hostname, pid, queues, worker_count, busy, version, started_at, heartbeat_at,
       current_jobs
FROM qml_servers ORDER BY id;

-- name: prune_servers
-- ?1 cutoff (epoch seconds)
DELETE FROM qml_servers WHERE heartbeat_at IS NOT NULL AND heartbeat_at < ?1;
