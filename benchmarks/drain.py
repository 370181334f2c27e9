"""Drain throughput: N pre-enqueued no-op jobs through one in-process server.

    python benchmarks/drain.py --storage sqlite:///bench.db --jobs 10000 --workers 10

Prints jobs/s (first claim to last job start) and CPU seconds per 1,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from qml import BackgroundJobServer, Job, ServerConfig, StorageInstance, WorkerRegistry
from qml.job import JobState


async def main(url: str, n: int, workers: int, batch: int) -> None:
    storage = await StorageInstance.from_url(url)
    registry = WorkerRegistry()
    seen = 0
    done = asyncio.Event()
    last = 0.0

    @registry.job("noop")
    async def noop(i: int) -> None:
        nonlocal seen, last
        seen += 1
        last = time.perf_counter()
        if seen == n:
            done.set()

    t = time.perf_counter()
    for start in range(0, n, 1000):
        await storage.enqueue_many(
            [Job("noop", {"i": i}) for i in range(start, min(n, start + 1000))]
        )
    enq = time.perf_counter() - t
    config = ServerConfig(
        "bench",
        worker_count=workers,
        fetch_batch_size=batch,
        enable_cleanup=False,
        enable_recurring=False,
    )
    server = BackgroundJobServer(config, storage, registry)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await server.start()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = last - t0
    cpu = time.process_time() - cpu0
    await server.stop()
    ok = await storage.count(JobState.SUCCEEDED)
    await storage.close()
    print(
        f"{url.split(':')[0]:<10} jobs={n} workers={workers} enqueue_many={n / enq:,.0f}/s "
        f"drain={n / elapsed:,.0f} jobs/s cpu={cpu / n * 1000:.3f} s/1000 succeeded={ok}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--storage", default="memory://")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--batch", type=int, default=10)
    a = p.parse_args()
    if a.storage.startswith("sqlite:///") and os.path.exists(a.storage[10:]):
        os.remove(a.storage[10:])
    asyncio.run(main(a.storage, a.jobs, a.workers, a.batch))
