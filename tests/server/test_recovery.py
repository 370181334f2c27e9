"""Crash recovery, fencing and lease renewal.

Crashes are seeded as the state a crash leaves (a job Processing under a
lease nobody renews), per STYLE habit 6.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from qml import (
    BackgroundJobServer,
    Job,
    LeaseLostError,
    MemoryStorage,
    WorkerContext,
    WorkerRegistry,
)
from qml.clock import FrozenClock
from qml.server.services import Scheduler
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, HeartbeatReply, Lease, RecoverRequest

from .support import (
    OK,
    WAIT,
    E,
    F,
    P,
    R,
    fast_config,
    reasons,
    serving,
    states,
    wait_for_state,
    wait_thread_event,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


async def seed_crash(storage: MemoryStorage, lease_seconds: float = 0.05) -> Lease:
    """Claim the next job as a server that dies at once (never renews, never finishes)."""
    leases = await storage.claim(ClaimRequest("dead-server", ["default"], 1, lease_seconds))
    assert len(leases) == 1
    return leases[0]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


async def test_expired_lease_is_recovered_and_rerun(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    runs = Counter[str]()

    @registry.job("work")
    async def work(ctx: WorkerContext) -> int:
        runs[ctx.job_id] += 1
        return ctx.attempt

    job_id = await work.enqueue()
    dead = await seed_crash(memory)
    async with serving(fast_config(), memory, registry) as server:
        job = await wait_for_state(memory, job_id, OK)
    assert runs[job_id] == 1
    assert job.crashes == 1
    assert job.result == 2  # the crashed claim was attempt 1
    assert ("Enqueued", "lease_expired") in reasons(job)
    assert server.leases_lost == 0

    # The dead server comes back and tries to write with its old token.
    with pytest.raises(LeaseLostError):
        await memory.complete(dead, {"late": True})
    with pytest.raises(LeaseLostError):
        await memory.fail(dead, ErrorInfo("X", "late"))
    with pytest.raises(LeaseLostError):
        await memory.extend_lease(dead, 30)
    after = await memory.get_job(job_id)
    assert after.state is OK
    assert after.result == 2


async def test_crash_backoff_goes_through_awaiting_retry(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    @registry.job("work")
    def work() -> str:
        return "ok"

    job_id = await work.enqueue()
    # a first crash sends the job straight back to the queue; a repeated one backs off
    await seed_crash(memory)
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await memory.recover_expired(RecoverRequest(now=later)) == [job_id]
    await seed_crash(memory)
    async with serving(fast_config(crash_backoff=0.01), memory, registry):
        job = await wait_for_state(memory, job_id, OK)
    assert job.crashes == 2
    assert (E.label, "lease_expired") in reasons(job)
    assert (R.label, "lease_expired") in reasons(job)


async def test_quarantined_after_max_crashes(registry: WorkerRegistry) -> None:
    """The server's scheduler counts each expired lease as a crash; the
    ``max_crashes``-th one fails the job with reason ``worker_crashed``."""
    clock = FrozenClock(datetime(2030, 1, 1, tzinfo=UTC))
    storage = MemoryStorage(clock=clock)
    config = fast_config(max_crashes=3, crash_backoff=0.0)
    scheduler = Scheduler(storage, config)
    job_id = await storage.enqueue(Job("work"))
    tokens = []
    for crash in range(1, 4):
        lease = await seed_crash(storage, lease_seconds=30)
        tokens.append(lease)
        await scheduler.run_once()
        assert (await storage.get_job(job_id)).state is P  # lease still valid
        clock.advance(31)
        await scheduler.run_once()
        job = await storage.get_job(job_id)
        assert job.crashes == crash
        if crash < 3:
            assert job.state is E
    assert job.state is F
    assert job.error_type == "WorkerCrashed"
    assert job.error is not None and job.error.startswith("worker_crashed")
    assert reasons(job)[-1] == ("Failed", "worker_crashed")
    assert job.expires_at is not None
    assert job.expires_at == clock.now() + config.failed_ttl
    for lease in tokens:
        with pytest.raises(LeaseLostError):
            await storage.complete(lease)


async def test_a_crash_does_not_use_up_a_retry(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """Crashes are counted apart from failures: with max_retries=1 and one crash
    before, a failing job still gets its first run and its one retry."""
    runs = Counter[str]()

    @registry.job("fails")
    def fails(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        raise RuntimeError("nope")

    job_id = await fails.options(max_retries=1).enqueue()
    await seed_crash(memory)
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, job_id, F)
    assert runs[job_id] == 2
    assert job.crashes == 1
    assert job.attempts == 3
    assert reasons(job)[-1] == ("Failed", "retries_exhausted")


async def steal(storage: MemoryStorage, job_id: str) -> Lease:
    """Another holder takes the job: its lease is recovered as expired (explicit
    ``now`` in the future) and the job claimed by another server."""
    job = await storage.get_job(job_id)
    assert job.lease_expires_at is not None
    later = job.lease_expires_at + timedelta(seconds=1)
    recovered = await storage.recover_expired(RecoverRequest(now=later, crash_backoff=0.0))
    assert recovered == [job_id]
    leases = await storage.claim(ClaimRequest("other-server", ["default"], 1, 3600.0))
    assert [lease.job.id for lease in leases] == [job_id]
    return leases[0]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_heartbeat_notices_a_lost_lease(
    memory: MemoryStorage, registry: WorkerRegistry, gate: threading.Event, kind: str
) -> None:
    started = threading.Event()
    reason: list[str | None] = []

    if kind == "async":

        @registry.job("long")
        async def long_async(ctx: WorkerContext) -> str:
            started.set()
            try:
                await asyncio.wait_for(ctx.cancelled.wait(), WAIT)
            finally:
                reason.append(ctx.cancelled.reason)
            return "late"

    else:

        @registry.job("long")
        def long_sync(ctx: WorkerContext) -> str:
            started.set()
            ctx.cancelled.wait_sync(WAIT)
            reason.append(ctx.cancelled.reason)
            gate.wait(WAIT)
            return "late"

    job_id = await memory.enqueue(Job("long"))
    config = fast_config(worker_count=1, lease_seconds=3.0, heartbeat_interval=0.05)
    async with serving(config, memory, registry) as server:
        await wait_thread_event(started, "the job to start")
        other = await steal(memory, job_id)
        await wait_until(lambda: server.leases_lost == 1, "the heartbeat to notice")
        await wait_until(lambda: bool(reason), "the job to see ctx.cancelled")
        assert reason == ["lease_lost"]
        await wait_until(lambda: server.running_job_ids == [], "the slot to be freed")
    gate.set()
    job = await memory.get_job(job_id)
    assert job.state is P  # the late outcome was never written
    assert job.server_id == "other-server"
    assert job.lease_token == other.token
    await memory.complete(other, "from the new holder")
    assert (await memory.get_job(job_id)).result == "from the new holder"


async def test_late_outcome_is_refused_by_the_fencing_token(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """The job ends before any heartbeat: its outcome write is refused."""
    started = asyncio.Event()
    go = asyncio.Event()

    @registry.job("work")
    async def work() -> str:
        started.set()
        await go.wait()
        return "late"

    job_id = await memory.enqueue(Job("work"))
    # Heartbeats far apart: only the outcome write can notice.
    config = fast_config(lease_seconds=300.0, heartbeat_interval=100.0)
    async with serving(config, memory, registry) as server:
        await asyncio.wait_for(started.wait(), WAIT)
        other = await steal(memory, job_id)
        go.set()
        await wait_until(lambda: server.leases_lost == 1, "the refused write")
        job = await memory.get_job(job_id)
        assert job.state is P
        assert job.lease_token == other.token
        assert job.result is None


async def test_heartbeats_keep_a_long_job_from_being_recovered(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    runs = Counter[str]()

    @registry.job("long")
    async def long(ctx: WorkerContext) -> str:
        runs[ctx.job_id] += 1
        started.set()
        await go.wait()
        return "done"

    job_id = await long.enqueue()
    lease = 1.0
    config = fast_config(lease_seconds=lease, heartbeat_interval=0.1)
    async with serving(config, memory, registry) as server:
        await asyncio.wait_for(started.wait(), WAIT)
        first = await memory.get_job(job_id)
        assert first.started_at is not None

        async def renewed_well_past_the_first_lease() -> bool:
            job = await memory.get_job(job_id)
            assert job.state is P, "recovered while its server was alive"
            assert first.started_at is not None and job.lease_expires_at is not None
            # Renewed 1.5 leases after the start: the job outlived its first lease.
            return job.lease_expires_at > first.started_at + timedelta(seconds=2.5 * lease)

        await wait_until(renewed_well_past_the_first_lease, "the lease to be renewed")
        go.set()
        job = await wait_for_state(memory, job_id, OK)
        assert server.leases_lost == 0
    assert runs[job_id] == 1
    assert job.crashes == 0
    assert job.attempts == 1
    assert states(job) == [E, P, OK]


async def test_ctx_heartbeat_renews_at_once(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    finish = asyncio.Event()

    @registry.job("reports")
    async def reports(ctx: WorkerContext) -> None:
        started.set()
        await go.wait()
        ctx.heartbeat()
        await finish.wait()

    job_id = await reports.enqueue()
    # The periodic renewal is far away; only the job's request triggers one.
    config = fast_config(lease_seconds=300.0, heartbeat_interval=100.0)
    async with serving(config, memory, registry):
        await asyncio.wait_for(started.wait(), WAIT)
        before = (await memory.get_job(job_id)).lease_expires_at
        assert before is not None
        go.set()

        async def renewed() -> bool:
            after = (await memory.get_job(job_id)).lease_expires_at
            return after is not None and after > before

        await wait_until(renewed, "the requested heartbeat")
        finish.set()
        await wait_for_state(memory, job_id, OK)


async def test_server_registry_entry(memory: MemoryStorage, registry: WorkerRegistry) -> None:
    server = BackgroundJobServer(fast_config(worker_count=3), memory, registry)
    await server.start()
    try:

        async def registered() -> bool:
            return [s.id for s in await memory.list_servers()] == ["test-server"]

        await wait_until(registered, "the server to register")
        info = (await memory.list_servers())[0]
        assert info.worker_count == 3
        assert info.queues == ["default"]
        assert info.heartbeat_at is not None
    finally:
        await asyncio.wait_for(server.stop(), WAIT)
    assert await memory.list_servers() == []


class SlowRenewStorage(MemoryStorage):
    """Lease renewals that can be held on the wire, as on a networked storage."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held_renewal = asyncio.Event()
        self.go = asyncio.Event()
        self.renewed_after_hold = asyncio.Event()

    def sibling(self) -> None:
        """Its events belong to the test's loop: the server renews on that loop."""
        return None

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        held = self.hold
        if held:
            self.hold = False
            self.held_renewal.set()
            await self.go.wait()
        replies = await super()._extend_leases(leases, lease_seconds, now)
        if held:
            self.renewed_after_hold.set()
        return replies


async def test_a_renewal_answered_after_the_outcome_is_not_a_lost_lease() -> None:
    """A job finishes while a renewal of its lease is on the wire: the renewal's
    "not held" answer is about our own finished job, not a lost lease."""
    storage = SlowRenewStorage()
    registry = WorkerRegistry(storage)
    started = asyncio.Event()
    finish = asyncio.Event()
    seen: list[str | None] = []

    @registry.job("work")
    async def work(ctx: WorkerContext) -> str:
        started.set()
        await finish.wait()
        seen.append(ctx.cancelled.reason)
        return "done"

    job_id = await work.enqueue()
    config = fast_config(lease_seconds=3.0, heartbeat_interval=0.05)
    async with serving(config, storage, registry) as server:
        await asyncio.wait_for(started.wait(), WAIT)
        storage.hold = True
        await asyncio.wait_for(storage.held_renewal.wait(), WAIT)
        finish.set()
        job = await wait_for_state(storage, job_id, OK)
        storage.go.set()
        await asyncio.wait_for(storage.renewed_after_hold.wait(), WAIT)
        await wait_until(lambda: not server.running_job_ids, "the slot to be free")
        assert server.leases_lost == 0
    assert job.result == "done"
    assert seen == [None]


async def test_suspects_run_one_at_a_time_beside_fresh_jobs(storage: Storage) -> None:
    """Jobs one crash away from quarantine (here ``max_crashes=2``: one crash) may
    include the one that killed a worker: a server runs at most one of them at a
    time, beside other jobs only, and claims the next one as soon as it ends (the
    polling interval here is longer than the test's bound)."""
    registry = WorkerRegistry(storage)
    running: set[str] = set()
    most = 0
    ran = Counter[str]()

    @registry.job("work")
    async def work(ctx: WorkerContext) -> None:
        nonlocal most
        ran[ctx.job_id] += 1
        if ctx.job.crashes:
            running.add(ctx.job_id)
            most = max(most, len(running))
        await asyncio.sleep(0.02)
        running.discard(ctx.job_id)

    suspects = [await work.enqueue() for _ in range(6)]
    t0 = datetime.now(UTC)
    dead = await storage.claim(ClaimRequest("dead-server", ["default"], 6, 1.0, t0))
    assert sorted(x.job_id for x in dead) == sorted(suspects)
    later = t0 + timedelta(seconds=2)
    assert sorted(await storage.recover_expired(RecoverRequest(now=later))) == sorted(suspects)
    fresh = [await work.enqueue() for _ in range(6)]
    config = fast_config(worker_count=4, fetch_batch_size=4, polling_interval=3600.0, max_crashes=2)
    async with serving(config, storage, registry):
        for job_id in suspects + fresh:
            await wait_for_state(storage, job_id, OK)
    assert most == 1
    assert ran == Counter({job_id: 1 for job_id in suspects + fresh})
