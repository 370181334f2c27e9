"""Helpers for the contract suite (fixtures live in ``tests/conftest.py``).

Time: backends whose clock is the database's cannot be frozen, so tests take
``utcnow()`` as a base and move time by passing an explicit ``now``. Stored
times are compared with a small tolerance (a backend may keep epoch floats).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from qml.job import Job, JobState, StateChange
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, Lease, Outcome

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
OK, F, R, D = JobState.SUCCEEDED, JobState.FAILED, JobState.AWAITING_RETRY, JobState.DELETED

TOLERANCE = timedelta(milliseconds=2)
ERROR = ErrorInfo("ValueError", "Boom went the Kaput job", "Traceback (most recent call last):\n")


class StorageMaker(Protocol):
    """What the ``make_storage`` fixture provides (see ``tests/conftest.py``)."""

    backend: str

    async def __call__(self, *, fresh: bool = False, **kwargs: Any) -> Storage: ...

    async def dispose(self, storage: Storage, *, drop: bool = True) -> None: ...

    async def aclose(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def sec(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def same_time(actual: datetime | None, expected: datetime | None) -> bool:
    """Equal within :data:`TOLERANCE` (both None counts as equal)."""
    if actual is None or expected is None:
        return actual is expected
    return abs(actual - expected) <= TOLERANCE


def assert_time(actual: datetime | None, expected: datetime) -> None:
    assert actual is not None, f"expected {expected}, got None"
    assert actual.tzinfo is not None, f"{actual} is naive"
    assert abs(actual - expected) <= TOLERANCE, f"{actual} != {expected}"


def assert_recent(actual: datetime | None, within: float = 300.0) -> None:
    """A time stamped by the storage's clock: aware and close to the host's clock."""
    assert actual is not None
    assert actual.tzinfo is not None, f"{actual} is naive"
    assert abs(actual - utcnow()) <= sec(within), f"{actual} is far from now"


def last_change(job: Job) -> StateChange:
    assert job.history, f"job {job.id} has no history"
    return job.history[-1]


async def claim_one(
    storage: Storage,
    queue: str = "default",
    *,
    server: str = "srv-1",
    now: datetime | None = None,
    lease_seconds: float = 30.0,
) -> Lease:
    leases = await storage.claim(ClaimRequest(server, [queue], 1, lease_seconds, now))
    assert len(leases) == 1, f"expected one job to claim from {queue!r}, got {len(leases)}"
    return leases[0]


async def claim_all(
    storage: Storage,
    queues: list[str],
    *,
    server: str = "srv-1",
    now: datetime | None = None,
    batch: int = 1,
) -> list[Lease]:
    """Claim until nothing is left, ``batch`` jobs at a time; in claim order."""
    out: list[Lease] = []
    while True:
        leases = await storage.claim(ClaimRequest(server, queues, batch, 30.0, now))
        if not leases:
            return out
        out.extend(leases)


async def job_in_state(storage: Storage, state: JobState, queue: str) -> str:
    """Enqueue a job on ``queue`` (which must hold no other Enqueued job) and
    bring it to ``state`` through public operations; return its id."""
    run_at = utcnow() + timedelta(hours=1) if state is S else None
    job_id = await storage.enqueue(Job("contract.job", {"q": queue}, queue=queue, run_at=run_at))
    if state in (E, S):
        return job_id
    if state is D:
        await storage.delete(job_id)
        return job_id
    lease = await claim_one(storage, queue)
    if state is P:
        return job_id
    if state is OK:
        ok = await storage.finish([Outcome.succeed(lease, {"ok": True}, ttl=3600)])
    elif state is F:
        ok = await storage.finish([Outcome.fail(lease, ERROR, ttl=3600)])
    else:
        ok = await storage.finish([Outcome.retry(lease, ERROR, delay=3600)])
    assert ok == [True]
    return job_id
