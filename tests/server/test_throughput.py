"""Exactly-once execution under concurrency, and a 10,000-job drain."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

from qml import BackgroundJobServer, JobState, MemoryStorage, Storage, WorkerContext, WorkerRegistry
from qml.storage.requests import OutcomeKind

from .support import OK, WAIT, fast_config, serving, wait_for_count


async def test_100_jobs_on_20_workers_each_run_exactly_once(memory: MemoryStorage) -> None:
    registry = WorkerRegistry(memory)
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    active = 0
    peak = 0

    @registry.job("async_count")
    async def async_count(ctx: WorkerContext, n: int) -> int:
        nonlocal active, peak
        with lock:
            runs[ctx.job_id] += 1
            active += 1
            peak = max(peak, active)
        try:
            for _ in range(random.randint(0, 5)):
                await asyncio.sleep(0)
        finally:
            with lock:
                active -= 1
        return n

    @registry.job("sync_count")
    def sync_count(ctx: WorkerContext, n: int) -> int:
        nonlocal active, peak
        with lock:
            runs[ctx.job_id] += 1
            active += 1
            peak = max(peak, active)
        with lock:
            active -= 1
        return n

    ids = await memory.enqueue_many(
        [(async_count if i % 2 else sync_count).build(i) for i in range(100)]
    )
    async with serving(fast_config(worker_count=20, fetch_batch_size=20), memory, registry):
        await wait_for_count(memory, OK, 100)

    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    assert peak <= 20
    for i, job_id in enumerate(ids):
        job = await memory.get_job(job_id)
        assert job.state is OK
        assert job.attempts == 1
        assert job.result == i
    assert await memory.count() == 100


async def test_10000_noop_jobs_all_succeed_once(storage: Storage) -> None:
    """Parametrized over every backend of the contract suite."""
    registry = WorkerRegistry(storage)
    runs: Counter[str] = Counter()

    @registry.job("noop")
    async def noop(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1

    total = 10_000
    ids: list[str] = []
    for _ in range(total // 1000):
        ids += await storage.enqueue_many([noop.build() for _ in range(1000)])
    assert len(set(ids)) == total

    server = BackgroundJobServer(
        fast_config(worker_count=20, fetch_batch_size=20, lease_seconds=30.0),
        storage,
        registry,
        burst=True,
    )
    await asyncio.wait_for(server.run(), 12 * WAIT)

    assert len(runs) == total, f"lost {total - len(runs)} job(s)"
    assert set(runs) == set(ids)
    duplicates = {k: v for k, v in runs.items() if v != 1}
    assert duplicates == {}
    counts = (await storage.stats()).counts
    assert counts[JobState.SUCCEEDED] == total
    assert sum(counts.values()) == total
    assert server.processed[OutcomeKind.SUCCEED] == total
    assert server.leases_lost == 0
