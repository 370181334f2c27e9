"""Recovery of expired leases (crash counting, backoff, quarantine) and activation."""

from __future__ import annotations

from datetime import timedelta

from qml.job import Job, JobState
from qml.states import WORKER_CRASHED
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, Outcome, RecoverRequest

from .support import ERROR, assert_time, claim_one, last_change, utcnow


async def test_a_live_lease_is_not_recovered(storage: Storage) -> None:
    await storage.enqueue(Job("m"))
    t0 = utcnow()
    await claim_one(storage, now=t0, lease_seconds=30)
    assert await storage.recover_expired(RecoverRequest(now=t0 + timedelta(seconds=29))) == []
    assert await storage.count(state=JobState.PROCESSING) == 1


async def test_an_expired_lease_is_recovered_with_backoff(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t0 = utcnow()
    await claim_one(storage, server="srv-dead", now=t0, lease_seconds=30)
    t1 = t0 + timedelta(seconds=31)
    request = RecoverRequest(now=t1, crash_backoff=10, max_crashes=5)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert job.state is JobState.AWAITING_RETRY
    assert (job.crashes, job.attempts) == (1, 1)
    assert_time(job.run_at, t1 + timedelta(seconds=10))
    assert job.lease_token is None and job.lease_expires_at is None and job.server_id is None
    assert job.error is None and job.finished_at is None and job.expires_at is None
    change = last_change(job)
    assert (change.state, change.reason) == (JobState.AWAITING_RETRY, "lease_expired")
    assert await storage.recover_expired(request) == []  # already recovered


async def test_backoff_doubles_per_crash_until_quarantine(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    delays = []
    for crash in (1, 2):
        await claim_one(storage, now=t, lease_seconds=5)
        t += timedelta(seconds=6)
        request = RecoverRequest(now=t, max_crashes=3, crash_backoff=4, failed_ttl=600)
        assert await storage.recover_expired(request) == [job_id]
        job = await storage.get_job(job_id)
        assert job.crashes == crash and job.run_at is not None
        delays.append((job.run_at - t).total_seconds())
        t = job.run_at + timedelta(seconds=1)
        assert await storage.activate_due(now=t) == 1
    assert [round(d, 3) for d in delays] == [4.0, 8.0]

    await claim_one(storage, server="srv-3", now=t, lease_seconds=5)
    t += timedelta(seconds=6)
    request = RecoverRequest(now=t, max_crashes=3, crash_backoff=4, failed_ttl=600)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert job.state is JobState.FAILED
    assert (job.crashes, job.attempts) == (3, 3)
    assert job.error_type == "WorkerCrashed"
    assert job.error is not None and job.error.startswith(WORKER_CRASHED)
    assert_time(job.finished_at, t)
    assert_time(job.expires_at, t + timedelta(seconds=600))
    assert job.lease_token is None and job.server_id is None
    change = last_change(job)
    assert (change.state, change.reason) == (JobState.FAILED, WORKER_CRASHED)
    stats = await storage.stats(history_minutes=1, now=t)
    assert (stats.history[-1].succeeded, stats.history[-1].failed) == (0, 1)


async def test_zero_backoff_goes_straight_back_to_the_queue(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t0 = utcnow()
    await claim_one(storage, now=t0, lease_seconds=1)
    t1 = t0 + timedelta(seconds=2)
    request = RecoverRequest(now=t1, crash_backoff=0)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert job.state is JobState.ENQUEUED
    assert job.crashes == 1
    assert_time(job.enqueued_at, t1)
    assert (last_change(job).state, last_change(job).reason) == (JobState.ENQUEUED, "lease_expired")
    lease = await claim_one(storage, now=t1)
    assert lease.job.attempts == 2 and lease.job.crashes == 1


async def test_a_single_crash_may_quarantine(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t0 = utcnow()
    await claim_one(storage, now=t0, lease_seconds=1)
    request = RecoverRequest(now=t0 + timedelta(seconds=2), max_crashes=1)
    assert await storage.recover_expired(request) == [job_id]
    assert (await storage.get_job(job_id)).state is JobState.FAILED


async def test_recovery_limit_and_only_expired_jobs(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m") for _ in range(5)])
    short = await storage.claim(ClaimRequest("s", ["default"], 3, lease_seconds=10, now=t0))
    long = await storage.claim(ClaimRequest("s", ["default"], 2, lease_seconds=100, now=t0))
    at = t0 + timedelta(seconds=50)
    first = await storage.recover_expired(RecoverRequest(now=at, limit=2, crash_backoff=0))
    second = await storage.recover_expired(RecoverRequest(now=at, limit=2, crash_backoff=0))
    assert len(first) == 2 and len(second) == 1
    assert sorted(first + second) == sorted(lease.job_id for lease in short)
    for lease in long:
        assert (await storage.get_job(lease.job_id)).state is JobState.PROCESSING


async def test_recovery_counts_crashes_not_failures(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    lease = await claim_one(storage, now=t)
    await storage.retry(lease, ERROR, delay=0)
    assert await storage.activate_due(now=t + timedelta(seconds=1)) == 1
    await claim_one(storage, now=t + timedelta(seconds=1), lease_seconds=1)
    request = RecoverRequest(now=t + timedelta(seconds=5), max_crashes=2, crash_backoff=0)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert (job.state, job.attempts, job.crashes) == (JobState.ENQUEUED, 2, 1)


async def test_activate_due(storage: Storage) -> None:
    t0 = utcnow()
    soon = await storage.enqueue(Job("m", run_at=t0 + timedelta(seconds=60)))
    late = await storage.enqueue(Job("m", run_at=t0 + timedelta(seconds=600)))
    retry_id = await storage.enqueue(Job("m", queue="r"))
    lease = await claim_one(storage, "r", now=t0)
    assert await storage.finish([Outcome.retry(lease, ERROR, delay=30)], now=t0) == [True]
    assert await storage.activate_due(now=t0 + timedelta(seconds=29)) == 0
    at = t0 + timedelta(seconds=120)
    assert await storage.activate_due(now=at) == 2
    for job_id in (soon, retry_id):
        job = await storage.get_job(job_id)
        assert job.state is JobState.ENQUEUED
        assert_time(job.enqueued_at, at)
        assert (last_change(job).state, last_change(job).reason) == (JobState.ENQUEUED, "due")
    assert (await storage.get_job(late)).state is JobState.SCHEDULED
    assert await storage.activate_due(now=at) == 0
    claimed = {
        lease.job_id
        for lease in await storage.claim(ClaimRequest("s", ["default", "r"], 10, now=at))
    }
    assert claimed == {soon, retry_id}


async def test_activate_due_respects_the_limit(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m", run_at=t0 + timedelta(seconds=10 + i)) for i in range(5)])
    at = t0 + timedelta(minutes=1)
    assert [await storage.activate_due(now=at, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert await storage.count(state=JobState.ENQUEUED) == 5
