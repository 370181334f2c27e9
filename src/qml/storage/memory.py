"""In-process storage for tests and development: the reference backend.

Every operation runs under one lock, so the storage is safe to share between
the event loop and the threads of the sync bridge. Arguments are kept encoded
so a caller mutating its dict after enqueue changes nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ..clock import Clock, from_epoch
from ..errors import DuplicateJobError, SerializationError
from ..job import Job, JobState, StateChange
from ..serialization import CorruptPayload, loads
from ..states import LEASE_EXPIRED, WORKER_CRASHED
from .base import Storage
from .requests import (
    ClaimRequest,
    HeartbeatReply,
    JobQuery,
    Lease,
    MinuteStat,
    Outcome,
    OutcomeKind,
    Page,
    RecoverRequest,
    RecurringClaim,
    RecurringTemplate,
    ServerInfo,
    Transition,
)

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
R = JobState.AWAITING_RETRY


def new_token() -> str:
    """A random fencing token."""
    return os.urandom(16).hex()


class _Waiters:
    """Futures of tasks waiting for work, on whatever loop they run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def add(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._items.append((loop, fut))
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        with self._lock:
            self._items = [(lp, f) for lp, f in self._items if f is not fut]

    def wake_all(self) -> None:
        if not self._items:  # nobody waits (as seen under the lock a moment later)
            return
        with self._lock:
            items, self._items = self._items, []
        for loop, fut in items:
            if loop.is_closed():
                continue
            with contextlib.suppress(RuntimeError):  # loop closed in between
                loop.call_soon_threadsafe(_set_done, fut)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_on(waiters: _Waiters, timeout: float) -> bool:
    fut = waiters.add()
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        waiters.discard(fut)


class MemoryStorage(Storage):
    """Jobs kept in this process's memory; lost when it exits."""

    backend_name = "memory"
    capabilities = frozenset[str]()

    def __init__(self, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(clock=clock, **kwargs)
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._payloads: dict[str, bytes] = {}
        self._ready: dict[str, list[tuple[int, datetime, str]]] = {}
        self._due: list[tuple[float, str]] = []
        self._tally: dict[tuple[str, JobState], int] = {}
        self._minutes: dict[int, list[int]] = {}
        self._dedup: dict[str, tuple[str, float]] = {}
        self._recurring: dict[str, RecurringTemplate] = {}
        self._servers: dict[str, ServerInfo] = {}
        self._paused: set[str] = set()
        self._waiters = _Waiters()

    def sibling(self) -> MemoryStorage | None:
        """This object: its operations hold a thread lock and touch no event loop."""
        return self

    # ------------------------------------------------------------------ internals
    def _count(self, queue: str, state: JobState, delta: int) -> None:
        key = (queue, state)
        n = self._tally.get(key, 0) + delta
        if n:
            self._tally[key] = n
        else:
            self._tally.pop(key, None)

    def _recount(self, queue: str, old: JobState, new: JobState) -> None:
        """A job of ``queue`` moved from state ``old`` to ``new``."""
        tally = self._tally
        key = (queue, old)
        n = tally.get(key, 0) - 1
        if n:
            tally[key] = n
        else:
            del tally[key]
        key = (queue, new)
        tally[key] = tally.get(key, 0) + 1

    def _set_state(
        self,
        job: Job,
        state: JobState,
        now: datetime,
        reason: str | None,
        server_id: str | None = None,
        keep_place: bool = False,
    ) -> None:
        self._recount(job.queue, job.state, state)
        job.state = state
        job.updated_at = now
        job.history.append(StateChange(state, now, reason, server_id, job.attempts))
        if state is E:
            if not keep_place or job.enqueued_at is None:
                job.enqueued_at = now
            self._push_ready(job)
        elif state is S or state is R:
            assert job.run_at is not None
            heapq.heappush(self._due, (job.run_at.timestamp(), job.id))

    def _push_ready(self, job: Job) -> None:
        # the contract's claim order: priority desc, enqueued_at asc, then id
        assert job.enqueued_at is not None
        heapq.heappush(
            self._ready.setdefault(job.queue, []), (-job.priority, job.enqueued_at, job.id)
        )

    def _read(self, job: Job) -> Job:
        out = job.copy()
        try:
            out.args = loads(self._payloads[job.id])
        except SerializationError as exc:  # corrupt payloads surface as a marker
            out.args = CorruptPayload(self._payloads[job.id].decode("utf-8", "replace"), str(exc))
        return out

    def _clear_lease(self, job: Job) -> None:
        job.lease_token = None
        job.lease_expires_at = None
        job.server_id = None
        job.cancel_requested = False

    def _insert(self, job: Job, payload: bytes) -> None:
        job.args = None
        self._jobs[job.id] = job
        self._payloads[job.id] = payload
        self._count(job.queue, job.state, +1)
        if job.state is E:
            job.enqueued_at = job.created_at
            self._push_ready(job)
        else:
            assert job.run_at is not None
            heapq.heappush(self._due, (job.run_at.timestamp(), job.id))

    def _add_minute(self, now: datetime, kind: int, n: int = 1) -> None:
        m = int(now.timestamp()) // 60
        self._minutes.setdefault(m, [0, 0])[kind] += n

    # ------------------------------------------------------------------ hooks
    async def _enqueue(self, jobs: list[Job], payloads: list[bytes], connection: Any) -> list[str]:
        if len(jobs) == 1:  # the common case, without the batch's set arithmetic
            job = jobs[0]
            key = job.dedup_key
            with self._lock:
                if key is not None and key in self._dedup:
                    raise DuplicateJobError("a job with this dedup_key already exists")
                if job.id in self._jobs:
                    raise DuplicateJobError("a job with this id already exists")
                if key is not None:
                    self._dedup[key] = (job.id, job.created_at.timestamp())
                self._insert(job, payloads[0])
            self._waiters.wake_all()
            return [job.id]
        with self._lock:
            keys = [j.dedup_key for j in jobs if j.dedup_key is not None]
            if len(set(keys)) != len(keys) or any(k in self._dedup for k in keys):
                raise DuplicateJobError("a job with this dedup_key already exists")
            ids = [j.id for j in jobs]  # checked before any write: all or none
            if len(set(ids)) != len(ids) or any(i in self._jobs for i in ids):
                raise DuplicateJobError("a job with this id already exists")
            for job, payload in zip(jobs, payloads, strict=True):
                if job.dedup_key is not None:
                    self._dedup[job.dedup_key] = (job.id, job.created_at.timestamp())
                self._insert(job, payload)
        self._waiters.wake_all()
        return [j.id for j in jobs]

    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        out: list[Lease] = []
        with self._lock:
            now = self.now(request.now)
            expires = now + timedelta(seconds=request.lease_seconds)
            suspects = request.max_suspects
            # the batch's fencing tokens from one read of the system's random source
            randomness, drawn = os.urandom(16 * request.limit), 0
            for queue in request.queues:
                if queue in self._paused:
                    continue
                heap = self._ready.get(queue)
                passed_over: list[tuple[int, datetime, str]] = []
                while heap and len(out) < request.limit:
                    entry = heapq.heappop(heap)
                    job = self._jobs.get(entry[2])
                    if (
                        job is None
                        or job.state is not E
                        or job.queue != queue
                        or job.enqueued_at != entry[1]
                    ):
                        continue  # stale heap entry
                    if suspects is not None and job.crashes >= request.suspect_crashes:
                        if suspects <= 0:
                            passed_over.append(entry)  # keeps its place
                            continue
                        suspects -= 1
                    token = randomness[drawn : drawn + 16].hex()
                    drawn += 16
                    job.attempts += 1
                    job.started_at = now
                    job.server_id = request.server_id
                    job.lease_token = token
                    job.lease_expires_at = expires
                    job.cancel_requested = False
                    # _set_state(job, P, ...) for a job known Enqueued in ``queue``
                    self._recount(queue, E, P)
                    job.state = P
                    job.updated_at = now
                    job.history.append(StateChange(P, now, None, request.server_id, job.attempts))
                    out.append(Lease(self._read(job), token, expires))
                for entry in passed_over:
                    heapq.heappush(self._ready[queue], entry)
                if len(out) >= request.limit:
                    break
        return out

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        results: list[bool] = []
        woke = False
        expiry: dict[float, datetime] = {}  # by ttl: one sum for the batch
        done = [0, 0]  # succeeded, failed: counted in the minute once per batch
        with self._lock:
            at = self.now(now)
            for o in outcomes:
                job = self._jobs.get(o.job_id)
                if job is None or job.state is not P or job.lease_token != o.token:
                    results.append(False)
                    continue
                server = job.server_id
                self._clear_lease(job)
                if o.kind is OutcomeKind.SUCCEED or o.kind is OutcomeKind.FAIL:
                    job.finished_at = at
                    ttl = o.ttl or 0.0
                    expires = expiry.get(ttl)
                    if expires is None:
                        expires = expiry[ttl] = at + timedelta(seconds=ttl)
                    job.expires_at = expires
                    if o.kind is OutcomeKind.SUCCEED:
                        job.result = o.result
                        done[0] += 1
                    else:
                        done[1] += 1
                if o.error is not None:
                    job.error_type, job.error, job.traceback = (
                        o.error.type,
                        o.error.message,
                        o.error.traceback,
                    )
                if o.kind is OutcomeKind.RETRY or (o.kind is OutcomeKind.RELEASE and o.delay > 0):
                    job.run_at = at + timedelta(seconds=o.delay)
                if o.kind is OutcomeKind.RELEASE:
                    job.attempts = max(0, job.attempts - 1)
                    woke = woke or o.delay <= 0
                self._set_state(job, o.target_state, at, o.reason, server)
                results.append(True)
            for kind, n in enumerate(done):
                if n:
                    self._add_minute(at, kind, n)
        if woke:
            self._waiters.wake_all()
        return results

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        out = []
        with self._lock:
            at = self.now(now)
            expires = at + timedelta(seconds=lease_seconds)
            for job_id, token in leases:
                job = self._jobs.get(job_id)
                if job is None or job.state is not P or job.lease_token != token:
                    out.append(HeartbeatReply(False))
                    continue
                job.lease_expires_at = expires
                out.append(HeartbeatReply(True, job.cancel_requested, expires))
        return out

    async def _recover_expired(self, request: RecoverRequest) -> list[str]:
        out: list[str] = []
        with self._lock:
            now = self.now(request.now)
            for job in list(self._jobs.values()):
                if len(out) >= request.limit:
                    break
                if job.state is not P or job.lease_expires_at is None:
                    continue
                if job.lease_expires_at > now:
                    continue
                server = job.server_id
                self._clear_lease(job)
                job.crashes += 1
                if job.crashes >= request.max_crashes:
                    job.error_type = "WorkerCrashed"
                    job.error = (
                        f"{WORKER_CRASHED}: the worker running this job died {job.crashes} times"
                    )
                    job.traceback = None
                    job.finished_at = now
                    job.expires_at = now + timedelta(seconds=request.failed_ttl)
                    self._add_minute(now, 1)
                    self._set_state(job, JobState.FAILED, now, WORKER_CRASHED, server)
                else:
                    # back in its place (enqueued_at kept), at once or after a backoff
                    delay = request.crash_delay(job.crashes)
                    if delay > 0:
                        job.run_at = now + timedelta(seconds=delay)
                        self._set_state(job, R, now, LEASE_EXPIRED, server)
                    else:
                        self._set_state(job, E, now, LEASE_EXPIRED, server, keep_place=True)
                out.append(job.id)
        if out:
            self._waiters.wake_all()
        return out

    async def _activate_due(self, now: datetime | None, limit: int) -> int:
        n = 0
        with self._lock:
            ts = self.now(now).timestamp()
            at = self.now(now)
            while self._due and self._due[0][0] <= ts and n < limit:
                _, job_id = heapq.heappop(self._due)
                job = self._jobs.get(job_id)
                if job is None or job.state not in (S, R) or job.run_at is None:
                    continue
                if job.run_at.timestamp() > ts:  # rescheduled later; its own entry exists
                    continue
                # a job waiting out a crash backoff returns to the place it had
                crashed = job.state is R and job.history[-1].reason == LEASE_EXPIRED
                self._set_state(job, E, at, "due", keep_place=crashed)
                n += 1
        if n:
            self._waiters.wake_all()
        return n

    async def _transition_many(
        self, job_ids: list[str], t: Transition, now: datetime | None
    ) -> list[str]:
        moved = []
        with self._lock:
            at = self.now(now)
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None or job.state not in t.from_states:
                    continue
                if t.ttl is not None:
                    job.expires_at = at + timedelta(seconds=t.ttl)
                    if t.to is not JobState.DELETED:
                        job.finished_at = at
                else:
                    job.expires_at = None
                if t.reset_attempts:
                    job.attempts = 0
                    job.crashes = 0
                if t.to in (S, R):
                    job.run_at = t.run_at or at
                elif t.to is E:
                    job.run_at = None
                self._set_state(job, t.to, at, t.reason)
                moved.append(job_id)
        if moved and t.to is E:
            self._waiters.wake_all()
        return moved

    async def _request_cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state is not P:
                return False
            job.cancel_requested = True
            return True

    async def _get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return self._read(job) if job is not None else None

    async def _list_jobs(self, query: JobQuery) -> Page:
        with self._lock:
            ids = sorted(self._jobs, reverse=not query.ascending)
            items: list[Job] = []
            more = False
            for job_id in ids:
                if query.cursor is not None and (
                    (job_id <= query.cursor) if query.ascending else (job_id >= query.cursor)
                ):
                    continue
                job = self._jobs[job_id]
                if query.states is not None and job.state not in query.states:
                    continue
                if query.queue is not None and job.queue != query.queue:
                    continue
                if query.method is not None and job.method != query.method:
                    continue
                if query.text is not None and not self._matches_text(job, query.text):
                    continue
                if len(items) == query.limit:
                    more = True
                    break
                items.append(self._read(job))
            cursor = items[-1].id if more and items else None
            return Page(items, cursor)

    def _matches_text(self, job: Job, text: str) -> bool:
        needle = text.lower()
        hay = (self._payloads[job.id].decode("utf-8", "replace"), job.id, job.error or "")
        return any(needle in h.lower() for h in hay)

    async def _counts(self) -> dict[tuple[str, JobState], int]:
        with self._lock:
            return dict(self._tally)

    async def _history(self, minutes: int, now: datetime | None) -> list[MinuteStat]:
        with self._lock:
            end = int(self.now(now).timestamp()) // 60
            out = []
            for m in range(end - minutes + 1, end + 1):
                s, f = self._minutes.get(m, (0, 0))
                out.append(MinuteStat(from_epoch(m * 60.0), s, f))
            return out

    async def _oldest_enqueued(self, queues: list[str]) -> dict[str, datetime]:
        with self._lock:
            out: dict[str, datetime] = {}
            for job in self._jobs.values():
                if job.state is E and job.queue in queues:
                    at = job.enqueued_at or job.created_at
                    cur = out.get(job.queue)
                    if cur is None or at < cur:
                        out[job.queue] = at
            return out

    async def _set_queue_paused(self, queue: str, paused: bool) -> None:
        with self._lock:
            if paused:
                self._paused.add(queue)
            else:
                self._paused.discard(queue)
        if not paused:
            self._waiters.wake_all()

    async def _paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused)

    async def _upsert_recurring(self, template: RecurringTemplate) -> None:
        with self._lock:
            now = self.now()
            old = self._recurring.get(template.id)
            t = replace(template, args=loads(_json(template.args)))
            t.created_at = old.created_at if old else now
            t.updated_at = now
            if old is not None:
                t.claimed_by, t.claim_expires_at = old.claimed_by, old.claim_expires_at
                if t.last_run_at is None:
                    t.last_run_at, t.last_job_id = old.last_run_at, old.last_job_id
            self._recurring[template.id] = t

    async def _get_recurring(self, template_id: str) -> RecurringTemplate | None:
        with self._lock:
            t = self._recurring.get(template_id)
            return replace(t) if t is not None else None

    async def _list_recurring(self) -> list[RecurringTemplate]:
        with self._lock:
            return [replace(self._recurring[k]) for k in sorted(self._recurring)]

    async def _remove_recurring(self, template_id: str) -> bool:
        with self._lock:
            return self._recurring.pop(template_id, None) is not None

    async def _set_recurring_paused(self, template_id: str, paused: bool) -> bool:
        with self._lock:
            t = self._recurring.get(template_id)
            if t is None:
                return False
            t.paused = paused
            t.updated_at = self.now()
            return True

    async def _claim_due_recurring(
        self, server_id: str, limit: int, claim_seconds: float, now: datetime | None
    ) -> list[RecurringClaim]:
        out: list[RecurringClaim] = []
        with self._lock:
            at = self.now(now)
            for key in sorted(self._recurring):
                if len(out) >= limit:
                    break
                t = self._recurring[key]
                if t.paused or t.next_run_at is None or t.next_run_at > at:
                    continue
                if (
                    t.claimed_by is not None
                    and t.claim_expires_at is not None
                    and t.claim_expires_at > at
                ):
                    continue
                token = new_token()
                t.claimed_by = f"{server_id}#{token}"
                t.claim_expires_at = at + timedelta(seconds=claim_seconds)
                out.append(RecurringClaim(replace(t), token, at))
        return out

    async def _park_recurring(
        self,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool:
        with self._lock:
            t = self._recurring.get(claim.template.id)
            if t is None or t.claimed_by is None or not t.claimed_by.endswith("#" + claim.token):
                return False
            last_job = None
            for job, payload in zip(jobs, payloads, strict=True):
                if job.dedup_key is not None:
                    if job.dedup_key in self._dedup:
                        continue
                    self._dedup[job.dedup_key] = (job.id, job.created_at.timestamp())
                self._insert(job, payload)
                last_job = job.id
            t.claimed_by = None
            t.claim_expires_at = None
            t.next_run_at = next_run_at
            if last_run_at is not None:
                t.last_run_at = last_run_at
            if last_job is not None:
                t.last_job_id = last_job
        if jobs:
            self._waiters.wake_all()
        return True

    async def _delete_expired(self, limit: int, now: datetime | None) -> int:
        with self._lock:
            at = self.now(now)
            doomed = [
                j
                for j in self._jobs.values()
                if j.is_final and j.expires_at is not None and j.expires_at <= at
            ][:limit]
            for job in doomed:
                del self._jobs[job.id]
                del self._payloads[job.id]
                self._count(job.queue, job.state, -1)
            return len(doomed)

    async def _prune(
        self, dedup_older_than: float, stats_older_than: float, now: datetime | None
    ) -> None:
        with self._lock:
            ts = self.now(now).timestamp()
            for k in [k for k, (_, at) in self._dedup.items() if at < ts - dedup_older_than]:
                del self._dedup[k]
            cutoff = int(ts - stats_older_than) // 60
            for m in [m for m in self._minutes if m < cutoff]:
                del self._minutes[m]

    async def _heartbeat_server(self, info: ServerInfo) -> None:
        with self._lock:
            now = self.now()
            stored = replace(info, queues=list(info.queues), current_jobs=list(info.current_jobs))
            old = self._servers.get(info.id)
            stored.started_at = info.started_at or (old.started_at if old else now)
            stored.heartbeat_at = now
            self._servers[info.id] = stored

    async def _remove_server(self, server_id: str) -> None:
        with self._lock:
            self._servers.pop(server_id, None)

    async def _list_servers(self) -> list[ServerInfo]:
        with self._lock:
            return [replace(self._servers[k]) for k in sorted(self._servers)]

    async def _prune_servers(self, dead_after: float, now: datetime | None) -> int:
        with self._lock:
            at = self.now(now)
            dead = [
                k
                for k, s in self._servers.items()
                if s.heartbeat_at is not None
                and s.heartbeat_at < at - timedelta(seconds=dead_after)
            ]
            for k in dead:
                del self._servers[k]
            return len(dead)

    async def _wait_for_work(self, timeout: float) -> bool:
        return await wait_on(self._waiters, timeout)


def _json(value: Any) -> bytes:
    from ..serialization import dumps

    return dumps(value)
