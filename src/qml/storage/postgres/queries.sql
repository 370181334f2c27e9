-- Named queries of PostgresStorage. Each starts at a "-- name: <name>" line; a
-- "-- part: <name>" line starts a piece of text that queries share, written into
-- them where they say {{part_<name>}} (sql.py).
-- Placeholders are replaced by quoted identifiers (sql.py); values are always
-- bound parameters. Guards on rows found by id compare "state::text": that
-- keeps the planner on the primary key whatever the (volatile) statistics of a
-- queue table say, instead of scanning every row of a state through an index.
-- Parameters named "now" fall back to the database clock: coalesce($n, now()).

-- part: enqueue_rows
-- The common table expressions "t" (the transaction's time, one timestamp for the
-- whole batch, also for a batch streamed in chunks, and the first history entries
-- built once from it) and "src" (the jobs of $1, rows.enqueue_json, each Enqueued
-- or Scheduled by that time) of the enqueue statements.
t AS (
    SELECT at,
           {{schema}}.{{table_history_entry}}('enqueued', at, 'enqueued', NULL, 0) AS h_enqueued,
           {{schema}}.{{table_history_entry}}('scheduled', at, 'scheduled', NULL, 0) AS h_scheduled
    FROM (SELECT now() AS at) AS clock
), src AS (
    SELECT s.*, CASE WHEN s.run_at > t.at THEN 'scheduled' ELSE 'enqueued' END AS state
    FROM t, json_to_recordset($1::json)
        AS s(id text, method text, args json, queue text, priority int, max_retries int,
             run_at timestamptz, timeout float8, dedup_key text, meta json)
)

-- part: enqueue_insert
-- The jobs of "src" inserted into the job table (after "enqueue_rows"); a JSON null
-- argument comes out of json_to_recordset as SQL NULL, hence the coalesce.
INSERT INTO {{schema}}.{{table}} (id, method, args, queue, priority, max_retries, run_at,
    timeout, dedup_key, meta, state, created_at, updated_at, enqueued_at, history)
SELECT id, method, coalesce(args, 'null'), queue, priority, max_retries, run_at, timeout,
       dedup_key, meta, state::{{schema}}.{{table_state}}, t.at, t.at,
       CASE WHEN state = 'enqueued' THEN t.at END,
       CASE WHEN state = 'enqueued' THEN t.h_enqueued ELSE t.h_scheduled END
FROM src, t

-- name: enqueue
-- Insert jobs and their dedup keys in one statement: a used key or id raises a
-- unique violation and nothing is written. $1 is one JSON array with an object
-- per job (rows.enqueue_json): a single parameter costs the client far less to
-- encode than one array per column, and the arguments arrive as the exact JSON
-- text the client encoded. Times come from the database clock (the transaction's
-- timestamp: one for the whole batch, also when PostgresStorage._enqueue_batch
-- sends a long batch as several of these statements in one transaction), and so
-- does the choice between Enqueued and Scheduled; the first history entry is
-- therefore built once per statement ("enqueue_rows").
WITH {{part_enqueue_rows}}, dedup AS (
    INSERT INTO {{schema}}.{{table_dedup}} (key, job_id, created_at)
    SELECT dedup_key, id, t.at FROM src, t WHERE dedup_key IS NOT NULL
)
{{part_enqueue_insert}}

-- name: enqueue_probe
-- "enqueue" for jobs without dedup keys when the last look found no server parked
-- for their queues (PostgresStorage._enqueue): the insert of "enqueue", and a row
-- telling whether a server is parked now for a queue the jobs are ready in (not
-- paused), so that the next enqueue hands off again. A hint, not a lock: a server
-- that parks after this statement's snapshot is woken by the insert trigger's
-- NOTIFY and claims the jobs itself, as without the hand-off.
WITH {{part_enqueue_rows}}, ins AS (
{{part_enqueue_insert}}
)
SELECT EXISTS (
    SELECT 1 FROM {{schema}}.{{table_parked}} k, t
    WHERE k.parked_until > t.at
      AND k.queues && ARRAY(
          SELECT src.queue FROM src
          WHERE src.state = 'enqueued' AND NOT EXISTS (
              SELECT 1 FROM {{schema}}.{{table_paused_queues}} q WHERE q.queue = src.queue))
) AS parked

-- name: enqueue_hand_off
-- "enqueue" that hands ready jobs to a parked server (see "park"): the
-- longest-parked server whose queues take any of them gets up to its limit (its
-- queues in order, then priority, then the order given), written straight to
-- Processing with the parking's lease tokens; the parking is deleted and the jobs
-- are sent to the server on its channel at commit, as one JSON array (empty when
-- it would not fit a notification: the server then reads them by token). SKIP
-- LOCKED: a parking another enqueue is taking is passed over. A row back: how many
-- jobs were handed over. Not for jobs with a dedup key (no dedup keys are written
-- here): an insert waiting on a key another transaction holds would hold the
-- parking, and its server, as long.
WITH t AS (
    SELECT at,
           {{schema}}.{{table_history_entry}}('enqueued', at, 'enqueued', NULL, 0) AS h_enqueued,
           {{schema}}.{{table_history_entry}}('scheduled', at, 'scheduled', NULL, 0) AS h_scheduled
    FROM (SELECT now() AS at) AS clock
), src AS (
    SELECT s.*, CASE WHEN s.run_at > t.at THEN 'scheduled' ELSE 'enqueued' END AS state
    FROM t, ROWS FROM (json_to_recordset($1::json)
        AS (id text, method text, args json, queue text, priority int, max_retries int,
            run_at timestamptz, timeout float8, dedup_key text, meta json))
        WITH ORDINALITY AS s(id, method, args, queue, priority, max_retries, run_at, timeout,
                             dedup_key, meta, pos)
), ready AS (
    SELECT array_agg(x.queue) AS queues FROM (
        SELECT DISTINCT src.queue FROM src WHERE src.state = 'enqueued'
    ) x
    WHERE NOT EXISTS (
        SELECT 1 FROM {{schema}}.{{table_paused_queues}} q WHERE q.queue = x.queue)
), p AS (
    SELECT k.park_id, k.server_id, k.queues, k.lease_seconds, k.tokens, k.channel
    FROM {{schema}}.{{table_parked}} k, t, ready
    WHERE k.parked_until > t.at AND k.queues && ready.queues
    ORDER BY k.parked_at
    LIMIT 1
    FOR UPDATE OF k SKIP LOCKED
), pick AS (
    SELECT x.id, x.rn FROM (
        SELECT src.id, row_number() OVER (
            ORDER BY array_position(p.queues, src.queue), src.priority DESC, src.pos) AS rn
        FROM p, ready, src
        WHERE src.state = 'enqueued' AND src.queue = ANY (p.queues)
          AND src.queue = ANY (ready.queues)
    ) x, p
    WHERE x.rn <= cardinality(p.tokens)
), taken AS (
    DELETE FROM {{schema}}.{{table_parked}} k USING p WHERE k.park_id = p.park_id
), ins AS (
    INSERT INTO {{schema}}.{{table}} AS j (id, method, args, queue, priority, max_retries,
        run_at, timeout, dedup_key, meta, state, created_at, updated_at, enqueued_at, history,
        attempts, started_at, server_id, lease_token, lease_expires_at)
    SELECT src.id, src.method, coalesce(src.args, 'null'), src.queue, src.priority,
           src.max_retries, src.run_at, src.timeout, src.dedup_key, src.meta,
           (CASE WHEN pick.rn IS NOT NULL THEN 'processing' ELSE src.state END)
               ::{{schema}}.{{table_state}},
           t.at, t.at,
           CASE WHEN src.state = 'enqueued' THEN t.at END,
           CASE WHEN pick.rn IS NOT NULL THEN t.h_enqueued
                    || {{schema}}.{{table_history_entry}}('processing', t.at, NULL, p.server_id, 1)
                WHEN src.state = 'enqueued' THEN t.h_enqueued
                ELSE t.h_scheduled END,
           CASE WHEN pick.rn IS NOT NULL THEN 1 ELSE 0 END,
           CASE WHEN pick.rn IS NOT NULL THEN t.at END,
           CASE WHEN pick.rn IS NOT NULL THEN p.server_id END,
           p.tokens[pick.rn],
           CASE WHEN pick.rn IS NOT NULL THEN t.at + p.lease_seconds * interval '1 second' END
    FROM src CROSS JOIN t LEFT JOIN pick ON pick.id = src.id LEFT JOIN p ON pick.rn IS NOT NULL
    RETURNING j.lease_token, CASE WHEN j.lease_token IS NOT NULL THEN {{job_json}} END AS job
), sent AS (
    SELECT '[' || string_agg(ins.job, ',' ORDER BY array_position(p.tokens, ins.lease_token))
           || ']' AS jobs, count(*) AS n
    FROM ins, p WHERE ins.lease_token IS NOT NULL
)
SELECT pg_notify(p.channel, p.park_id || ' '
                 || CASE WHEN octet_length(sent.jobs) < 7900 THEN sent.jobs ELSE '' END),
       sent.n AS handed
FROM sent, p WHERE sent.jobs IS NOT NULL

-- name: enqueue_hand_off_one
-- "enqueue_hand_off" for one job, in fewer steps (no ranking, no aggregate). Not
-- for a job with a dedup key either (neither writes dedup keys).
WITH {{part_enqueue_rows}}, p AS (
    SELECT k.park_id, k.server_id, k.lease_seconds, k.tokens, k.channel
    FROM {{schema}}.{{table_parked}} k, src, t
    WHERE src.state = 'enqueued' AND k.parked_until > t.at AND src.queue = ANY (k.queues)
      AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.{{table_paused_queues}} q WHERE q.queue = src.queue)
    ORDER BY k.parked_at
    LIMIT 1
    FOR UPDATE OF k SKIP LOCKED
), taken AS (
    DELETE FROM {{schema}}.{{table_parked}} k USING p WHERE k.park_id = p.park_id
), ins AS (
    INSERT INTO {{schema}}.{{table}} AS j (id, method, args, queue, priority, max_retries,
        run_at, timeout, dedup_key, meta, state, created_at, updated_at, enqueued_at, history,
        attempts, started_at, server_id, lease_token, lease_expires_at)
    SELECT src.id, src.method, coalesce(src.args, 'null'), src.queue, src.priority,
           src.max_retries, src.run_at, src.timeout, src.dedup_key, src.meta,
           (CASE WHEN p.park_id IS NOT NULL THEN 'processing' ELSE src.state END)
               ::{{schema}}.{{table_state}},
           t.at, t.at,
           CASE WHEN src.state = 'enqueued' THEN t.at END,
           CASE WHEN p.park_id IS NOT NULL THEN t.h_enqueued
                    || {{schema}}.{{table_history_entry}}('processing', t.at, NULL, p.server_id, 1)
                WHEN src.state = 'enqueued' THEN t.h_enqueued
                ELSE t.h_scheduled END,
           CASE WHEN p.park_id IS NOT NULL THEN 1 ELSE 0 END,
           CASE WHEN p.park_id IS NOT NULL THEN t.at END,
           p.server_id, p.tokens[1], t.at + p.lease_seconds * interval '1 second'
    FROM src CROSS JOIN t LEFT JOIN p ON true
    RETURNING CASE WHEN j.lease_token IS NOT NULL THEN {{job_json}} END AS job
)
SELECT pg_notify(p.channel, p.park_id || ' '
                 || CASE WHEN octet_length(ins.job) < 7900 THEN '[' || ins.job || ']' ELSE '' END),
       1 AS handed
FROM p, ins WHERE ins.job IS NOT NULL

-- name: enqueue_skip_used
-- Recurring ticks: jobs stamped by the caller (the claim's time); those whose
-- dedup key was used before are skipped.
WITH src AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                         $7::timestamptz[], $8::float8[], $9::text[], $10::text[], $11::text[],
                         $12::timestamptz[], $13::timestamptz[], $14::text[])
        AS s(id, method, args, queue, priority, max_retries, run_at, timeout, dedup_key, meta,
             state, created_at, enqueued_at, history)
), dedup AS (
    INSERT INTO {{schema}}.{{table_dedup}} (key, job_id, created_at)
    SELECT dedup_key, id, created_at FROM src WHERE dedup_key IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
)
INSERT INTO {{schema}}.{{table}} (id, method, args, queue, priority, max_retries, run_at,
    timeout, dedup_key, meta, state, created_at, updated_at, enqueued_at, history)
SELECT id, method, args::json, queue, priority, max_retries, run_at, timeout, dedup_key,
       meta::json, state::{{schema}}.{{table_state}}, created_at, created_at, enqueued_at,
       history::jsonb
FROM src WHERE dedup_key IS NULL OR id IN (SELECT job_id FROM dedup)
RETURNING id

-- name: claim
-- $1 server, $2 queues in priority order, $3 limit, $4 now, $5 lease seconds,
-- $6 how many suspects (crashes >= $7, $7 >= 1) it may take, NULL: any number,
-- $8 lease tokens drawn by the caller (NULL: drawn here).
-- One LATERAL probe of the claim index per queue; SKIP LOCKED lets concurrent
-- claimers pass each other; lease token and deadline come from the database.
-- Suspects beyond $6 (in claim order) are passed over and keep their place; the
-- few a queue may give are found on the suspects index, not by walking the queue.
WITH t AS (
    SELECT coalesce($4::timestamptz, now()) AS at
), q AS (
    SELECT u.name, u.ord FROM unnest($2::text[]) WITH ORDINALITY AS u(name, ord)
    WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.{{table_paused_queues}} p WHERE p.queue = u.name)
), s AS (
    SELECT x.id FROM q CROSS JOIN LATERAL (
        SELECT j.id FROM {{schema}}.{{table}} j
        WHERE j.state = 'enqueued' AND j.crashes > 0 AND j.crashes >= $7::int
          AND j.queue = q.name
        ORDER BY j.priority DESC, j.enqueued_at, j.id
        LIMIT $6::int
    ) x
), picked AS (
    SELECT c.id, c.crashes,
           row_number() OVER (ORDER BY q.ord, c.priority DESC, c.enqueued_at, c.id) AS rn
    FROM q CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.enqueued_at, j.crashes FROM {{schema}}.{{table}} j
        WHERE j.state = 'enqueued' AND j.queue = q.name
          AND (j.crashes < $7::int OR $6::int IS NULL OR j.id IN (SELECT s.id FROM s))
        ORDER BY j.priority DESC, j.enqueued_at, j.id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY q.ord, c.priority DESC, c.enqueued_at, c.id
    LIMIT $3
), kept AS (
    SELECT k.id, k.rn FROM (
        SELECT p.id, p.rn, p.crashes,
               count(*) FILTER (WHERE p.crashes >= $7::int) OVER (ORDER BY p.rn) AS nth_suspect
        FROM picked p
    ) k
    WHERE k.crashes < $7::int OR $6::int IS NULL OR k.nth_suspect <= $6::int
)
UPDATE {{schema}}.{{table}} AS j SET
    state = 'processing',
    attempts = j.attempts + 1,
    started_at = t.at,
    server_id = $1,
    lease_token = coalesce(($8::text[])[kept.rn::int], gen_random_uuid()::text),
    lease_expires_at = t.at + $5::float8 * interval '1 second',
    cancel_requested = false,
    updated_at = t.at,
    history = j.history || {{schema}}.{{table_history_entry}}(
        'processing', t.at, NULL, $1, j.attempts + 1)
FROM kept, t
WHERE j.id = kept.id
RETURNING kept.rn, {{job_columns}}

-- name: park
-- A claim ($1..$8 as in "claim"; $8 the lease tokens, as many as the limit, for
-- this claim or a hand-off) that parks when it takes nothing: $9 park id, $10 NOTIFY
-- channel, $11 seconds parked. Jobs claimed here or handed over later both hold
-- those tokens, so a waiter that lost the reply finds them ("handed"). An
-- enqueue that commits after this statement's snapshot but before its commit
-- neither is claimed here nor sees the parking: it NOTIFYs the installation's
-- channel as ever, which ends the parking.
WITH claimed AS (
{{query_claim}}
), parked AS (
    INSERT INTO {{schema}}.{{table_parked}} (park_id, server_id, queues, lease_seconds, tokens,
        channel, parked_at, parked_until)
    SELECT $9, $1, $2, $5, $8, $10, now(), now() + $11::float8 * interval '1 second'
    WHERE NOT EXISTS (SELECT 1 FROM claimed)
)
SELECT * FROM claimed

-- name: unpark
-- End a parking; no row back: an enqueue took it (and claimed a job for it) or it
-- was forgotten (a crash). Waits for an enqueue holding the row to end.
DELETE FROM {{schema}}.{{table_parked}} WHERE park_id = $1 RETURNING 1

-- name: handed
-- The jobs handed to a parking whose notification was not read: by their tokens.
SELECT {{job_columns}} FROM {{schema}}.{{table}} j
WHERE j.lease_token = ANY ($1::text[]) AND j.state = 'processing'
ORDER BY array_position($1::text[], j.lease_token)

-- name: any_ready
-- Whether an Enqueued job of a queue that is not paused exists: the first wait for
-- work asks once its LISTEN is up, as a NOTIFY sent before it was not heard.
SELECT EXISTS (
    SELECT 1 FROM {{schema}}.{{table}} j
    WHERE j.state = 'enqueued' AND NOT EXISTS (
        SELECT 1 FROM {{schema}}.{{table_paused_queues}} q WHERE q.queue = j.queue)
)

-- name: prune_parked
-- Parkings past their end (their server stopped without ending them).
DELETE FROM {{schema}}.{{table_parked}}
WHERE parked_until < coalesce($1::timestamptz, now()) - interval '1 minute'

-- name: finish
-- Outcomes as one JSON array (rows.finish_json); each row applies only while the
-- job is Processing under that token. Returns the position (1-based) of each
-- applied outcome, and counts the outcomes of the minute in the same statement.
WITH o AS (
    SELECT u.*, CASE u.kind
            WHEN 'succeed' THEN 'succeeded' WHEN 'fail' THEN 'failed'
            WHEN 'retry' THEN 'awaiting_retry'
            ELSE CASE WHEN u.delay > 0 THEN 'scheduled' ELSE 'enqueued' END
        END AS target
    FROM ROWS FROM (json_to_recordset($1::json)
        AS (id text, token text, kind text, result json, error_type text, error text,
            traceback text, delay float8, ttl float8, reason text))
        WITH ORDINALITY AS u(id, token, kind, result, error_type, error, traceback, delay, ttl,
                             reason, ord)
), t AS (
    SELECT coalesce($2::timestamptz, now()) AS at
), upd AS (
    UPDATE {{schema}}.{{table}} AS j SET
        state = o.target::{{schema}}.{{table_state}},
        lease_token = NULL,
        lease_expires_at = NULL,
        server_id = NULL,
        cancel_requested = false,
        last_lease_token = j.lease_token,
        attempts = CASE WHEN o.kind = 'release' THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
        result = CASE WHEN o.kind = 'succeed' THEN o.result ELSE j.result END,
        finished_at = CASE WHEN o.kind IN ('succeed', 'fail') THEN t.at ELSE j.finished_at END,
        expires_at = CASE WHEN o.kind IN ('succeed', 'fail')
            THEN t.at + coalesce(o.ttl, 0) * interval '1 second' ELSE j.expires_at END,
        error_type = CASE WHEN o.error_type IS NOT NULL THEN o.error_type ELSE j.error_type END,
        error = CASE WHEN o.error_type IS NOT NULL THEN o.error ELSE j.error END,
        traceback = CASE WHEN o.error_type IS NOT NULL THEN o.traceback ELSE j.traceback END,
        run_at = CASE WHEN o.target IN ('awaiting_retry', 'scheduled')
            THEN t.at + o.delay * interval '1 second' ELSE j.run_at END,
        enqueued_at = CASE WHEN o.target = 'enqueued' THEN t.at ELSE j.enqueued_at END,
        updated_at = t.at,
        history = j.history || {{schema}}.{{table_history_entry}}(
            o.target, t.at, o.reason, j.server_id,
            CASE WHEN o.kind = 'release' THEN greatest(j.attempts - 1, 0) ELSE j.attempts END)
    FROM o, t
    WHERE j.id = o.id AND j.state::text = 'processing' AND j.lease_token = o.token
    RETURNING o.ord, o.target, t.at
), stats AS (
    INSERT INTO {{schema}}.{{table_minute_stats}} AS s (minute, succeeded, failed)
    SELECT to_timestamp(floor(extract(epoch FROM at) / 60) * 60),
           count(*) FILTER (WHERE target = 'succeeded'), count(*) FILTER (WHERE target = 'failed')
    FROM upd WHERE target IN ('succeeded', 'failed')
    GROUP BY 1
    ON CONFLICT (minute) DO UPDATE
        SET succeeded = s.succeeded + EXCLUDED.succeeded, failed = s.failed + EXCLUDED.failed
)
SELECT ord, target FROM upd

-- name: finish_applied
-- After a lost connection: which outcomes (id, token) were already recorded.
SELECT u.ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(id, token, ord)
JOIN {{schema}}.{{table}} j ON j.id = u.id
WHERE j.last_lease_token = u.token

-- name: extend_leases
WITH l AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS l(id, token, ord)
), t AS (
    SELECT coalesce($4::timestamptz, now()) + $3::float8 * interval '1 second' AS until
)
UPDATE {{schema}}.{{table}} AS j SET lease_expires_at = t.until
FROM l, t
WHERE j.id = l.id AND j.state::text = 'processing' AND j.lease_token = l.token
RETURNING l.ord, j.cancel_requested, j.lease_expires_at

-- name: recover_expired
-- $1 now, $2 limit, $3 max crashes, $4 crash backoff, $5 quarantine reason, $6 failed ttl.
-- Crash n waits 0 s for n = 1, else backoff * 2^(n - 2); the job keeps its place
-- in the queue (enqueued_at is not stamped again).
WITH t AS (
    SELECT coalesce($1::timestamptz, now()) AS at
), c AS (
    SELECT j.id, j.server_id, j.attempts, j.crashes + 1 AS crashes,
           CASE WHEN j.crashes < 1 THEN 0::float8
                ELSE $4::float8 * power(2::float8, least(j.crashes - 1, 1000)) END AS delay
    FROM {{schema}}.{{table}} j, t
    WHERE j.state = 'processing' AND j.lease_expires_at <= t.at
    ORDER BY j.lease_expires_at, j.id
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
), d AS (
    SELECT c.*, CASE WHEN c.crashes >= $3 THEN 'failed'
                     WHEN c.delay > 0 THEN 'awaiting_retry' ELSE 'enqueued' END AS target
    FROM c
), upd AS (
    UPDATE {{schema}}.{{table}} AS j SET
        state = d.target::{{schema}}.{{table_state}},
        crashes = d.crashes,
        lease_token = NULL,
        lease_expires_at = NULL,
        server_id = NULL,
        cancel_requested = false,
        error_type = CASE WHEN d.target = 'failed' THEN 'WorkerCrashed' ELSE j.error_type END,
        error = CASE WHEN d.target = 'failed'
            THEN $5 || ': the worker running this job died ' || d.crashes || ' times'
            ELSE j.error END,
        traceback = CASE WHEN d.target = 'failed' THEN NULL ELSE j.traceback END,
        finished_at = CASE WHEN d.target = 'failed' THEN t.at ELSE j.finished_at END,
        expires_at = CASE WHEN d.target = 'failed'
            THEN t.at + $6::float8 * interval '1 second' ELSE j.expires_at END,
        run_at = CASE WHEN d.target = 'awaiting_retry'
            THEN t.at + d.delay * interval '1 second' ELSE j.run_at END,
        enqueued_at = CASE WHEN d.target = 'enqueued'
            THEN coalesce(j.enqueued_at, t.at) ELSE j.enqueued_at END,
        updated_at = t.at,
        history = j.history || {{schema}}.{{table_history_entry}}(
            d.target, t.at, CASE WHEN d.target = 'failed' THEN $5 ELSE 'lease_expired' END,
            d.server_id, d.attempts)
    FROM d, t
    WHERE j.id = d.id
    RETURNING j.id, d.target AS target, t.at
), stats AS (
    INSERT INTO {{schema}}.{{table_minute_stats}} AS s (minute, succeeded, failed)
    SELECT to_timestamp(floor(extract(epoch FROM at) / 60) * 60),
           count(*) FILTER (WHERE target = 'succeeded'), count(*) FILTER (WHERE target = 'failed')
    FROM upd WHERE target IN ('succeeded', 'failed')
    GROUP BY 1
    ON CONFLICT (minute) DO UPDATE
        SET succeeded = s.succeeded + EXCLUDED.succeeded, failed = s.failed + EXCLUDED.failed
)
SELECT id, target FROM upd

-- name: activate_due
-- $1 now, $2 limit. A job that waited out a crash backoff (AwaitingRetry by
-- reason lease_expired) keeps its place in the queue; any other joins the back.
WITH t AS (
    SELECT coalesce($1::timestamptz, now()) AS at
), c AS (
    SELECT j.id FROM {{schema}}.{{table}} j, t
    WHERE j.state IN ('scheduled', 'awaiting_retry') AND j.run_at <= t.at
    ORDER BY j.run_at
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
), u AS (
    UPDATE {{schema}}.{{table}} AS j SET
        state = 'enqueued',
        enqueued_at = CASE
            WHEN j.state::text = 'awaiting_retry' AND j.history -> -1 ->> 'reason' = 'lease_expired'
            THEN coalesce(j.enqueued_at, t.at) ELSE t.at END,
        updated_at = t.at,
        history = j.history || {{schema}}.{{table_history_entry}}(
            'enqueued', t.at, 'due', NULL, j.attempts)
    FROM c, t
    WHERE j.id = c.id
    RETURNING 1
)
SELECT count(*) FROM u

-- name: transition_many
-- $1 ids, $2 target state, $3 allowed source states, $4 reason, $5 ttl, $6 reset
-- attempts, $7 run_at, $8 now. Returns the position of each moved id.
WITH ids AS (
    SELECT * FROM unnest($1::text[]) WITH ORDINALITY AS i(id, ord)
), t AS (
    SELECT coalesce($8::timestamptz, now()) AS at
)
UPDATE {{schema}}.{{table}} AS j SET
    state = $2::text::{{schema}}.{{table_state}},
    expires_at = CASE WHEN $5::float8 IS NULL THEN NULL
        ELSE t.at + $5::float8 * interval '1 second' END,
    finished_at = CASE WHEN $5::float8 IS NOT NULL AND $2::text <> 'deleted'
        THEN t.at ELSE j.finished_at END,
    attempts = CASE WHEN $6::boolean THEN 0 ELSE j.attempts END,
    crashes = CASE WHEN $6::boolean THEN 0 ELSE j.crashes END,
    run_at = CASE WHEN $2::text IN ('scheduled', 'awaiting_retry')
                  THEN coalesce($7::timestamptz, t.at)
                  WHEN $2::text = 'enqueued' THEN NULL ELSE j.run_at END,
    enqueued_at = CASE WHEN $2::text = 'enqueued' THEN t.at ELSE j.enqueued_at END,
    updated_at = t.at,
    history = j.history || {{schema}}.{{table_history_entry}}(
        $2::text, t.at, $4::text, NULL,
        CASE WHEN $6::boolean THEN 0 ELSE j.attempts END)
FROM ids, t
WHERE j.id = ids.id AND j.state::text = ANY($3::text[])
RETURNING ids.ord

-- name: request_cancel
UPDATE {{schema}}.{{table}} SET cancel_requested = true
WHERE id = $1 AND state::text = 'processing'
RETURNING id

-- name: get_job
SELECT {{job_columns}} FROM {{schema}}.{{table}} j WHERE j.id = $1

-- name: list_jobs
-- The dashboard's listing; PostgresStorage appends fixed WHERE / ORDER BY / LIMIT
-- fragments with bound parameters for the filters in use.
SELECT {{job_columns}} FROM {{schema}}.{{table}} j

-- name: counts
SELECT queue, state::text AS state, sum(n)::bigint AS n
FROM (SELECT queue, state, n FROM {{schema}}.{{table_counts}}
      UNION ALL SELECT queue, state, n FROM {{schema}}.{{table_count_deltas}}) x
GROUP BY queue, state
HAVING sum(n) <> 0

-- name: job_count
SELECT coalesce(sum(n), 0)::bigint
FROM (SELECT n FROM {{schema}}.{{table_counts}} WHERE queue = $1
      UNION ALL SELECT n FROM {{schema}}.{{table_count_deltas}} WHERE queue = $1) x

-- name: compact_counts
-- Fold the count deltas into the counts table; one compactor at a time ($1: lock key).
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($1) AS ok
), moved AS (
    DELETE FROM {{schema}}.{{table_count_deltas}} WHERE (SELECT ok FROM lock)
    RETURNING queue, state, n
)
INSERT INTO {{schema}}.{{table_counts}} AS c (queue, state, n)
SELECT queue, state, sum(n) FROM moved GROUP BY queue, state ORDER BY queue, state
ON CONFLICT (queue, state) DO UPDATE SET n = c.n + EXCLUDED.n

-- name: history
-- $1 minutes, $2 now: one row per minute, oldest first, zeros included.
WITH t AS (
    SELECT floor(extract(epoch FROM coalesce($2::timestamptz, now())) / 60)::bigint AS m
)
SELECT g.m, coalesce(s.succeeded, 0)::bigint AS succeeded, coalesce(s.failed, 0)::bigint AS failed
FROM t CROSS JOIN LATERAL generate_series(t.m - $1 + 1, t.m) AS g(m)
LEFT JOIN {{schema}}.{{table_minute_stats}} s ON s.minute = to_timestamp(g.m * 60)
ORDER BY g.m

-- name: oldest_enqueued
SELECT queue, min(enqueued_at) AS oldest FROM {{schema}}.{{table}}
WHERE state = 'enqueued' AND queue = ANY($1::text[])
GROUP BY queue

-- name: pause_queue
INSERT INTO {{schema}}.{{table_paused_queues}} (queue) VALUES ($1) ON CONFLICT DO NOTHING

-- name: resume_queue
WITH d AS (
    DELETE FROM {{schema}}.{{table_paused_queues}} WHERE queue = $1
)
SELECT pg_notify({{channel}}, '')

-- name: paused_queues
SELECT queue FROM {{schema}}.{{table_paused_queues}}

-- name: upsert_recurring
INSERT INTO {{schema}}.{{table_recurring}} AS r (id, cron, method, args, queue, timezone,
    misfire, max_catchup, priority, max_retries, paused, next_run_at, last_run_at, last_job_id)
VALUES ($1, $2, $3, $4::json, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (id) DO UPDATE SET
    cron = EXCLUDED.cron, method = EXCLUDED.method, args = EXCLUDED.args,
    queue = EXCLUDED.queue, timezone = EXCLUDED.timezone, misfire = EXCLUDED.misfire,
    max_catchup = EXCLUDED.max_catchup, priority = EXCLUDED.priority,
    max_retries = EXCLUDED.max_retries, paused = EXCLUDED.paused,
    next_run_at = EXCLUDED.next_run_at,
    last_run_at = CASE WHEN EXCLUDED.last_run_at IS NULL THEN r.last_run_at
                       ELSE EXCLUDED.last_run_at END,
    last_job_id = CASE WHEN EXCLUDED.last_run_at IS NULL THEN r.last_job_id
                       ELSE EXCLUDED.last_job_id END,
    updated_at = now()

-- name: get_recurring
SELECT * FROM {{schema}}.{{table_recurring}} WHERE id = $1

-- name: list_recurring
SELECT * FROM {{schema}}.{{table_recurring}} ORDER BY id

-- name: remove_recurring
DELETE FROM {{schema}}.{{table_recurring}} WHERE id = $1 RETURNING id

-- name: set_recurring_paused
UPDATE {{schema}}.{{table_recurring}} SET paused = $2, updated_at = now()
WHERE id = $1 RETURNING id

-- name: claim_due_recurring
-- $1 server, $2 limit, $3 claim seconds, $4 now.
WITH t AS (
    SELECT coalesce($4::timestamptz, now()) AS at
), c AS (
    SELECT r.id FROM {{schema}}.{{table_recurring}} r, t
    WHERE NOT r.paused AND r.next_run_at <= t.at
      AND (r.claimed_by IS NULL OR r.claim_expires_at IS NULL OR r.claim_expires_at <= t.at)
    ORDER BY r.id
    LIMIT $2
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE {{schema}}.{{table_recurring}} AS r SET
    claimed_by = $1 || '#' || gen_random_uuid()::text,
    claim_expires_at = t.at + $3::float8 * interval '1 second'
FROM c, t
WHERE r.id = c.id
RETURNING r.*, t.at AS claimed_at

-- name: lock_recurring_claim
-- Hold a template for parking while its claim token ($2) is still ours.
SELECT id FROM {{schema}}.{{table_recurring}}
WHERE id = $1 AND claimed_by IS NOT NULL AND right(claimed_by, length($2) + 1) = '#' || $2
FOR UPDATE

-- name: park_recurring
UPDATE {{schema}}.{{table_recurring}} SET
    claimed_by = NULL,
    claim_expires_at = NULL,
    next_run_at = $2,
    last_run_at = coalesce($3, last_run_at),
    last_job_id = coalesce($4, last_job_id)
WHERE id = $1

-- name: delete_expired
WITH t AS (
    SELECT coalesce($1::timestamptz, now()) AS at
), c AS (
    SELECT j.id FROM {{schema}}.{{table}} j, t
    WHERE j.state IN ('succeeded', 'failed', 'deleted') AND j.expires_at <= t.at
    ORDER BY j.expires_at
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
), d AS (
    DELETE FROM {{schema}}.{{table}} AS j USING c WHERE j.id = c.id RETURNING 1
)
SELECT count(*) FROM d

-- name: prune_dedup
DELETE FROM {{schema}}.{{table_dedup}}
WHERE created_at < coalesce($2::timestamptz, now()) - $1::float8 * interval '1 second'

-- name: prune_stats
DELETE FROM {{schema}}.{{table_minute_stats}}
WHERE minute < to_timestamp(
    floor((extract(epoch FROM coalesce($2::timestamptz, now())) - $1::float8) / 60) * 60)

-- name: heartbeat_server
INSERT INTO {{schema}}.{{table_servers}} AS s (id, hostname, pid, queues, worker_count, busy,
    version, started_at, heartbeat_at, current_jobs)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8::timestamptz, now()), now(), $9)
ON CONFLICT (id) DO UPDATE SET
    hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    worker_count = EXCLUDED.worker_count, busy = EXCLUDED.busy, version = EXCLUDED.version,
    started_at = coalesce($8::timestamptz, s.started_at),
    heartbeat_at = now(), current_jobs = EXCLUDED.current_jobs

-- name: remove_server
DELETE FROM {{schema}}.{{table_servers}} WHERE id = $1

-- name: list_servers
SELECT * FROM {{schema}}.{{table_servers}} ORDER BY id

-- name: prune_servers
WITH d AS (
    DELETE FROM {{schema}}.{{table_servers}}
    WHERE heartbeat_at < coalesce($2::timestamptz, now()) - $1::float8 * interval '1 second'
    RETURNING 1
)
SELECT count(*) FROM d

-- name: schema_status
-- $1 schema name, $2 job table name, $3 version table name (plain values).
SELECT current_setting('synchronous_commit') AS synchronous_commit,
       EXISTS (SELECT 1 FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $2) AS has_table,
       EXISTS (SELECT 1 FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $3) AS has_versions

-- name: applied_versions
SELECT version FROM {{schema}}.{{table_migrations}} ORDER BY version
