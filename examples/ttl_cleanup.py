"""Retention: Succeeded and Failed jobs are stamped with ``expires_at`` and a
CleanupWorker deletes expired rows in bounded batches, out of band, so the hot
enqueue path stays O(1) and the job table stops growing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from qml import BackgroundJobServer, JobState, MemoryStorage, ServerConfig, WorkerRegistry

registry = WorkerRegistry()


@registry.job("resize")
async def resize(n: int) -> int:
    return n * 2


async def main() -> None:
    storage = MemoryStorage()
    registry.storage = storage
    config = ServerConfig(
        "server-1",
        succeeded_ttl=timedelta(seconds=1),  # default 24 h
        failed_ttl=timedelta(days=7),  # default
        cleanup_interval=0.5,  # default 1 min
        cleanup_batch_size=1000,
    )
    for i in range(50):
        await resize.enqueue(i)
    async with BackgroundJobServer(config, storage, registry):
        for _ in range(100):
            if await storage.count(JobState.SUCCEEDED) == 50:
                break
            await asyncio.sleep(0.05)
        job = (await storage.list_jobs()).items[0]
        print(
            f"{await storage.count(JobState.SUCCEEDED)} succeeded; one expires at "
            f"{job.expires_at} (finished {job.finished_at})"
        )
        for _ in range(100):
            if await storage.count() == 0:
                break
            await asyncio.sleep(0.1)
    print(f"after cleanup: {await storage.count()} jobs left")
    assert await storage.count() == 0


if __name__ == "__main__":
    asyncio.run(main())
