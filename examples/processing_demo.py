"""Complete job processing with a server: async and sync jobs, a retry, a
scheduled job and a permanent failure, on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta

from qml import (
    BackgroundJobServer,
    JobState,
    RetryPolicy,
    ServerConfig,
    StorageInstance,
    WorkerContext,
    WorkerRegistry,
)

registry = WorkerRegistry()
calls: dict[str, int] = {}


@registry.job("add")
async def add(a: int, b: int) -> int:
    return a + b


@registry.job("thumbnail", retry_policy=RetryPolicy(max_retries=2, base_delay=0.2, jitter=0))
def thumbnail(ctx: WorkerContext, path: str) -> str:
    calls[path] = calls.get(path, 0) + 1
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails on purpose")
    time.sleep(0.05)  # sync jobs run in the server's thread pool
    return f"{path}.thumb.png"


@registry.job("always_fails", retry_policy=RetryPolicy(max_retries=1, base_delay=0.2, jitter=0))
async def always_fails() -> None:
    raise ValueError("permanent failure")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = StorageInstance.sqlite(os.path.join(tmp, "jobs.db"))
        await storage.open()
        registry.storage = storage
        ids = [await add.enqueue(i, i) for i in range(10)]
        ids.append(await thumbnail.enqueue("cat.png"))
        ids.append(await add.options(at=datetime.now(UTC) + timedelta(seconds=1)).enqueue(40, 2))
        ids.append(await always_fails.enqueue())
        config = ServerConfig(
            "example-server", worker_count=4, polling_interval=0.2, scheduler_interval=0.1
        )
        async with BackgroundJobServer(config, storage, registry):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                jobs = [await storage.get_job(i) for i in ids]
                if all(j.is_final for j in jobs):
                    break
                await asyncio.sleep(0.1)
        jobs = [await storage.get_job(i) for i in ids]
        await storage.close()
    for job in jobs:
        print(
            f"{job.method:<13} {job.state.label:<10} attempts={job.attempts} "
            f"result={job.result!r} error={job.error!r}"
        )
    assert sum(j.state is JobState.SUCCEEDED for j in jobs) == 12
    assert jobs[-1].state is JobState.FAILED and jobs[-1].attempts == 2
    assert jobs[10].attempts == 2 and jobs[11].result == 42


if __name__ == "__main__":
    asyncio.run(main())
