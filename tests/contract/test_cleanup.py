"""delete_expired in bounded batches; prune of deduplication keys and statistics."""

from __future__ import annotations

from datetime import timedelta

from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, Outcome

from .support import ERROR, job_in_state, utcnow


async def test_only_expired_final_jobs_are_removed(storage: Storage) -> None:
    made = {s: await job_in_state(storage, s, f"q-{s.value}") for s in JobState}
    # final jobs made by job_in_state expire within 7 days; nothing else ever expires
    far = utcnow() + timedelta(days=30)
    assert await storage.delete_expired(now=utcnow()) == 0
    assert await storage.delete_expired(now=far) == 3
    for state, job_id in made.items():
        job = await storage.get(job_id)
        if state in (JobState.SUCCEEDED, JobState.FAILED, JobState.DELETED):
            assert job is None, state
        else:
            assert job is not None and job.state is state
    stats = await storage.stats()
    assert stats.total == 4
    assert stats.counts[JobState.SUCCEEDED] == stats.counts[JobState.DELETED] == 0
    assert "q-succeeded" not in {
        q.name for q in await storage.queues() if sum(q.counts.values()) > 0
    }
    listed = {j.id for j in (await storage.list_jobs()).items}
    assert listed == {
        made[s]
        for s in (
            JobState.ENQUEUED,
            JobState.SCHEDULED,
            JobState.PROCESSING,
            JobState.AWAITING_RETRY,
        )
    }


async def test_expiry_is_per_job(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m") for _ in range(3)])
    a, b, c = await storage.claim(ClaimRequest("s", ["default"], 3, now=t0))
    results = await storage.finish(
        [Outcome.succeed(a, ttl=10), Outcome.fail(b, ERROR, ttl=100), Outcome.succeed(c, ttl=1000)],
        now=t0,
    )
    assert results == [True, True, True]
    assert await storage.delete_expired(now=t0 + timedelta(seconds=9)) == 0
    assert await storage.delete_expired(now=t0 + timedelta(seconds=11)) == 1
    assert await storage.get(a.job_id) is None
    assert await storage.delete_expired(now=t0 + timedelta(seconds=101)) == 1
    assert await storage.get(b.job_id) is None
    assert (await storage.get_job(c.job_id)).state is JobState.SUCCEEDED
    assert await storage.count() == 1


async def test_delete_expired_works_in_bounded_batches(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m") for _ in range(7)])
    leases = await storage.claim(ClaimRequest("s", ["default"], 7, now=t0))
    assert (
        await storage.finish([Outcome.succeed(lease, ttl=1) for lease in leases], now=t0)
        == [True] * 7
    )
    later = t0 + timedelta(minutes=1)
    assert [await storage.delete_expired(limit=3, now=later) for _ in range(4)] == [3, 3, 1, 0]
    assert await storage.count() == 0
    assert await storage.delete_expired(limit=0, now=later) == 0


async def test_a_requeued_job_no_longer_expires(storage: Storage) -> None:
    job_id = await job_in_state(storage, JobState.FAILED, "q")
    await storage.requeue(job_id)
    assert await storage.delete_expired(now=utcnow() + timedelta(days=365)) == 0
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED


async def test_prune_drops_old_minute_statistics(storage: Storage) -> None:
    old = utcnow().replace(second=30, microsecond=0) - timedelta(days=3)
    await storage.enqueue_many([Job("m"), Job("m")])
    a, b = await storage.claim(ClaimRequest("s", ["default"], 2, now=old))
    assert await storage.finish(
        [Outcome.succeed(a, ttl=60), Outcome.fail(b, ERROR, ttl=60)], now=old
    ) == [True, True]
    before = await storage.stats(history_minutes=2, now=old)
    assert (before.history[-1].succeeded, before.history[-1].failed) == (1, 1)
    await storage.prune(stats_older_than=4 * 86400.0)  # young enough: kept
    kept = await storage.stats(history_minutes=2, now=old)
    assert (kept.history[-1].succeeded, kept.history[-1].failed) == (1, 1)
    await storage.prune(stats_older_than=2 * 86400.0)
    after = await storage.stats(history_minutes=2, now=old)
    assert [(m.succeeded, m.failed) for m in after.history] == [(0, 0), (0, 0)]
    assert await storage.count() == 2  # pruning statistics leaves jobs alone
