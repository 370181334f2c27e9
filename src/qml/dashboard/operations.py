"""Bulk actions as server-side operations (DASHBOARD.md P6).

An :class:`Operation` retries, deletes or cancels a selection of job ids, or
every job matching a :class:`JobFilter`. It runs as a background task of the
dashboard process, in batches (``batch_size`` ids per ``Storage.move`` call),
walking ``Storage.list_jobs`` newest first with a keyset cursor.

**Frozen match set.** When an operation is created it takes an upper bound on
the job id: a fresh UUIDv7, so later than every job created before it. The
walk starts below that bound, so jobs created after the operation started are
never touched (ids of other processes are time-ordered too, up to clock skew
between hosts). The walk only moves down, so a job the operation already
handled is never seen twice, even if it comes back to a matching state.

Progress is published on the dashboard's change feed (``op.progress``
messages, at most a few a second) and an operation can be cancelled between
two batches. Operations live in the dashboard process: the newest
``keep`` are listed; a restart forgets them (jobs already handled stay handled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..errors import QmlError
from ..ids import new_id
from ..job import Job, JobState
from ..states import DELETABLE, REQUEUEABLE
from ..storage.base import Storage
from ..storage.requests import JobQuery
from .error_groups import fingerprint_job

log = logging.getLogger("qml.dashboard")

#: Ids per storage call.
BATCH_SIZE = 500
#: Largest number of matching jobs an estimate counts exactly by walking...
COUNT_CAP = 10_000
#: ... and the most rows it reads to find them (an error group's fingerprint
#: is matched in Python, after ``list_jobs``).
SCAN_CAP = 100_000
#: Minimum seconds between two progress messages of one operation.
PUBLISH_EVERY = 0.25

NOT_STARTED = frozenset({JobState.ENQUEUED, JobState.SCHEDULED, JobState.AWAITING_RETRY})


class Action(StrEnum):
    RETRY = "retry"
    DELETE = "delete"
    CANCEL = "cancel"


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs an operation acts on (the filters of the Jobs page).

    ``error`` is an error-group fingerprint (see :mod:`.error_groups`); it
    matches Failed and AwaitingRetry jobs of that group.
    """

    states: frozenset[JobState] | None = None
    queue: str | None = None
    method: str | None = None
    text: str | None = None
    error: str | None = None

    def query(self, cursor: str | None, limit: int) -> JobQuery:
        states = self.states
        if self.error is not None:
            failures = frozenset({JobState.FAILED, JobState.AWAITING_RETRY})
            states = failures if states is None else states & failures
        return JobQuery(
            states=states,
            queue=self.queue,
            method=self.method,
            text=self.text,
            cursor=cursor,
            limit=limit,
        )

    def matches(self, job: Job) -> bool:
        """The part of the filter ``list_jobs`` does not apply (the fingerprint)."""
        return self.error is None or fingerprint_job(job) == self.error

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": ",".join(sorted(s.value for s in self.states)) if self.states else None,
            "queue": self.queue,
            "method": self.method,
            "text": self.text,
            "error": self.error,
        }

    def describe(self) -> str:
        """The filter in the query language: ``state:failed queue:emails``."""
        parts = [f"{k}:{v}" for k, v in self.to_dict().items() if v and k != "text"]
        if self.text:
            parts.append(f'"{self.text}"')
        return " ".join(parts) or "all jobs"


@dataclass(slots=True)
class Operation:
    id: str
    action: Action
    filter: JobFilter | None
    ids: list[str] | None
    upper_bound: str | None
    total: int
    estimate_exact: bool
    created_at: datetime
    status: Status = Status.PENDING
    processed: int = 0
    #: Matched jobs the action did not apply to (their state did not allow it).
    failed: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    cancel_requested: bool = False
    #: The keyset position reached: every matching job above it (and below
    #: ``upper_bound``) was handled.
    checkpoint: str | None = None
    batches: int = 0
    _last_publish: float = field(default=0.0, repr=False)

    @property
    def done(self) -> int:
        return self.processed + self.failed

    @property
    def progress(self) -> float:
        if self.status is Status.COMPLETED:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def is_final(self) -> bool:
        return self.status in (Status.COMPLETED, Status.CANCELLED, Status.FAILED)

    def describe(self) -> str:
        if self.ids is not None:
            return f"{len(self.ids)} selected job{'s' if len(self.ids) != 1 else ''}"
        assert self.filter is not None
        return self.filter.describe()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action.value,
            "status": self.status.value,
            "filter": self.filter.to_dict() if self.filter is not None else None,
            "selection": self.describe(),
            "ids_count": len(self.ids) if self.ids is not None else None,
            "total": self.total,
            "estimate_exact": self.estimate_exact,
            "processed": self.processed,
            "failed": self.failed,
            "progress": round(self.progress, 4),
            "cancel_requested": self.cancel_requested,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
        }


Publisher = Callable[[str, dict[str, Any]], None]


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class OperationManager:
    """Creates, runs, lists and cancels the operations of one dashboard app."""

    def __init__(
        self,
        storage: Storage,
        *,
        publish: Publisher | None = None,
        batch_size: int = BATCH_SIZE,
        batch_pause: float = 0.0,
        keep: int = 100,
    ) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        self.storage = storage
        self.publish = publish
        self.batch_size = batch_size
        self.batch_pause = batch_pause
        self.keep = keep
        self._ops: dict[str, Operation] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ reads
    def get(self, op_id: str) -> Operation | None:
        return self._ops.get(op_id)

    def list(self) -> list[Operation]:
        """Newest first."""
        return sorted(self._ops.values(), key=lambda o: o.id, reverse=True)

    async def estimate(
        self, *, ids: Sequence[str] | None, job_filter: JobFilter | None, upper_bound: str | None
    ) -> tuple[int, bool]:
        """How many jobs the selection holds now: ``(count, exact)``.

        Without method, text or error filters the count comes from the
        storage's counters; otherwise matching ids are walked, up to
        :data:`COUNT_CAP` matches or :data:`SCAN_CAP` rows (beyond that the
        estimate is a lower bound, ``exact`` False).
        """
        if ids is not None:
            return len(ids), True
        f = job_filter or JobFilter()
        if f.method is None and f.text is None and f.error is None:
            stats = await self.storage.stats(history_minutes=1)
            total = 0
            for queue, counts in stats.by_queue.items():
                if f.queue is not None and queue != f.queue:
                    continue
                total += sum(n for s, n in counts.items() if f.states is None or s in f.states)
            return total, True
        count, scanned, cursor = 0, 0, upper_bound
        while count < COUNT_CAP and scanned < SCAN_CAP:
            page = await self.storage.list_jobs(f.query(cursor, 1000))
            scanned += len(page.items)
            count += sum(1 for j in page.items if f.matches(j))
            if page.next_cursor is None:
                return count, True
            cursor = page.next_cursor
        return count, False

    # ------------------------------------------------------------------ actions
    async def create(
        self,
        action: Action,
        *,
        ids: Sequence[str] | None = None,
        job_filter: JobFilter | None = None,
        dry_run: bool = False,
    ) -> tuple[Operation | None, int, bool]:
        """Start an operation (or only estimate it): ``(operation, estimate, exact)``."""
        if (ids is None) == (job_filter is None):
            raise ValueError("an operation needs either ids or a filter")
        unique = list(dict.fromkeys(ids)) if ids is not None else None
        upper = None if unique is not None else new_id()
        estimate, exact = await self.estimate(ids=unique, job_filter=job_filter, upper_bound=upper)
        if dry_run:
            return None, estimate, exact
        op = Operation(
            id=new_id(),
            action=action,
            filter=job_filter,
            ids=unique,
            upper_bound=upper,
            total=estimate,
            estimate_exact=exact,
            created_at=self.storage.now(),
        )
        self._ops[op.id] = op
        self._forget_old()
        self._tasks[op.id] = asyncio.create_task(self._run(op), name=f"qml-operation-{op.id}")
        self._publish(op, force=True)
        return op, estimate, exact

    async def cancel(self, op_id: str) -> Operation | None:
        """Ask a running operation to stop after its current batch."""
        op = self._ops.get(op_id)
        if op is None:
            return None
        if not op.is_final:
            op.cancel_requested = True
            if op.status is Status.PENDING:
                op.status = Status.CANCELLED
                op.finished_at = self.storage.now()
            self._publish(op, force=True)
        return op

    async def wait(self, op_id: str, timeout: float | None = None) -> Operation:
        """Wait until the operation is final (for tests and scripts)."""
        task = self._tasks.get(op_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return self._ops[op_id]

    async def shutdown(self) -> None:
        """Cancel running operations (on app shutdown)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for op in self._ops.values():
            if not op.is_final:
                op.cancel_requested = True
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------------ internals
    def _forget_old(self) -> None:
        finished = [o for o in sorted(self._ops.values(), key=lambda o: o.id) if o.is_final]
        while len(self._ops) > self.keep and finished:
            old = finished.pop(0)
            self._ops.pop(old.id, None)
            self._tasks.pop(old.id, None)

    def _publish(self, op: Operation, *, force: bool = False) -> None:
        if self.publish is None:
            return
        now = time.monotonic()
        if not force and now - op._last_publish < PUBLISH_EVERY:
            return
        op._last_publish = now
        try:
            self.publish(f"operation:{op.id}", {"op": "op.progress", "operation": op.to_dict()})
        except Exception:  # progress must never break the operation
            log.warning("could not publish operation progress", exc_info=True)

    async def _apply(self, action: Action, jobs: Sequence[str], states: dict[str, JobState]) -> int:
        """Apply ``action`` to one batch; return how many jobs it applied to."""
        reason = {
            Action.RETRY: "retried from the dashboard (bulk)",
            Action.DELETE: "deleted from the dashboard (bulk)",
            Action.CANCEL: "cancelled",
        }[action]
        if action is Action.RETRY:
            moved = await self.storage.move(
                jobs, JobState.ENQUEUED, reason=reason, allowed_from=REQUEUEABLE
            )
            return len(moved)
        if action is Action.DELETE:
            moved = await self.storage.move(
                jobs, JobState.DELETED, reason=reason, allowed_from=DELETABLE
            )
            return len(moved)
        # cancel: jobs that have not started are deleted in one call; running
        # ones are told through their heartbeat
        started = set(
            await self.storage.move(jobs, JobState.DELETED, reason=reason, allowed_from=NOT_STARTED)
        )
        done = len(started)
        for job_id in jobs:
            if job_id in started:
                continue
            known = states.get(job_id)
            if known is not None and known is not JobState.PROCESSING:
                continue
            with contextlib.suppress(QmlError):
                job = await self.storage.request_cancel(job_id)
                if job.state is JobState.PROCESSING and job.cancel_requested:
                    done += 1
        return done

    async def _batch(self, op: Operation, jobs: Sequence[str], states: dict[str, JobState]) -> None:
        applied = await self._apply(op.action, jobs, states) if jobs else 0
        op.processed += applied
        op.failed += len(jobs) - applied
        op.batches += 1
        op.total = max(op.total, op.done)
        self._publish(op)
        if self.batch_pause > 0:
            await asyncio.sleep(self.batch_pause)
        else:
            await asyncio.sleep(0)  # let requests in between batches

    async def _run(self, op: Operation) -> None:
        if op.is_final:
            return
        op.status = Status.RUNNING
        op.started_at = self.storage.now()
        try:
            if op.ids is not None:
                for chunk in _chunks(op.ids, self.batch_size):
                    if op.cancel_requested:
                        break
                    await self._batch(op, chunk, {})
                    op.checkpoint = chunk[-1]
            else:
                f = op.filter or JobFilter()
                cursor = op.upper_bound
                while not op.cancel_requested:
                    page = await self.storage.list_jobs(f.query(cursor, self.batch_size))
                    selected = [j for j in page.items if f.matches(j)]
                    await self._batch(
                        op, [j.id for j in selected], {j.id: j.state for j in selected}
                    )
                    if page.items:
                        op.checkpoint = page.items[-1].id
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
            if op.cancel_requested:
                op.status = Status.CANCELLED
            else:
                op.status = Status.COMPLETED
                op.total = op.done
        except asyncio.CancelledError:
            op.status = Status.CANCELLED
            raise
        except Exception as exc:
            log.warning("dashboard operation %s failed", op.id, exc_info=True)
            op.status = Status.FAILED
            op.error = f"{type(exc).__name__}: {exc}"
        finally:
            op.finished_at = self.storage.now()
            self._publish(op, force=True)
