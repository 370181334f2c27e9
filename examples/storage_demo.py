"""The same storage operations on each backend: memory and SQLite always,
Redis and PostgreSQL when their URLs are given (QML_REDIS_URL, DATABASE_URL)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import UTC, datetime, timedelta

from qml import Job, JobState, Storage, StorageInstance
from qml.storage.requests import ClaimRequest, ErrorInfo, JobQuery


async def exercise(storage: Storage) -> None:
    name = storage.backend_name
    ids = await storage.enqueue_many([Job("resize", {"n": i}, priority=i % 3) for i in range(5)])
    later = await storage.enqueue(
        Job("report", {"kind": "daily"}, run_at=datetime.now(UTC) + timedelta(hours=1))
    )
    leases = await storage.claim(ClaimRequest("demo-server", ["default"], limit=3))
    print(
        f"[{name}] enqueued {len(ids)} + 1 scheduled, claimed {len(leases)} "
        f"(priorities {[lease.job.priority for lease in leases]})"
    )
    await storage.complete(leases[0], {"ok": True})
    await storage.retry(leases[1], ErrorInfo("TimeoutError", "upstream slow"), delay=30)
    await storage.fail(leases[2], ErrorInfo("ValueError", "bad input"))
    stats = await storage.stats()
    print(f"[{name}] counts: " + ", ".join(f"{s.label}={n}" for s, n in stats.counts.items() if n))
    failed = await storage.list_jobs(JobQuery(states=frozenset({JobState.FAILED})))
    requeued = await storage.requeue(failed.items[0].id)
    print(
        f"[{name}] requeued failed job -> {requeued.state.label}; "
        f"scheduled job {later[:8]}… is {(await storage.get_job(later)).state.label}"
    )


async def main() -> None:
    await exercise(StorageInstance.memory())
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = StorageInstance.sqlite(os.path.join(tmp, "demo.db"))
        await sqlite.open()
        try:
            await exercise(sqlite)
        finally:
            await sqlite.close()
    for env in ("QML_REDIS_URL", "DATABASE_URL"):
        url = os.environ.get(env)
        if url:
            storage = await StorageInstance.from_url(url)
            try:
                await exercise(storage)
            finally:
                await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
