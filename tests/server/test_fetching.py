"""Which jobs a server takes, how many at a time, and burst mode."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from qml import BackgroundJobServer, Job, MemoryStorage, WorkerContext, WorkerRegistry
from qml.storage.requests import ClaimRequest, Lease

from .support import OK, WAIT, E, S, fast_config, serving, wait_for_count, wait_for_state

pytestmark = pytest.mark.timeout(60)


async def test_queue_priority_then_job_priority_then_fifo(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    order: list[str] = []

    @registry.job("tag")
    def tag(name: str) -> None:
        order.append(name)

    jobs = [
        Job("tag", {"name": "low-1"}, queue="low"),
        Job("tag", {"name": "default-p0-a"}),
        Job("tag", {"name": "high-p0-a"}, queue="high"),
        Job("tag", {"name": "default-p5"}, priority=5),
        Job("tag", {"name": "high-p0-b"}, queue="high"),
        Job("tag", {"name": "high-p9"}, queue="high", priority=9),
        Job("tag", {"name": "default-p0-b"}),
        Job("tag", {"name": "low-2"}, queue="low"),
        Job("tag", {"name": "elsewhere"}, queue="not-served"),
    ]
    for job in jobs:
        await memory.enqueue(job)
    config = fast_config(worker_count=1, fetch_batch_size=1, queues=["high", "default", "low"])
    await asyncio.wait_for(BackgroundJobServer(config, memory, registry, burst=True).run(), WAIT)
    assert order == [
        "high-p9",
        "high-p0-a",
        "high-p0-b",
        "default-p5",
        "default-p0-a",
        "default-p0-b",
        "low-1",
        "low-2",
    ]
    assert await memory.count(E, "not-served") == 1


class RecordingStorage(MemoryStorage):
    """Records each claim's limit and how many jobs the server ran at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.server: BackgroundJobServer | None = None
        self.claims: list[tuple[int, int]] = []

    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        assert self.server is not None
        self.claims.append((request.limit, len(self.server.running_job_ids)))
        return await super()._claim(request)


async def test_fetch_batch_never_exceeds_free_slots() -> None:
    storage = RecordingStorage()
    registry = WorkerRegistry(storage)
    active = 0
    peak = 0

    @registry.job("busy")
    async def busy(ctx: WorkerContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(random.randint(1, 20)):
            await asyncio.sleep(0)
        active -= 1

    await storage.enqueue_many([busy.build() for _ in range(200)])
    config = fast_config(worker_count=5, fetch_batch_size=3)
    server = BackgroundJobServer(config, storage, registry, burst=True)
    storage.server = server
    await asyncio.wait_for(server.run(), WAIT)

    assert await storage.count(OK) == 200
    assert peak <= 5
    assert storage.claims
    for limit, running in storage.claims:
        assert 1 <= limit <= 3
        assert limit <= 5 - running
    assert any(limit < 3 for limit, _ in storage.claims), "free slots never limited a batch"


async def test_paused_queue_is_not_taken_until_resumed(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    @registry.job("q")
    def q(n: int) -> int:
        return n

    await memory.pause_queue("slow")
    slow_ids = [await q.options(queue="slow").enqueue(i) for i in range(5)]
    fast_ids = [await q.enqueue(i) for i in range(5)]
    config = fast_config(queues=["default", "slow"])
    async with serving(config, memory, registry):
        for job_id in fast_ids:
            await wait_for_state(memory, job_id, OK)
        for job_id in slow_ids:
            job = await memory.get_job(job_id)
            assert job.state is E
            assert job.attempts == 0
        await memory.resume_queue("slow")
        await wait_for_count(memory, OK, 10)


async def test_new_job_wakes_an_idle_server(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """An idle server starts a new job on the wake-up signal, not the next poll."""
    done = asyncio.Event()

    @registry.job("ping")
    async def ping() -> None:
        done.set()

    # With a poll interval far beyond the wait bound, only the signal can wake it.
    async with serving(fast_config(polling_interval=3600.0), memory, registry):
        await asyncio.sleep(0.05)  # let the fetch loop go idle (not needed for correctness)
        await ping.enqueue()
        await asyncio.wait_for(done.wait(), WAIT)


async def test_burst_returns_once_no_job_is_ready(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    @registry.job("chain")
    async def chain(n: int) -> None:
        if n:
            await chain.enqueue(n - 1)  # work created by work is drained too

    await chain.enqueue(5)
    later = await memory.enqueue(
        Job("chain", {"n": 0}, run_at=datetime.now(UTC) + timedelta(hours=1))
    )
    await memory.pause_queue("paused")
    paused = await memory.enqueue(Job("chain", {"n": 0}, queue="paused"))
    config = fast_config(queues=["default", "paused"])
    await asyncio.wait_for(BackgroundJobServer(config, memory, registry, burst=True).run(), WAIT)
    assert await memory.count(OK) == 6
    assert (await memory.get_job(later)).state is S  # not ready: left for later
    assert (await memory.get_job(paused)).state is E  # paused: not ready either


async def test_burst_on_an_empty_storage_returns_at_once(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    server = BackgroundJobServer(fast_config(), memory, registry, burst=True)
    await asyncio.wait_for(server.run(), WAIT)
    assert not server.is_running
