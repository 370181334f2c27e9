"""``SqliteStorage``: the embedded, durable default backend.

One file in WAL mode, shared safely by several worker processes on one host.
Each storage call is one hop to the connection thread and, for writes, one
``BEGIN IMMEDIATE`` transaction: claims select and update their rows under the
write lock, so two claimers (threads or processes) never get the same job.
Every guarded write re-checks its guard in SQL (``state`` and fencing token),
and the per-(queue, state) counters change in the same transaction as the jobs.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ...clock import Clock
from ...errors import DuplicateJobError, StorageError
from ...job import Job, JobState
from ...states import LEASE_EXPIRED, WORKER_CRASHED
from ..base import CAP_DURABLE, CAP_MULTI_PROCESS
from ..requests import (
    ClaimRequest,
    HeartbeatReply,
    JobQuery,
    Lease,
    Outcome,
    OutcomeKind,
    Page,
    RecoverRequest,
    Transition,
)
from .codec import (
    Brief,
    claim_entry_prefix,
    history_entry,
    job_from_row,
    job_row,
    json_text,
)
from .common import Deltas, SqliteBase, bump_counts, count_move, ids_json
from .connection import Conn, Database
from .sql import Q

_E, _P = "enqueued", "processing"
_R, _F = "awaiting_retry", "failed"


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqliteStorage(SqliteBase):
    """Jobs in one SQLite file (WAL mode), safe for several processes on one host.

    ``synchronous`` is SQLite's durability setting (``FULL``: a committed job
    survives a power loss; ``NORMAL`` is faster and survives process crashes).
    ``busy_timeout`` is how long a call waits for another process's write
    lock before it raises :class:`~qml.errors.StorageUnavailableError`.
    ``poll_interval`` is how often a waiting worker checks for work enqueued by
    other processes while the file is busy; after 2 s without a change it checks
    every 0.1 s (or ``poll_interval`` if longer), so an idle worker costs little CPU.
    """

    backend_name = "sqlite"
    capabilities = frozenset({CAP_DURABLE, CAP_MULTI_PROCESS})
    combines_finish_and_claim = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        poll_interval: float = 0.025,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(clock=clock, **kwargs)
        self.path = os.fspath(path)
        self._db = Database(
            self.path,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            poll_interval=poll_interval,
        )

    def sibling(self) -> SqliteStorage:
        """This object: its calls run on the connection thread from any event loop."""
        return self

    # ------------------------------------------------------------------ enqueue
    async def _enqueue(self, jobs: list[Job], payloads: list[bytes], connection: Any) -> list[str]:
        keys = [j.dedup_key for j in jobs if j.dedup_key is not None]
        if len(set(keys)) != len(keys):
            raise DuplicateJobError("a job with this dedup_key already exists")
        return await self._db.run(lambda conn: self._enqueue_sync(conn, jobs, payloads))

    def _enqueue_sync(self, conn: Conn, jobs: list[Job], payloads: list[bytes]) -> list[str]:
        rows = [job_row(j, p) for j, p in zip(jobs, payloads, strict=True)]
        dedup = [
            (j.dedup_key, j.id, j.created_at.timestamp()) for j in jobs if j.dedup_key is not None
        ]
        deltas: Deltas = Counter((j.queue, j.state.value) for j in jobs)

        def body(c: Conn) -> list[str]:
            try:
                if dedup:
                    c.executemany(Q["insert_dedup"], dedup)
            except sqlite3.IntegrityError as exc:
                raise DuplicateJobError("a job with this dedup_key already exists") from exc
            try:
                c.executemany(Q["insert_job"], rows)
            except sqlite3.IntegrityError as exc:
                raise DuplicateJobError("a job with one of these ids already exists") from exc
            bump_counts(c, deltas)
            self._db.bump_wake(c)
            return [j.id for j in jobs]

        return self._db.transaction(conn, body)

    # ------------------------------------------------------------------ claim & finish
    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        return await self._db.write(self._claim_body(request), durable=False)

    def _claim_body(self, request: ClaimRequest) -> Callable[[Conn], list[Lease]]:
        now = self.now(request.now)
        expires = now + timedelta(seconds=request.lease_seconds)
        at = now.timestamp()
        prefix = claim_entry_prefix(at, request.server_id)
        queues = list(dict.fromkeys(request.queues))

        def body(c: Conn) -> list[Lease]:
            paused = {r[0] for r in c.execute(Q["paused_queues"])}
            out: list[Lease] = []
            token = secrets.token_hex(12)
            suspects = request.max_suspects
            for queue in queues:
                want = request.limit - len(out)
                if want <= 0:
                    break
                if queue in paused:
                    continue
                rows = c.execute(
                    Q["claim_jobs"],
                    (
                        queue,
                        want,
                        at,
                        request.server_id,
                        token,
                        expires.timestamp(),
                        prefix,
                        -1 if suspects is None else suspects,
                        request.suspect_crashes,
                    ),
                ).fetchall()
                if not rows:
                    continue
                if suspects is not None:
                    suspects -= sum(1 for r in rows if r[12] >= request.suspect_crashes)
                rows.sort(key=lambda r: (-r[4], r[15], r[0]))
                bump_counts(c, Counter({(queue, _E): -len(rows), (queue, _P): len(rows)}))
                for r in rows:
                    job = job_from_row(r)
                    out.append(Lease(job, r[24], expires))
            return out

        return body

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        at = self.now(now).timestamp()
        return await self._db.run(lambda conn: self._finish_sync(conn, outcomes, at))

    async def _finish_and_claim(
        self, outcomes: Sequence[Outcome], request: ClaimRequest
    ) -> tuple[list[bool], list[Lease]]:
        # One transaction (one commit, one hop to the connection thread) for both.
        # Its commit skips the fsync; the WAL is synced right after the server has
        # the claimed jobs, before this connection's next statement, so the sync
        # overlaps the start of those jobs instead of delaying it.
        at = self.now(request.now).timestamp()
        claim = self._claim_body(request)

        def run(conn: Conn) -> tuple[list[bool], list[Lease]]:
            finish = self._finish_body(outcomes, at)
            return self._db.transaction(conn, lambda c: (finish(c), claim(c)), durable=False)

        return await self._db.run(run, then=self._db.sync_wal)

    def _finish_sync(self, conn: Conn, outcomes: Sequence[Outcome], at: float) -> list[bool]:
        return self._db.transaction(conn, self._finish_body(outcomes, at))

    def _finish_body(self, outcomes: Sequence[Outcome], at: float) -> Callable[[Conn], list[bool]]:
        """The finish transaction's body; results are encoded now, before the
        write lock is taken."""
        minute = int(at) // 60
        encoded = [
            json_text(o.result) if o.kind is OutcomeKind.SUCCEED and o.result is not None else None
            for o in outcomes
        ]

        def body(c: Conn) -> list[bool]:
            ids = ids_json([o.job_id for o in outcomes])
            briefs: dict[str, Brief] = {r[0]: r for r in c.execute(Q["select_jobs"], (ids,))}
            applied: list[bool] = []
            params: list[tuple[Any, ...]] = []
            deltas: Deltas = Counter()
            done: set[str] = set()
            succeeded = failed = 0
            wake = False
            for o, result in zip(outcomes, encoded, strict=True):
                b = briefs.get(o.job_id)
                if b is None or b[2] != _P or b[3] != o.token or o.job_id in done:
                    applied.append(False)
                    continue
                done.add(o.job_id)
                kind = o.kind
                state = o.target_state.value
                attempts = max(0, b[5] - 1) if kind is OutcomeKind.RELEASE else b[5]
                final = kind is OutcomeKind.SUCCEED or kind is OutcomeKind.FAIL
                err = o.error
                run_at = None
                if kind is OutcomeKind.RETRY or (kind is OutcomeKind.RELEASE and o.delay > 0):
                    run_at = at + o.delay
                if kind is OutcomeKind.SUCCEED:
                    succeeded += 1
                elif kind is OutcomeKind.FAIL:
                    failed += 1
                elif kind is OutcomeKind.RELEASE and o.delay <= 0:
                    wake = True
                params.append(
                    (
                        o.job_id,
                        o.token,
                        state,
                        at,
                        1 if kind is OutcomeKind.RELEASE else 0,
                        1 if kind is OutcomeKind.SUCCEED else 0,
                        result,
                        1 if final else 0,
                        at + (o.ttl or 0.0) if final else None,
                        1 if err is not None else 0,
                        err.type if err is not None else None,
                        err.message if err is not None else None,
                        err.traceback if err is not None else None,
                        run_at,
                        history_entry(state, at, o.reason, b[4], attempts),
                    )
                )
                count_move(deltas, b[1], _P, state)
                applied.append(True)
            if params:
                cur = c.executemany(Q["finish_job"], params)
                if cur.rowcount != len(params):
                    raise StorageError("finish: a guarded update did not apply; rolled back")
                bump_counts(c, deltas)
                if succeeded or failed:
                    c.execute(Q["bump_minute"], (minute, succeeded, failed))
                if wake:
                    self._db.bump_wake(c)
            return applied

        return body

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        expires = self.now(now) + timedelta(seconds=lease_seconds)
        deadline = expires.timestamp()

        def body(c: Conn) -> list[HeartbeatReply]:
            briefs: dict[str, Brief] = {
                r[0]: r for r in c.execute(Q["select_jobs"], (ids_json([j for j, _ in leases]),))
            }
            out: list[HeartbeatReply] = []
            params: list[tuple[str, str, float]] = []
            for job_id, token in leases:
                b = briefs.get(job_id)
                if b is None or b[2] != _P or b[3] != token:
                    out.append(HeartbeatReply(False))
                    continue
                params.append((job_id, token, deadline))
                out.append(HeartbeatReply(True, bool(b[7]), expires))
            if params:
                c.executemany(Q["extend_lease"], params)
            return out

        return await self._db.write(body, durable=False)

    async def _recover_expired(self, request: RecoverRequest) -> list[str]:
        now = self.now(request.now)
        at = now.timestamp()

        def body(c: Conn) -> list[str]:
            rows: list[Brief] = c.execute(
                Q["select_expired_leases"], (at, request.limit)
            ).fetchall()
            params: list[tuple[Any, ...]] = []
            deltas: Deltas = Counter()
            failed = 0
            for b in rows:
                crashes = b[6] + 1
                message = None
                expires = None
                run_at = None
                if crashes >= request.max_crashes:
                    state, reason = _F, WORKER_CRASHED
                    message = f"{WORKER_CRASHED}: the worker running this job died {crashes} times"
                    expires = at + request.failed_ttl
                    failed += 1
                else:
                    delay = request.crash_delay(crashes)
                    reason = LEASE_EXPIRED
                    if delay > 0:
                        state, run_at = _R, at + delay
                    else:
                        state = _E
                params.append(
                    (
                        b[0],
                        b[3],
                        state,
                        at,
                        run_at,
                        message,
                        expires,
                        history_entry(state, at, reason, b[4], b[5]),
                    )
                )
                count_move(deltas, b[1], _P, state)
            if params:
                c.executemany(Q["recover_job"], params)
                bump_counts(c, deltas)
                if failed:
                    c.execute(Q["bump_minute"], (int(at) // 60, 0, failed))
                self._db.bump_wake(c)
            return [b[0] for b in rows]

        return await self._db.write(body)

    async def _activate_due(self, now: datetime | None, limit: int) -> int:
        at = self.now(now).timestamp()

        def body(c: Conn) -> int:
            rows: list[Brief] = c.execute(Q["select_due"], (at, limit)).fetchall()
            if not rows:
                return 0
            deltas: Deltas = Counter()
            params = []
            for b in rows:
                params.append((b[0], b[2], at, history_entry(_E, at, "due", None, b[5])))
                count_move(deltas, b[1], b[2], _E)
            c.executemany(Q["activate_job"], params)
            bump_counts(c, deltas)
            self._db.bump_wake(c)
            return len(rows)

        return await self._db.write(body)

    async def _transition_many(
        self, job_ids: list[str], t: Transition, now: datetime | None
    ) -> list[str]:
        at = self.now(now).timestamp()
        to = t.to.value
        sources = {s.value for s in t.from_states}
        expires = at + t.ttl if t.ttl is not None else None
        stamp_finished = 1 if t.ttl is not None and t.to is not JobState.DELETED else 0
        set_run_at = t.to in (JobState.SCHEDULED, JobState.AWAITING_RETRY, JobState.ENQUEUED)
        run_at = None
        if t.to in (JobState.SCHEDULED, JobState.AWAITING_RETRY):
            run_at = t.run_at.timestamp() if t.run_at is not None else at

        def body(c: Conn) -> list[str]:
            briefs: dict[str, Brief] = {
                r[0]: r for r in c.execute(Q["select_jobs"], (ids_json(job_ids),))
            }
            moved: list[str] = []
            params: list[tuple[Any, ...]] = []
            deltas: Deltas = Counter()
            for job_id in job_ids:
                b = briefs.get(job_id)
                if b is None or b[2] not in sources:
                    continue
                attempts = 0 if t.reset_attempts else b[5]
                params.append(
                    (
                        job_id,
                        b[2],
                        to,
                        at,
                        expires,
                        stamp_finished,
                        1 if t.reset_attempts else 0,
                        1 if set_run_at else 0,
                        run_at,
                        history_entry(to, at, t.reason, None, attempts),
                    )
                )
                count_move(deltas, b[1], b[2], to)
                moved.append(job_id)
            if params:
                c.executemany(Q["transition_job"], params)
                bump_counts(c, deltas)
                if t.to is JobState.ENQUEUED:
                    self._db.bump_wake(c)
            return moved

        return await self._db.write(body)

    async def _request_cancel(self, job_id: str) -> bool:
        return await self._db.write(
            lambda c: c.execute(Q["request_cancel"], (job_id,)).rowcount > 0
        )

    # ------------------------------------------------------------------ reads
    async def _get(self, job_id: str) -> Job | None:
        def body(c: Conn) -> Job | None:
            row = c.execute(Q["get_job"], (job_id,)).fetchone()
            return job_from_row(row) if row is not None else None

        return await self._db.read(body)

    async def _list_jobs(self, query: JobQuery) -> Page:
        # With a state, queue or method filter, one keyset scan per state (each
        # on an index (queue|method, state, id) or (state, id)) merged here:
        # never a sort of a large set, never a walk over the rows of one method
        # to find the few in a rare state.
        states: list[str] | None = None
        if query.states is not None:
            states = sorted(s.value for s in query.states)
        elif query.queue is not None or query.method is not None:
            states = [s.value for s in JobState]
        where: list[str] = []
        params: list[Any] = []
        if query.queue is not None:
            where.append("queue = ?")
            params.append(query.queue)
        if query.method is not None:
            where.append("method = ?")
            params.append(query.method)
        if query.text is not None:
            if query.text.isascii():
                where.append(
                    "(args LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')"
                )
                params.extend([_like_pattern(query.text)] * 3)
            else:
                where.append(
                    "(qml_icontains(CAST(args AS BLOB), ?) OR qml_icontains(id, ?) "
                    "OR qml_icontains(error, ?))"
                )
                params.extend([query.text] * 3)
        if query.cursor is not None:
            where.append("id > ?" if query.ascending else "id < ?")
            params.append(query.cursor)
        if states is not None:
            where.append("state = ?")
        tail = f" ORDER BY id {'ASC' if query.ascending else 'DESC'} LIMIT {query.limit + 1}"
        sql = Q["list_jobs"] + (" WHERE " + " AND ".join(where) if where else "") + tail

        def body(c: Conn) -> Page:
            if states is None:
                rows = c.execute(sql, params).fetchall()
            else:
                rows = []
                for state in states:
                    rows += c.execute(sql, [*params, state]).fetchall()
                rows.sort(key=lambda r: r[0], reverse=not query.ascending)
            more = len(rows) > query.limit
            items = [job_from_row(r) for r in rows[: query.limit]]
            return Page(items, items[-1].id if more and items else None)

        return await self._db.read(body)
