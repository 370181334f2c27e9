"""The parts of ``SqliteStorage`` around the job life cycle: lifecycle,
statistics, paused queues, recurring templates, cleanup, servers and wake-up."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from ...clock import from_epoch
from ...job import Job, JobState
from ..base import Storage
from ..requests import MinuteStat, RecurringClaim, RecurringTemplate, ServerInfo
from .codec import (
    STATES,
    job_row,
    json_text,
    recurring_from_row,
    recurring_row,
    server_from_row,
    ts,
)
from .connection import Conn, Database
from .sql import Q

#: Changes to the per-(queue, state) counters of one transaction.
Deltas = Counter[tuple[str, str]]


def ids_json(ids: Sequence[str]) -> str:
    """A JSON array of strings (one parameter for ``IN (SELECT value FROM json_each(?))``)."""
    return orjson.dumps(list(ids)).decode()


def bump_counts(conn: Conn, deltas: Deltas) -> None:
    """Apply counter changes (inside the transaction that made them)."""
    rows = [(q, s, n) for (q, s), n in deltas.items() if n]
    if rows:
        conn.executemany(Q["bump_counts"], rows)


def count_move(deltas: Deltas, queue: str, old: str, new: str) -> None:
    """Record one job of ``queue`` moving from state ``old`` to ``new``."""
    deltas[(queue, old)] -= 1
    deltas[(queue, new)] += 1


class SqliteBase(Storage):
    """Everything of the SQLite backend but the job hooks (see ``storage.py``)."""

    path: str
    _db: Database

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r})"

    async def open(self) -> None:
        """Open the file (creating the schema if needed); idempotent."""
        await self._db.open()

    async def close(self) -> None:
        """Close the connection and stop its threads; idempotent."""
        await self._db.close()

    # ------------------------------------------------------------------ statistics
    async def _counts(self) -> dict[tuple[str, JobState], int]:
        def body(c: Conn) -> dict[tuple[str, JobState], int]:
            return {(q, STATES[s]): n for q, s, n in c.execute(Q["counts"])}

        return await self._db.read(body)

    async def _history(self, minutes: int, now: datetime | None) -> list[MinuteStat]:
        end = int(self.now(now).timestamp()) // 60
        start = end - minutes + 1

        def body(c: Conn) -> list[MinuteStat]:
            found = {m: (s, f) for m, s, f in c.execute(Q["minute_stats"], (start, end))}
            out = []
            for m in range(start, end + 1):
                s, f = found.get(m, (0, 0))
                out.append(MinuteStat(from_epoch(m * 60.0), s, f))
            return out

        return await self._db.read(body)

    async def _oldest_enqueued(self, queues: list[str]) -> dict[str, datetime]:
        if not queues:
            return {}

        def body(c: Conn) -> dict[str, datetime]:
            rows = c.execute(Q["oldest_enqueued"], (ids_json(queues),))
            return {q: from_epoch(t) for q, t in rows if t is not None}

        return await self._db.read(body)

    # ------------------------------------------------------------------ queues
    async def _set_queue_paused(self, queue: str, paused: bool) -> None:
        def body(c: Conn) -> None:
            if paused:
                c.execute(Q["pause_queue"], (queue,))
            else:
                c.execute(Q["resume_queue"], (queue,))
                self._db.bump_wake(c)

        await self._db.write(body)

    async def _paused_queues(self) -> set[str]:
        return await self._db.read(lambda c: {r[0] for r in c.execute(Q["paused_queues"])})

    # ------------------------------------------------------------------ recurring
    async def _upsert_recurring(self, template: RecurringTemplate) -> None:
        now = self.now().timestamp()
        params = (*recurring_row(template, json_text(template.args)), now)
        await self._db.write(lambda c: c.execute(Q["upsert_recurring"], params))

    async def _get_recurring(self, template_id: str) -> RecurringTemplate | None:
        def body(c: Conn) -> RecurringTemplate | None:
            row = c.execute(Q["get_recurring"], (template_id,)).fetchone()
            return recurring_from_row(row) if row is not None else None

        return await self._db.read(body)

    async def _list_recurring(self) -> list[RecurringTemplate]:
        return await self._db.read(
            lambda c: [recurring_from_row(r) for r in c.execute(Q["list_recurring"])]
        )

    async def _remove_recurring(self, template_id: str) -> bool:
        return await self._db.write(
            lambda c: c.execute(Q["remove_recurring"], (template_id,)).rowcount > 0
        )

    async def _set_recurring_paused(self, template_id: str, paused: bool) -> bool:
        now = self.now().timestamp()
        return await self._db.write(
            lambda c: (
                c.execute(Q["set_recurring_paused"], (template_id, int(paused), now)).rowcount > 0
            )
        )

    async def _claim_due_recurring(
        self, server_id: str, limit: int, claim_seconds: float, now: datetime | None
    ) -> list[RecurringClaim]:
        at_dt = self.now(now)
        at = at_dt.timestamp()
        until = at_dt + timedelta(seconds=claim_seconds)

        def body(c: Conn) -> list[RecurringClaim]:
            out: list[RecurringClaim] = []
            for row in c.execute(Q["select_due_recurring"], (at, limit)).fetchall():
                t = recurring_from_row(row)
                token = secrets.token_hex(16)
                t.claimed_by = f"{server_id}#{token}"
                t.claim_expires_at = until
                c.execute(Q["claim_recurring"], (t.id, t.claimed_by, until.timestamp()))
                out.append(RecurringClaim(t, token, at_dt))
            return out

        return await self._db.write(body, durable=False)

    async def _park_recurring(
        self,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool:
        return await self._db.run(
            lambda conn: self._park_sync(conn, claim, next_run_at, last_run_at, jobs, payloads)
        )

    def _park_sync(
        self,
        conn: Conn,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool:
        rows = [job_row(j, p) for j, p in zip(jobs, payloads, strict=True)]

        def body(c: Conn) -> bool:
            row = c.execute(Q["recurring_claimed_by"], (claim.template.id,)).fetchone()
            if row is None or row[0] is None or not str(row[0]).endswith("#" + claim.token):
                return False
            inserted: list[tuple[Any, ...]] = []
            deltas: Deltas = Counter()
            for job, values in zip(jobs, rows, strict=True):
                if (
                    job.dedup_key is not None
                    and c.execute(
                        Q["insert_dedup_if_new"],
                        (job.dedup_key, job.id, job.created_at.timestamp()),
                    ).rowcount
                    == 0
                ):
                    continue
                inserted.append(values)
                deltas[(job.queue, job.state.value)] += 1
            if inserted:
                c.executemany(Q["insert_job"], inserted)
                bump_counts(c, deltas)
            if jobs:
                self._db.bump_wake(c)
            c.execute(
                Q["park_recurring"],
                (
                    claim.template.id,
                    ts(next_run_at),
                    ts(last_run_at),
                    inserted[-1][0] if inserted else None,
                ),
            )
            return True

        return self._db.transaction(conn, body)

    # ------------------------------------------------------------------ cleanup
    async def _delete_expired(self, limit: int, now: datetime | None) -> int:
        at = self.now(now).timestamp()

        def body(c: Conn) -> int:
            rows = c.execute(Q["delete_expired"], (at, limit)).fetchall()
            if rows:
                bump_counts(c, _negated(rows))
                c.execute(Q["drop_zero_counts"])
            return len(rows)

        return await self._db.write(body)

    async def _prune(
        self, dedup_older_than: float, stats_older_than: float, now: datetime | None
    ) -> None:
        at = self.now(now).timestamp()

        def body(c: Conn) -> None:
            c.execute(Q["prune_dedup"], (at - dedup_older_than,))
            c.execute(Q["prune_minutes"], (int(at - stats_older_than) // 60,))

        await self._db.write(body)

    # ------------------------------------------------------------------ servers
    async def _heartbeat_server(self, info: ServerInfo) -> None:
        now = self.now().timestamp()
        params = (
            info.id,
            info.hostname,
            info.pid,
            json_text(list(info.queues)),
            info.worker_count,
            info.busy,
            info.version,
            ts(info.started_at),
            now,
            json_text(list(info.current_jobs)),
        )
        await self._db.write(lambda c: c.execute(Q["heartbeat_server"], params))

    async def _remove_server(self, server_id: str) -> None:
        await self._db.write(lambda c: c.execute(Q["remove_server"], (server_id,)))

    async def _list_servers(self) -> list[ServerInfo]:
        return await self._db.read(
            lambda c: [server_from_row(r) for r in c.execute(Q["list_servers"])]
        )

    async def _prune_servers(self, dead_after: float, now: datetime | None) -> int:
        cutoff = self.now(now).timestamp() - dead_after
        return await self._db.write(lambda c: c.execute(Q["prune_servers"], (cutoff,)).rowcount)

    # ------------------------------------------------------------------ wake-up
    async def _wait_for_work(self, timeout: float) -> bool:
        return await self._db.wait(timeout)


def _negated(rows: list[tuple[str, str]]) -> Deltas:
    deltas: Deltas = Counter()
    for queue, state in rows:
        deltas[(queue, state)] -= 1
    return deltas
