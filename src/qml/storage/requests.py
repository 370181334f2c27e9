"""Values exchanged with storage: one frozen dataclass per operation.

Times are optional on every request: ``now=None`` means "the storage's own
clock" (database time on PostgreSQL, ``TIME`` on Redis, the injected clock on
SQLite and Memory). Tests pass an explicit ``now`` to move time without sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from ..job import Job, JobState


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Claim up to ``limit`` Enqueued jobs from ``queues`` (in priority order).

    Jobs are taken from the first queue first; inside a queue, higher job
    priority first, then oldest first. Paused queues are skipped.

    ``max_suspects`` bounds how many of the claimed jobs may be *suspects*: jobs
    whose ``crashes`` (times a worker process died while running them) reached
    ``suspect_crashes``. Suspects beyond the bound are passed over and keep their
    place for the next claim; ``None`` means no bound. A server counts as suspects
    the jobs one crash away from quarantine and asks for at most one while it runs
    none, for none while it runs one: a job that died beside a poison job cannot
    die beside it again on its last chance, so it is not quarantined for the
    company it kept.
    """

    server_id: str
    queues: Sequence[str]
    limit: int
    lease_seconds: float = 30.0
    now: datetime | None = None
    max_suspects: int | None = None
    suspect_crashes: int = 1


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job and the fencing token that proves its holder owns it."""

    job: Job
    token: str
    expires_at: datetime

    def __init__(self, job: Job, token: str, expires_at: datetime) -> None:
        # Frozen, but set through the slots themselves: the generated __init__'s
        # object.__setattr__ per field costs twice as much, on every claimed job.
        _LEASE_JOB(self, job)
        _LEASE_TOKEN(self, token)
        _LEASE_EXPIRES(self, expires_at)

    @property
    def job_id(self) -> str:
        return self.job.id


_LEASE_JOB = cast(Any, Lease).job.__set__
_LEASE_TOKEN = cast(Any, Lease).token.__set__
_LEASE_EXPIRES = cast(Any, Lease).expires_at.__set__


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What went wrong in one attempt.

    Text every storage can hold: a NUL character (PostgreSQL text cannot store
    one) or a lone surrogate (not UTF-8) is replaced by U+FFFD.
    """

    type: str
    message: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        for name in ("type", "message", "traceback"):
            value = getattr(self, name)
            if isinstance(value, str):
                clean = storable_text(value)
                if clean is not value:
                    object.__setattr__(self, name, clean)


def storable_text(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD (``text``
    itself when it has none)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


class OutcomeKind(StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    RETRY = "retry"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, applied only if ``token`` still holds the job.

    * ``SUCCEED``: Succeeded with ``result``; expires ``ttl`` seconds later.
    * ``FAIL``: Failed with ``error``; expires ``ttl`` seconds later.
    * ``RETRY``: AwaitingRetry with ``error``, due ``delay`` seconds later.
    * ``RELEASE``: back to Enqueued (or Scheduled ``delay`` seconds later)
      without counting the attempt.
    """

    job_id: str
    token: str
    kind: OutcomeKind
    result: Any = None
    error: ErrorInfo | None = None
    delay: float = 0.0
    ttl: float | None = None
    reason: str | None = None
    server_id: str | None = None

    def __init__(
        self,
        job_id: str,
        token: str,
        kind: OutcomeKind,
        result: Any = None,
        error: ErrorInfo | None = None,
        delay: float = 0.0,
        ttl: float | None = None,
        reason: str | None = None,
        server_id: str | None = None,
    ) -> None:
        # set through the slots (see Lease.__init__): one per finished job
        (s_id, s_token, s_kind, s_result, s_error,
         s_delay, s_ttl, s_reason, s_server) = _OUTCOME_SETTERS  # fmt: skip
        s_id(self, job_id)
        s_token(self, token)
        s_kind(self, kind)
        s_result(self, result)
        s_error(self, error)
        s_delay(self, delay)
        s_ttl(self, ttl)
        s_reason(self, reason)
        s_server(self, server_id)

    @classmethod
    def succeed(cls, lease: Lease, result: Any = None, *, ttl: float) -> Outcome:
        job = lease.job
        return cls(job.id, lease.token, _SUCCEED, result, None, 0.0, ttl, None, job.server_id)

    @classmethod
    def fail(
        cls, lease: Lease, error: ErrorInfo, *, ttl: float, reason: str | None = None
    ) -> Outcome:
        job = lease.job
        return cls(job.id, lease.token, _FAIL, None, error, 0.0, ttl, reason, job.server_id)

    @classmethod
    def retry(
        cls, lease: Lease, error: ErrorInfo, *, delay: float, reason: str | None = None
    ) -> Outcome:
        job = lease.job
        return cls(job.id, lease.token, _RETRY, None, error, delay, None, reason, job.server_id)

    @classmethod
    def release(cls, lease: Lease, *, delay: float = 0.0, reason: str | None = None) -> Outcome:
        job = lease.job
        return cls(job.id, lease.token, _RELEASE, None, None, delay, None, reason, job.server_id)

    @property
    def target_state(self) -> JobState:
        if self.kind is OutcomeKind.SUCCEED:
            return JobState.SUCCEEDED
        if self.kind is OutcomeKind.FAIL:
            return JobState.FAILED
        if self.kind is OutcomeKind.RETRY:
            return JobState.AWAITING_RETRY
        return JobState.SCHEDULED if self.delay > 0 else JobState.ENQUEUED


_SUCCEED, _FAIL = OutcomeKind.SUCCEED, OutcomeKind.FAIL
_RETRY, _RELEASE = OutcomeKind.RETRY, OutcomeKind.RELEASE
_OUTCOME_SETTERS = tuple(
    getattr(Outcome, name).__set__
    for name in ("job_id", "token", "kind", "result", "error", "delay", "ttl", "reason",
                 "server_id")
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """Answer to a lease extension for one job."""

    held: bool
    cancel_requested: bool = False
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    """Return jobs whose lease expired to the queue (their holder crashed).

    Each recovery counts a crash. The ``max_crashes``-th crash quarantines the
    job to Failed (reason ``worker_crashed``, expiring ``failed_ttl`` seconds
    later). Otherwise the job waits :meth:`crash_delay` seconds in
    AwaitingRetry, or goes straight to Enqueued when that is 0: always for a
    first crash (a job whose holder died is not suspect; finding the death
    already took a whole lease), while repeated crashes back off
    exponentially so a job that kills its workers cannot hot-loop.

    Either way the job keeps its place in its queue: it keeps the
    ``enqueued_at`` it had when it was claimed, so it is claimed again before
    the jobs of its priority enqueued after it.
    """

    now: datetime | None = None
    limit: int = 1000
    max_crashes: int = 3
    crash_backoff: float = 1.0
    failed_ttl: float = 7 * 86400.0

    def crash_delay(self, crashes: int) -> float:
        """Seconds a job waits after its ``crashes``-th crash: 0 for the first,
        then ``crash_backoff * 2 ** (crashes - 2)``."""
        if crashes <= 1:
            return 0.0
        return self.crash_backoff * 2.0 ** (crashes - 2)


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change requested by a person or service (not by a lease holder).

    Applied to each job only while it is in one of ``from_states``
    (computed by the core from the transition table).
    """

    to: JobState
    from_states: frozenset[JobState]
    reason: str | None = None
    ttl: float | None = None
    reset_attempts: bool = False
    run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters and a keyset cursor for listing jobs (newest first by default).

    ``text`` matches a substring of the encoded arguments, the id or the error.
    ``cursor`` is the ``next_cursor`` of the previous page.
    """

    states: frozenset[JobState] | None = None
    queue: str | None = None
    method: str | None = None
    text: str | None = None
    cursor: str | None = None
    limit: int = 50
    ascending: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class MinuteStat:
    minute: datetime
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    counts: dict[JobState, int]
    oldest_enqueued_at: datetime | None
    paused: bool


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts by state, by queue and state, and per-minute outcome history."""

    counts: dict[JobState, int]
    by_queue: dict[str, dict[JobState, int]]
    history: list[MinuteStat]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class ServerInfo:
    """A running server as seen in the registry."""

    id: str
    hostname: str = ""
    pid: int = 0
    queues: list[str] = field(default_factory=list)
    worker_count: int = 0
    busy: int = 0
    version: str = ""
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    current_jobs: list[str] = field(default_factory=list)


class MisfirePolicy(StrEnum):
    """What a recurring template does about ticks missed while no server ran."""

    FIRE_ONCE = "fire_once"
    SKIP = "skip"
    FIRE_ALL = "fire_all"


@dataclass(slots=True)
class RecurringTemplate:
    """A cron template; ``next_run_at`` is its next tick (storage time)."""

    id: str
    cron: str
    method: str
    args: Any = field(default_factory=dict)
    queue: str = "default"
    timezone: str = "UTC"
    misfire: MisfirePolicy = MisfirePolicy.FIRE_ONCE
    max_catchup: int = 100
    priority: int = 0
    max_retries: int | None = None
    paused: bool = False
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecurringClaim:
    """A due template held by one server until ``park_recurring`` or expiry."""

    template: RecurringTemplate
    token: str
    now: datetime
