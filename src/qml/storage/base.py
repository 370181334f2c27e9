"""The storage contract.

:class:`Storage` is the one API every backend implements. Its public methods
hold the rules (which transitions are allowed, what a new job looks like,
how payloads are checked); a backend implements only the ``_hooks``, which
store what they are told, atomically, each guarded write named after its
guard. The conformance suite in ``tests/contract`` runs unchanged against
every backend.

Hot-path operations take batches: one round trip claims many jobs
(:meth:`Storage.claim`), records many outcomes (:meth:`Storage.finish`) and
renews many leases (:meth:`Storage.extend_leases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self

from ..clock import SYSTEM_CLOCK, Clock, ensure_aware
from ..errors import (
    ConfigurationError,
    InvalidTransitionError,
    JobNotFoundError,
    LeaseLostError,
    SerializationError,
)
from ..job import Job, JobState, StateChange
from ..serialization import DEFAULT_MAX_PAYLOAD_BYTES, check_payload
from ..states import DEFAULT_RETENTION, DELETABLE, REQUEUEABLE, TRANSITIONS, Retention
from .requests import (
    ClaimRequest,
    ErrorInfo,
    HeartbeatReply,
    JobQuery,
    Lease,
    MinuteStat,
    Outcome,
    Page,
    QueueInfo,
    RecoverRequest,
    RecurringClaim,
    RecurringTemplate,
    ServerInfo,
    Stats,
    Transition,
)

MAX_NAME_LENGTH = 200
MAX_PRIORITY = 2**31 - 1

#: Capability names a backend may declare (the contract suite skips by them).
CAP_DURABLE = "durable"  # survives a process restart
CAP_MULTI_PROCESS = "multi_process"  # several processes may share it
CAP_TRANSACTIONAL_ENQUEUE = "transactional_enqueue"  # enqueue(job, connection=...)
CAP_STORAGE_CLOCK = "storage_clock"  # times come from the server, not the client


def _check_name(kind: str, value: object) -> str:
    if type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH:
        if "\x00" not in value and "\r" not in value and "\n" not in value:
            return value
    elif not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"job {kind} must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
        )
    if any(c in value for c in "\x00\r\n"):
        raise ConfigurationError(f"job {kind} must not contain NUL or line breaks")
    return value


def _claimable(request: ClaimRequest) -> bool:
    """Check a claim request; False when it cannot claim anything."""
    if request.limit <= 0 or not request.queues:
        return False
    if request.lease_seconds <= 0:
        raise ConfigurationError("lease_seconds must be positive")
    if request.max_suspects is not None and request.max_suspects < 0:
        raise ConfigurationError("max_suspects must be None or >= 0")
    if request.suspect_crashes < 1:
        raise ConfigurationError("suspect_crashes must be >= 1")
    return True


class Storage(ABC):
    """Abstract storage for jobs, leases, recurring templates and servers."""

    #: Names from the ``CAP_*`` constants this backend supports.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: True where :meth:`finish_and_claim` costs less than a finish and a claim
    #: made apart (one transaction or one round trip instead of two): a server
    #: then carries the outcomes it has ready on its next claim.
    combines_finish_and_claim: ClassVar[bool] = False
    #: Short backend name: ``memory``, ``sqlite``, ``redis``, ``postgres``.
    backend_name: ClassVar[str] = "abstract"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retention: Retention = DEFAULT_RETENTION,
    ) -> None:
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.max_payload_bytes = max_payload_bytes
        self.retention = retention

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare the schema; idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; idempotent."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def sibling(self) -> Storage | None:
        """A storage over the same jobs that another thread's event loop may use
        (the server renews leases from a thread of its own, so a job that blocks
        the server's loop keeps its lease).

        ``self`` when this object may be called from any event loop; a new,
        unopened object with connections of its own when its connections belong
        to one loop (the caller opens and closes it); None when the backend
        cannot tell (renewals then run on the server's loop).
        """
        return None

    def now(self, now: datetime | None = None) -> datetime:
        """``now`` if given, else the injected clock (client-side backends)."""
        return ensure_aware(now) if now is not None else self.clock.now()

    # ------------------------------------------------------------------ enqueue
    def prepare(
        self, job: Job, now: datetime | None = None, *, adopt: bool = False
    ) -> tuple[Job, bytes]:
        """Validate a new job and return a clean copy to store plus its encoded args.

        Whatever bookkeeping the caller set (state, attempts, lease) is reset:
        a job always enters storage Enqueued or Scheduled. ``adopt`` stamps ``job``
        itself instead of a copy: for a job nobody else holds, fresh from
        :meth:`JobFunction.build <qml.worker.JobFunction.build>` (its bookkeeping is
        still the defaults).
        """
        if not isinstance(job, Job):
            raise ConfigurationError(f"expected a Job, got {type(job).__name__}")
        _check_name("method", job.method)
        _check_name("queue", job.queue)
        if (
            isinstance(job.priority, bool)
            or not isinstance(job.priority, int)
            or abs(job.priority) > MAX_PRIORITY
        ):
            raise ConfigurationError("job priority must be an integer within ±2**31")
        if job.max_retries is not None and (
            isinstance(job.max_retries, bool)
            or not isinstance(job.max_retries, int)
            or job.max_retries < 0
        ):
            raise ConfigurationError("max_retries must be None or an integer >= 0")
        if job.timeout is not None and (
            not isinstance(job.timeout, int | float)
            or not math.isfinite(job.timeout)
            or job.timeout <= 0
        ):
            raise ConfigurationError("timeout must be None or a positive number of seconds")
        if job.dedup_key is not None:
            _check_name("dedup_key", job.dedup_key)
        payload = check_payload(job.args, self.max_payload_bytes)
        if job.meta or type(job.meta) is not dict:  # an empty dict needs no check
            try:
                check_payload(job.meta, self.max_payload_bytes)
            except SerializationError as exc:
                raise SerializationError(f"job meta: {exc}") from exc
        created = now if now is not None and now.tzinfo is UTC else self.now(now)
        run_at = job.run_at
        if run_at is None:
            state, reason, enqueued_at = JobState.ENQUEUED, "enqueued", created
        else:
            run_at = ensure_aware(run_at)
            if run_at > created:
                state, reason, enqueued_at = JobState.SCHEDULED, "scheduled", None
            else:
                state, reason, enqueued_at = JobState.ENQUEUED, "enqueued", created
        if adopt:
            job.run_at = run_at
            job.state = state
            job.created_at = job.updated_at = created
            job.enqueued_at = enqueued_at
            job.history = [StateChange(state, created, reason)]
            return job, payload
        clean = Job(
            job.method,
            job.args,
            job.queue,
            job.priority,
            job.max_retries,
            run_at,
            job.timeout,
            job.dedup_key,
            dict(job.meta),
            job.id,
            state,
            created_at=created,
            updated_at=created,
            enqueued_at=enqueued_at,
            history=[StateChange(state, created, reason)],
        )
        return clean, payload

    async def enqueue(self, job: Job, *, connection: Any = None) -> str:
        """Store a new job; return its id.

        Raises :class:`DuplicateJobError` if its ``dedup_key`` was used before.
        ``connection`` (backends with ``transactional_enqueue``) enqueues inside
        the caller's open transaction.
        """
        if connection is not None and CAP_TRANSACTIONAL_ENQUEUE not in self.capabilities:
            raise ConfigurationError(
                f"{self.backend_name} storage does not enqueue inside a caller's transaction"
            )
        clean, payload = self.prepare(job, self.clock.now())
        return (await self._enqueue([clean], [payload], connection))[0]

    def _enqueue_fresh(self, job: Job) -> Awaitable[object]:
        """:meth:`enqueue` of a job nobody else holds (``JobFunction.enqueue``
        builds it and hands it over): stored without a copy, under its own id,
        once the returned awaitable is done. Checks the job before it returns
        (one coroutine less on the hot path of every ``.enqueue()``)."""
        if type(self).enqueue is not Storage.enqueue:  # a subclass's enqueue sees every job
            return self.enqueue(job)
        clean, payload = self.prepare(job, self.clock.now(), adopt=True)
        return self._enqueue([clean], [payload], None)

    async def enqueue_many(self, jobs: Iterable[Job], *, connection: Any = None) -> list[str]:
        """Store many jobs, all or none; return their ids.

        One round trip on most backends. PostgreSQL stores a batch of more than
        :data:`~qml.storage.postgres.storage.STREAM_CHUNK` jobs in one transaction,
        a chunk per statement, and prepares the next chunk while the database
        inserts the last one: a generator of jobs (``(f.build(x) for x in xs)``) is
        then built while it is stored, too.
        """
        if connection is not None and CAP_TRANSACTIONAL_ENQUEUE not in self.capabilities:
            raise ConfigurationError(
                f"{self.backend_name} storage does not enqueue inside a caller's transaction"
            )
        # One reading of the clock for the whole batch (on storage-clock backends it
        # only shapes the returned copies; the storage stamps its own time).
        return await self._enqueue_batch(jobs, self.clock.now(), connection)

    async def _enqueue_batch(
        self, jobs: Iterable[Job], now: datetime, connection: Any = None
    ) -> list[str]:
        """:meth:`enqueue_many` after its checks: every job prepared, then stored in
        one go. A backend that can store part of a batch while the client prepares
        the next part overrides it."""
        prepared = [self.prepare(j, now) for j in jobs]
        if not prepared:
            return []
        return await self._enqueue([p[0] for p in prepared], [p[1] for p in prepared], connection)

    # ------------------------------------------------------------------ claim & finish
    async def claim(self, request: ClaimRequest) -> list[Lease]:
        """Atomically claim up to ``request.limit`` Enqueued jobs.

        Each claimed job is Processing with a fresh random fencing token, its
        attempt counted, held by ``request.server_id`` until the lease expires.
        """
        if not _claimable(request):
            return []
        return await self._claim(request)

    async def finish_and_claim(
        self, outcomes: Sequence[Outcome], request: ClaimRequest
    ) -> tuple[list[bool], list[Lease]]:
        """Record ``outcomes`` as :meth:`finish` does, then claim as :meth:`claim`
        does, in one transaction or round trip where the backend can
        (:attr:`combines_finish_and_claim`). The outcomes are applied first.

        If it raises, the outcomes may or may not have been applied, as with
        :meth:`finish` alone; each is guarded by its token, so recording them
        again is safe.
        """
        claimable = _claimable(request)
        if not outcomes:
            return [], (await self._claim(request) if claimable else [])
        if not claimable:
            return await self._finish(outcomes, request.now), []
        return await self._finish_and_claim(outcomes, request)

    async def _finish_and_claim(
        self, outcomes: Sequence[Outcome], request: ClaimRequest
    ) -> tuple[list[bool], list[Lease]]:
        """Backends that can do both in one go override this (and set
        :attr:`combines_finish_and_claim`)."""
        results = await self._finish(outcomes, request.now)
        return results, await self._claim(request)

    async def finish(self, outcomes: Sequence[Outcome], now: datetime | None = None) -> list[bool]:
        """Apply many attempt outcomes in one round trip.

        Each is applied only if its token still holds a Processing job; the
        result says, per outcome, whether it was applied (False: lease lost).
        """
        if not outcomes:
            return []
        return await self._finish(outcomes, now)

    async def _finish_one(self, outcome: Outcome) -> None:
        if not (await self.finish([outcome]))[0]:
            raise LeaseLostError(outcome.job_id)

    async def complete(self, lease: Lease, result: Any = None, *, ttl: float | None = None) -> None:
        """Mark a held job Succeeded; raises :class:`LeaseLostError` if the lease is stale."""
        if ttl is None:
            ttl = self.retention.succeeded_ttl.total_seconds()
        await self._finish_one(Outcome.succeed(lease, result, ttl=ttl))

    async def fail(self, lease: Lease, error: ErrorInfo, *, ttl: float | None = None) -> None:
        """Mark a held job Failed for good; raises :class:`LeaseLostError` if stale."""
        if ttl is None:
            ttl = self.retention.failed_ttl.total_seconds()
        await self._finish_one(Outcome.fail(lease, error, ttl=ttl))

    async def retry(self, lease: Lease, error: ErrorInfo, *, delay: float) -> None:
        """Put a held job in AwaitingRetry for ``delay`` seconds."""
        await self._finish_one(Outcome.retry(lease, error, delay=max(0.0, delay)))

    async def release(self, lease: Lease, *, delay: float = 0.0, reason: str | None = None) -> None:
        """Give a held job back without counting the attempt."""
        await self._finish_one(Outcome.release(lease, delay=max(0.0, delay), reason=reason))

    async def extend_leases(
        self,
        leases: Sequence[tuple[str, str]],
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[HeartbeatReply]:
        """Renew many leases ``(job_id, token)`` in one round trip.

        A reply with ``held=False`` means the token is stale: stop that job.
        ``cancel_requested`` relays a cancellation asked for that job.
        """
        if not leases:
            return []
        return await self._extend_leases(leases, lease_seconds, now)

    async def extend_lease(self, lease: Lease, lease_seconds: float) -> HeartbeatReply:
        """Renew one lease; raises :class:`LeaseLostError` if it is stale."""
        reply = (await self.extend_leases([(lease.job.id, lease.token)], lease_seconds))[0]
        if not reply.held:
            raise LeaseLostError(lease.job.id)
        return reply

    async def recover_expired(self, request: RecoverRequest | None = None) -> list[str]:
        """Return jobs whose lease expired; see :class:`RecoverRequest`. Returns their ids."""
        return await self._recover_expired(
            request or RecoverRequest(failed_ttl=self.retention.failed_ttl.total_seconds())
        )

    async def activate_due(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Move due Scheduled and AwaitingRetry jobs to Enqueued; return how many."""
        return await self._activate_due(now, limit)

    # ------------------------------------------------------------------ actions
    async def move(
        self,
        job_ids: Sequence[str],
        to: JobState,
        *,
        reason: str | None = None,
        allowed_from: Iterable[JobState] | None = None,
        run_at: datetime | None = None,
    ) -> list[str]:
        """Move jobs to state ``to`` where the transition table allows it.

        Jobs in a state that may not move to ``to`` (or not in
        ``allowed_from``) are left alone. Returns the ids actually moved.
        """
        # Processing is entered only by a claim and left only by its lease holder.
        sources = frozenset(
            s
            for s, targets in TRANSITIONS.items()
            if to in targets and JobState.PROCESSING not in (s, to)
        )
        if allowed_from is not None:
            sources &= frozenset(allowed_from)
        if not job_ids or not sources:
            return []
        ttl = self.retention.ttl_for(to)
        t = Transition(
            to=to,
            from_states=sources,
            reason=reason,
            ttl=ttl.total_seconds() if ttl is not None else None,
            reset_attempts=to is JobState.ENQUEUED
            and bool(sources & {JobState.FAILED, JobState.SUCCEEDED, JobState.DELETED}),
            run_at=ensure_aware(run_at) if run_at is not None else None,
        )
        return await self._transition_many(list(dict.fromkeys(job_ids)), t, None)

    async def _move_one(
        self, job_id: str, to: JobState, reason: str | None, allowed_from: Iterable[JobState]
    ) -> Job:
        moved = await self.move([job_id], to, reason=reason, allowed_from=allowed_from)
        job = await self.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if not moved:
            raise InvalidTransitionError(
                f"job {job_id} is {job.state.label}; it cannot become {to.label}"
            )
        return job

    async def delete(self, job_id: str, *, reason: str | None = "deleted") -> Job:
        """Soft-delete a job (any state but Processing); it expires after the deleted TTL."""
        return await self._move_one(job_id, JobState.DELETED, reason, DELETABLE)

    async def requeue(self, job_id: str, *, reason: str | None = "requeued") -> Job:
        """Make a Failed, Succeeded, Deleted, Scheduled or AwaitingRetry job Enqueued now.

        A requeued final job starts with a fresh attempt count.
        """
        return await self._move_one(job_id, JobState.ENQUEUED, reason, REQUEUEABLE)

    async def request_cancel(self, job_id: str) -> Job:
        """Cancel a job: a Processing job is told through its heartbeat and
        ``ctx.cancelled``; a job that has not started is deleted."""
        if await self._request_cancel(job_id):
            job = await self.get(job_id)
            if job is None:
                raise JobNotFoundError(job_id)
            return job
        return await self._move_one(
            job_id,
            JobState.DELETED,
            "cancelled",
            {JobState.ENQUEUED, JobState.SCHEDULED, JobState.AWAITING_RETRY},
        )

    # ------------------------------------------------------------------ reads
    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        return await self._get(job_id)

    async def get_job(self, job_id: str) -> Job:
        """The job with this id; raises :class:`JobNotFoundError`."""
        job = await self._get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def list_jobs(self, query: JobQuery | None = None) -> Page:
        """A page of jobs matching ``query`` (keyset pagination on the id)."""
        q = query or JobQuery()
        if not 1 <= q.limit <= 1000:
            raise ConfigurationError("page limit must be between 1 and 1000")
        return await self._list_jobs(q)

    async def count(self, state: JobState | None = None, queue: str | None = None) -> int:
        """Number of jobs, optionally in one state and/or one queue."""
        counts = await self._counts()
        return sum(
            n
            for (q, s), n in counts.items()
            if (state is None or s is state) and (queue is None or q == queue)
        )

    async def stats(self, *, history_minutes: int = 60, now: datetime | None = None) -> Stats:
        """Counts by state and by queue, and succeeded/failed per minute."""
        counts = await self._counts()
        by_state = {s: 0 for s in JobState}
        by_queue: dict[str, dict[JobState, int]] = {}
        for (q, s), n in counts.items():
            by_state[s] += n
            by_queue.setdefault(q, {st: 0 for st in JobState})[s] += n
        history = await self._history(history_minutes, now)
        return Stats(counts=by_state, by_queue=by_queue, history=history)

    async def queues(self) -> list[QueueInfo]:
        """Every known queue with counts, oldest Enqueued job and paused flag."""
        counts = await self._counts()
        paused = await self._paused_queues()
        names = sorted({q for q, _ in counts} | paused)
        oldest = await self._oldest_enqueued(names)
        out = []
        for name in names:
            c = {s: counts.get((name, s), 0) for s in JobState}
            out.append(QueueInfo(name, c, oldest.get(name), name in paused))
        return out

    # ------------------------------------------------------------------ queues
    async def pause_queue(self, queue: str) -> None:
        """Stop servers from claiming jobs of ``queue`` (persisted)."""
        await self._set_queue_paused(_check_name("queue", queue), True)

    async def resume_queue(self, queue: str) -> None:
        await self._set_queue_paused(_check_name("queue", queue), False)

    async def paused_queues(self) -> set[str]:
        return await self._paused_queues()

    # ------------------------------------------------------------------ recurring
    async def upsert_recurring(self, template: RecurringTemplate) -> None:
        """Create or replace a recurring template (its claim, if any, is kept)."""
        _check_name("recurring id", template.id)
        _check_name("method", template.method)
        _check_name("queue", template.queue)
        check_payload(template.args, self.max_payload_bytes)
        await self._upsert_recurring(template)

    async def get_recurring(self, template_id: str) -> RecurringTemplate | None:
        return await self._get_recurring(template_id)

    async def list_recurring(self) -> list[RecurringTemplate]:
        """All templates, sorted by id."""
        return await self._list_recurring()

    async def remove_recurring(self, template_id: str) -> bool:
        """Remove a template; False if there was none."""
        return await self._remove_recurring(template_id)

    async def set_recurring_paused(self, template_id: str, paused: bool) -> bool:
        """Pause or resume a template; False if there is none."""
        return await self._set_recurring_paused(template_id, paused)

    async def claim_due_recurring(
        self,
        server_id: str,
        *,
        limit: int = 10,
        claim_seconds: float = 30.0,
        now: datetime | None = None,
    ) -> list[RecurringClaim]:
        """Claim templates whose next tick is due and that nobody holds (or whose
        claim expired). A claim is released by :meth:`park_recurring`."""
        return await self._claim_due_recurring(server_id, limit, claim_seconds, now)

    async def park_recurring(
        self,
        claim: RecurringClaim,
        *,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: Sequence[Job],
    ) -> bool:
        """Atomically enqueue the tick jobs and move the template to its next tick.

        Guarded by the claim token: False (and nothing written) if the claim
        was lost. Jobs whose ``dedup_key`` was used before are skipped.
        """
        prepared = [self.prepare(j, claim.now) for j in jobs]
        return await self._park_recurring(
            claim, next_run_at, last_run_at, [p[0] for p in prepared], [p[1] for p in prepared]
        )

    # ------------------------------------------------------------------ cleanup
    async def delete_expired(self, *, limit: int = 1000, now: datetime | None = None) -> int:
        """Remove up to ``limit`` final jobs whose ``expires_at`` has passed."""
        if limit <= 0:
            return 0
        return await self._delete_expired(limit, now)

    async def prune(
        self,
        *,
        dedup_older_than: float = 30 * 86400.0,
        stats_older_than: float = 2 * 86400.0,
        now: datetime | None = None,
    ) -> None:
        """Drop bookkeeping older than the given ages (seconds): deduplication keys
        (which outlive their jobs) and per-minute statistics."""
        await self._prune(dedup_older_than, stats_older_than, now)

    # ------------------------------------------------------------------ servers
    async def heartbeat_server(self, info: ServerInfo) -> None:
        """Register a server or refresh its heartbeat (time stamped by storage)."""
        await self._heartbeat_server(info)

    async def remove_server(self, server_id: str) -> None:
        await self._remove_server(server_id)

    async def list_servers(self) -> list[ServerInfo]:
        return await self._list_servers()

    async def prune_servers(self, *, dead_after: float, now: datetime | None = None) -> int:
        """Remove servers whose last heartbeat is older than ``dead_after`` seconds."""
        return await self._prune_servers(dead_after, now)

    # ------------------------------------------------------------------ wake-up
    @property
    def hands_off_claims(self) -> bool:
        """:meth:`wait_for_claim` claims for its request (at once when jobs are
        ready, else by the enqueue that makes them ready): a server that waited
        needs no claim of its own afterwards."""
        return False

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until new work may be ready or ``timeout`` passes.

        Returns True when woken by a signal (an enqueue, here or on another
        server), False on timeout. Servers poll only as a fallback.
        """
        return await self._wait_for_work(timeout)

    async def wait_for_claim(
        self, request: ClaimRequest, timeout: float, interrupt: asyncio.Event
    ) -> list[Lease]:
        """Wait as :meth:`wait_for_work` does, for a server whose last claim
        (``request``) came back short; return soon after ``interrupt`` is set.

        A storage that :attr:`hands_off_claims` claims for ``request`` while the
        server waits: it claims at once if jobs are ready, else the enqueue
        that makes jobs ready claims them for the waiter and hands them over,
        which saves the wake-up and the claim's round trip. The leases returned
        belong to the caller (their leases began after this call did), also
        when ``interrupt`` was set meanwhile: they are never dropped. Other
        storages return ``[]`` when woken, on timeout or on ``interrupt``.
        """
        if not _claimable(request):
            return await self._wait_interruptibly(timeout, interrupt)
        return await self._wait_for_claim(request, timeout, interrupt)

    # ================================================================== hooks
    @abstractmethod
    async def _enqueue(
        self, jobs: list[Job], payloads: list[bytes], connection: Any
    ) -> list[str]: ...

    @abstractmethod
    async def _claim(self, request: ClaimRequest) -> list[Lease]: ...

    @abstractmethod
    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]: ...

    @abstractmethod
    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]: ...

    @abstractmethod
    async def _recover_expired(self, request: RecoverRequest) -> list[str]: ...

    @abstractmethod
    async def _activate_due(self, now: datetime | None, limit: int) -> int: ...

    @abstractmethod
    async def _transition_many(
        self, job_ids: list[str], t: Transition, now: datetime | None
    ) -> list[str]: ...

    @abstractmethod
    async def _request_cancel(self, job_id: str) -> bool:
        """Set the cancel flag if the job is Processing; True if set."""

    @abstractmethod
    async def _get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def _list_jobs(self, query: JobQuery) -> Page: ...

    @abstractmethod
    async def _counts(self) -> dict[tuple[str, JobState], int]:
        """Job counts per (queue, state); zero entries may be omitted."""

    @abstractmethod
    async def _history(self, minutes: int, now: datetime | None) -> list[MinuteStat]:
        """Succeeded/failed per minute for the last ``minutes`` minutes, oldest first,
        one entry per minute (zeros included)."""

    @abstractmethod
    async def _oldest_enqueued(self, queues: list[str]) -> dict[str, datetime]: ...

    @abstractmethod
    async def _set_queue_paused(self, queue: str, paused: bool) -> None: ...

    @abstractmethod
    async def _paused_queues(self) -> set[str]: ...

    @abstractmethod
    async def _upsert_recurring(self, template: RecurringTemplate) -> None: ...

    @abstractmethod
    async def _get_recurring(self, template_id: str) -> RecurringTemplate | None: ...

    @abstractmethod
    async def _list_recurring(self) -> list[RecurringTemplate]: ...

    @abstractmethod
    async def _remove_recurring(self, template_id: str) -> bool: ...

    @abstractmethod
    async def _set_recurring_paused(self, template_id: str, paused: bool) -> bool: ...

    @abstractmethod
    async def _claim_due_recurring(
        self, server_id: str, limit: int, claim_seconds: float, now: datetime | None
    ) -> list[RecurringClaim]: ...

    @abstractmethod
    async def _park_recurring(
        self,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool: ...

    @abstractmethod
    async def _delete_expired(self, limit: int, now: datetime | None) -> int: ...

    @abstractmethod
    async def _prune(
        self, dedup_older_than: float, stats_older_than: float, now: datetime | None
    ) -> None: ...

    @abstractmethod
    async def _heartbeat_server(self, info: ServerInfo) -> None: ...

    @abstractmethod
    async def _remove_server(self, server_id: str) -> None: ...

    @abstractmethod
    async def _list_servers(self) -> list[ServerInfo]: ...

    @abstractmethod
    async def _prune_servers(self, dead_after: float, now: datetime | None) -> int: ...

    @abstractmethod
    async def _wait_for_work(self, timeout: float) -> bool: ...

    async def _wait_for_claim(
        self, request: ClaimRequest, timeout: float, interrupt: asyncio.Event
    ) -> list[Lease]:
        """Storages that hand off claims override this (and set
        :attr:`hands_off_claims`)."""
        return await self._wait_interruptibly(timeout, interrupt)

    async def _wait_then_claim(
        self, request: ClaimRequest, timeout: float, interrupt: asyncio.Event
    ) -> list[Lease]:
        """For a storage that hands off claims but cannot park now: wait, then
        claim as the server would have."""
        await self._wait_interruptibly(timeout, interrupt)
        return [] if interrupt.is_set() else await self.claim(request)

    async def _give_back(self, leases: list[Lease]) -> None:
        """Release jobs claimed for a wait that ended without taking them (a
        release, no attempt counted); on failure they return by lease expiry."""
        if not leases:
            return
        try:
            await self.finish(
                [Outcome.release(lease, reason="hand-off not taken") for lease in leases]
            )
        except Exception as exc:
            logging.getLogger("qml.storage").warning(
                "could not give back %d job(s) handed over to a wait that ended (%s); they"
                " return when their leases expire",
                len(leases),
                exc,
                extra={"action": "hand_off_lost"},
            )

    async def _wait_interruptibly(self, timeout: float, interrupt: asyncio.Event) -> list[Lease]:
        if interrupt.is_set():
            return []
        waiter = asyncio.create_task(self.wait_for_work(timeout))
        stop = asyncio.create_task(interrupt.wait())
        try:
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not waiter.cancelled():
            waiter.result()  # raises what the wait raised
        return []
