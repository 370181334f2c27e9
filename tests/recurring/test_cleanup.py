"""Retention cleanup on every backend: only final jobs past their expiry are
removed, in batches of the configured size, while claims keep working."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from qml import Job, JobState, ServerConfig, Storage
from qml.server.services import CleanupWorker
from qml.storage.requests import ClaimRequest, Outcome

BATCH = 1000


async def _finish_all(storage: Storage, n: int, queue: str, ttl: float) -> None:
    for start in range(0, n, BATCH):
        await storage.enqueue_many(
            [Job("work", {"i": i}, queue=queue) for i in range(start, min(n, start + BATCH))]
        )
    done = 0
    while done < n:
        leases = await storage.claim(ClaimRequest("seeder", [queue], BATCH))
        assert leases
        ok = await storage.finish([Outcome.succeed(lease, None, ttl=ttl) for lease in leases])
        assert all(ok)
        done += len(leases)


async def test_cleanup_removes_exactly_the_expired_jobs_in_batches(storage: Storage) -> None:
    await _finish_all(storage, 20_000, "old", ttl=0.0)  # expired at once
    await _finish_all(storage, 1_000, "recent", ttl=86400.0)  # expires tomorrow
    active = await storage.enqueue_many([Job("work", {"a": i}, queue="live") for i in range(500)])
    retried = await storage.enqueue(Job("work", {"r": 1}, queue="retry"))
    (lease,) = await storage.claim(ClaimRequest("w", ["retry"], 1))
    await storage.finish([Outcome.succeed(lease, None, ttl=0.0)])
    await storage.requeue(retried)  # revived by a retry: no longer final, must survive

    calls: list[int] = []
    original = storage.delete_expired

    async def recording(*, limit: int = 1000, now: object = None) -> int:
        n = await original(limit=limit)
        calls.append(n)
        assert n <= limit
        return n

    storage.delete_expired = recording  # type: ignore[method-assign]
    config = ServerConfig("cleaner", cleanup_batch_size=BATCH)
    cleaner = CleanupWorker(storage, config)

    claimed: list[str] = []

    async def keep_claiming() -> None:
        for i in range(20):
            await storage.enqueue(Job("work", {"c": i}, queue="busy"))
            got = await storage.claim(ClaimRequest("w2", ["busy"], 1))
            claimed.extend(lease.job.id for lease in got)
            await asyncio.sleep(0)

    await asyncio.gather(cleaner.run_once(), keep_claiming())

    assert sum(calls) == 20_000
    assert calls[:20] == [BATCH] * 20
    assert len(claimed) == 20
    assert await storage.count(JobState.SUCCEEDED, "old") == 0
    assert await storage.count(JobState.SUCCEEDED, "recent") == 1_000
    assert await storage.count(JobState.ENQUEUED, "live") == 500
    assert await storage.count(JobState.PROCESSING, "busy") == 20
    assert (await storage.get_job(retried)).state is JobState.ENQUEUED
    assert all([await storage.get(i) is not None for i in active[:10]])
    # a second pass finds nothing more until the recent ones expire
    calls.clear()
    await cleaner.run_once()
    assert calls == [0]


async def test_cleanup_never_removes_non_final_or_unexpired_jobs(storage: Storage) -> None:
    ids = await storage.enqueue_many([Job("w", {"i": i}) for i in range(6)])
    leases = await storage.claim(ClaimRequest("w", ["default"], 6))
    by_id = {lease.job.id: lease for lease in leases}
    from qml.storage.requests import ErrorInfo

    err = ErrorInfo("E", "boom")
    await storage.finish(
        [
            Outcome.succeed(by_id[ids[0]], None, ttl=0.0),
            Outcome.fail(by_id[ids[1]], err, ttl=0.0),
            Outcome.retry(by_id[ids[2]], err, delay=0.0),  # AwaitingRetry: not final
            Outcome.release(by_id[ids[3]]),  # Enqueued again
            Outcome.succeed(by_id[ids[4]], None, ttl=3600.0),  # final, not expired
        ]
    )  # ids[5] stays Processing
    await storage.delete(ids[3])
    far = (await storage.get_job(ids[0])).finished_at
    assert far is not None
    removed = await storage.delete_expired(now=far + timedelta(minutes=1))
    assert removed == 2
    assert await storage.get(ids[0]) is None
    assert await storage.get(ids[1]) is None
    assert (await storage.get_job(ids[2])).state is JobState.AWAITING_RETRY
    assert (await storage.get_job(ids[3])).state is JobState.DELETED  # expires in 7 days
    assert (await storage.get_job(ids[4])).state is JobState.SUCCEEDED
    assert (await storage.get_job(ids[5])).state is JobState.PROCESSING
