"""Recovery of expired leases (crash counting, backoff, quarantine, the place a
recovered job keeps in its queue) and activation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from qml.errors import ConfigurationError
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


async def test_an_expired_lease_is_recovered_in_place(storage: Storage) -> None:
    """A first crash is not held against the job: it goes straight back to the
    queue, keeping the place (``enqueued_at``) it had."""
    job_id = await storage.enqueue(Job("m"))
    enqueued_at = (await storage.get_job(job_id)).enqueued_at
    assert enqueued_at is not None
    t0 = utcnow()
    await claim_one(storage, server="srv-dead", now=t0, lease_seconds=30)
    t1 = t0 + timedelta(seconds=31)
    request = RecoverRequest(now=t1, crash_backoff=10, max_crashes=5)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert job.state is JobState.ENQUEUED
    assert (job.crashes, job.attempts) == (1, 1)
    assert_time(job.enqueued_at, enqueued_at)
    assert job.lease_token is None and job.lease_expires_at is None and job.server_id is None
    assert job.error is None and job.finished_at is None and job.expires_at is None
    change = last_change(job)
    assert (change.state, change.reason, change.server_id) == (
        JobState.ENQUEUED,
        "lease_expired",
        "srv-dead",
    )
    assert await storage.recover_expired(request) == []  # already recovered


async def test_backoff_doubles_per_repeated_crash_until_quarantine(storage: Storage) -> None:
    """Crash 1: no wait; crash n >= 2: ``crash_backoff * 2 ** (n - 2)`` in
    AwaitingRetry; crash ``max_crashes``: Failed (``worker_crashed``)."""
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    delays = []
    for crash in (1, 2, 3):
        await claim_one(storage, now=t, lease_seconds=5)
        t += timedelta(seconds=6)
        request = RecoverRequest(now=t, max_crashes=4, crash_backoff=4, failed_ttl=600)
        assert await storage.recover_expired(request) == [job_id]
        job = await storage.get_job(job_id)
        assert job.crashes == crash
        if crash == 1:
            assert job.state is JobState.ENQUEUED
            delays.append(0.0)
            continue
        assert job.state is JobState.AWAITING_RETRY and job.run_at is not None
        assert (last_change(job).state, last_change(job).reason) == (
            JobState.AWAITING_RETRY,
            "lease_expired",
        )
        delays.append((job.run_at - t).total_seconds())
        early = job.run_at - timedelta(seconds=1)
        assert await storage.activate_due(now=early) == 0  # a poison job does not hot-loop
        t = job.run_at + timedelta(seconds=1)
        assert await storage.activate_due(now=t) == 1
    assert [round(d, 3) for d in delays] == [0.0, 4.0, 8.0]

    await claim_one(storage, server="srv-4", now=t, lease_seconds=5)
    t += timedelta(seconds=6)
    request = RecoverRequest(now=t, max_crashes=4, crash_backoff=4, failed_ttl=600)
    assert await storage.recover_expired(request) == [job_id]
    job = await storage.get_job(job_id)
    assert job.state is JobState.FAILED
    assert (job.crashes, job.attempts) == (4, 4)
    assert job.error_type == "WorkerCrashed"
    assert job.error is not None and job.error.startswith(WORKER_CRASHED)
    assert_time(job.finished_at, t)
    assert_time(job.expires_at, t + timedelta(seconds=600))
    assert job.lease_token is None and job.server_id is None
    change = last_change(job)
    assert (change.state, change.reason) == (JobState.FAILED, WORKER_CRASHED)
    stats = await storage.stats(history_minutes=1, now=t)
    assert (stats.history[-1].succeeded, stats.history[-1].failed) == (0, 1)


async def test_the_default_request_quarantines_at_the_third_crash(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    states = []
    for _ in range(3):
        await claim_one(storage, now=t, lease_seconds=30)
        t += timedelta(seconds=31)
        assert await storage.recover_expired(RecoverRequest(now=t)) == [job_id]
        job = await storage.get_job(job_id)
        states.append(job.state)
        if job.state is JobState.AWAITING_RETRY:
            assert job.run_at is not None
            assert_time(job.run_at, t + timedelta(seconds=1))  # default crash_backoff: 1 s
            t += timedelta(seconds=2)
            assert await storage.activate_due(now=t) == 1
    assert states == [JobState.ENQUEUED, JobState.AWAITING_RETRY, JobState.FAILED]
    assert (await storage.get_job(job_id)).error_type == "WorkerCrashed"


async def test_zero_backoff_goes_straight_back_to_the_queue(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    enqueued_at = (await storage.get_job(job_id)).enqueued_at
    assert enqueued_at is not None
    t = utcnow()
    for crash in (1, 2):
        await claim_one(storage, now=t, lease_seconds=1)
        t += timedelta(seconds=2)
        request = RecoverRequest(now=t, crash_backoff=0)
        assert await storage.recover_expired(request) == [job_id]
        job = await storage.get_job(job_id)
        assert (job.state, job.crashes) == (JobState.ENQUEUED, crash)
        assert_time(job.enqueued_at, enqueued_at)
        assert (last_change(job).state, last_change(job).reason) == (
            JobState.ENQUEUED,
            "lease_expired",
        )
    lease = await claim_one(storage, now=t)
    assert lease.job.attempts == 3 and lease.job.crashes == 2


async def claim_order(storage: Storage, queue: str, now: datetime) -> list[str]:
    leases = await storage.claim(ClaimRequest("srv-next", [queue], 100, 30, now))
    return [lease.job_id for lease in leases]


async def test_a_crashed_job_keeps_its_place_in_the_queue(storage: Storage) -> None:
    """Recovery time is bounded by the lease, not by the queue's depth: a job
    whose holder died is claimed before the jobs enqueued after it."""
    a = await storage.enqueue(Job("m", queue="q"))
    a_enqueued = (await storage.get_job(a)).enqueued_at
    assert a_enqueued is not None
    t0 = utcnow()
    await claim_one(storage, "q", server="srv-dead", now=t0, lease_seconds=30)
    b, c = await storage.enqueue_many([Job("m", queue="q"), Job("m", queue="q")])
    high = await storage.enqueue(Job("m", queue="q", priority=5))
    t1 = t0 + timedelta(seconds=31)
    assert await storage.recover_expired(RecoverRequest(now=t1)) == [a]
    job = await storage.get_job(a)
    assert job.state is JobState.ENQUEUED
    assert_time(job.enqueued_at, a_enqueued)
    # the dashboard's oldest job is the one at the head of the queue
    (info,) = [q for q in await storage.queues() if q.name == "q"]
    assert_time(info.oldest_enqueued_at, a_enqueued)
    # priority first, then the recovered job ahead of those enqueued after it
    assert await claim_order(storage, "q", t1) == [high, a, b, c]


async def test_a_job_backed_off_after_crashes_comes_back_in_its_place(storage: Storage) -> None:
    a = await storage.enqueue(Job("m", queue="q"))
    a_enqueued = (await storage.get_job(a)).enqueued_at
    assert a_enqueued is not None
    t = utcnow()
    await claim_one(storage, "q", server="srv-1", now=t, lease_seconds=30)
    b, c = await storage.enqueue_many([Job("m", queue="q"), Job("m", queue="q")])
    t += timedelta(seconds=31)
    assert await storage.recover_expired(RecoverRequest(now=t, crash_backoff=3)) == [a]
    assert (await claim_one(storage, "q", server="srv-2", now=t, lease_seconds=30)).job_id == a
    t += timedelta(seconds=31)
    assert await storage.recover_expired(RecoverRequest(now=t, crash_backoff=3)) == [a]
    job = await storage.get_job(a)
    assert (job.state, job.crashes) == (JobState.AWAITING_RETRY, 2)
    assert_time(job.run_at, t + timedelta(seconds=3))
    assert await storage.activate_due(now=t + timedelta(seconds=2)) == 0
    t += timedelta(seconds=4)
    assert await storage.activate_due(now=t) == 1
    job = await storage.get_job(a)
    assert job.state is JobState.ENQUEUED
    assert_time(job.enqueued_at, a_enqueued)
    assert (last_change(job).state, last_change(job).reason) == (JobState.ENQUEUED, "due")
    (info,) = [q for q in await storage.queues() if q.name == "q"]
    assert_time(info.oldest_enqueued_at, a_enqueued)
    assert await claim_order(storage, "q", t) == [a, b, c]


async def test_an_ordinary_retry_goes_to_the_back_of_the_queue(storage: Storage) -> None:
    """Only crash recovery keeps a job's place: a retry after an exception,
    even of a job that crashed before, queues behind the jobs already waiting."""
    a = await storage.enqueue(Job("m", queue="q"))
    t = utcnow()
    await claim_one(storage, "q", now=t, lease_seconds=30)
    b = await storage.enqueue(Job("m", queue="q"))
    t += timedelta(seconds=31)
    assert await storage.recover_expired(RecoverRequest(now=t)) == [a]
    lease = await claim_one(storage, "q", now=t, lease_seconds=30)
    assert lease.job_id == a
    assert await storage.finish([Outcome.retry(lease, ERROR, delay=1)], now=t) == [True]
    t += timedelta(seconds=2)
    assert await storage.activate_due(now=t) == 1
    job = await storage.get_job(a)
    assert job.state is JobState.ENQUEUED and job.crashes == 1
    assert_time(job.enqueued_at, t)
    assert await claim_order(storage, "q", t) == [b, a]


async def test_a_requeued_crashed_job_counts_from_its_requeue(storage: Storage) -> None:
    a = await storage.enqueue(Job("m", queue="q"))
    a_enqueued = (await storage.get_job(a)).enqueued_at
    assert a_enqueued is not None
    t = utcnow()
    for _ in range(2):
        await claim_one(storage, "q", now=t, lease_seconds=30)
        t += timedelta(seconds=31)
        assert await storage.recover_expired(RecoverRequest(now=t)) == [a]
    assert (await storage.get_job(a)).state is JobState.AWAITING_RETRY
    b = await storage.enqueue(Job("m", queue="q"))
    job = await storage.requeue(a)
    assert job.state is JobState.ENQUEUED and job.enqueued_at is not None
    assert job.enqueued_at > a_enqueued
    assert await claim_order(storage, "q", t) == [b, a]


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


# ---------------------------------------------------------------- suspects
async def _suspects(storage: Storage, count: int, queue: str = "default") -> list[str]:
    """``count`` jobs that were running on a server that died: Enqueued again with
    ``crashes == 1``, at the front of ``queue`` (their places kept)."""
    ids = [await storage.enqueue(Job("m", {"n": n}, queue=queue)) for n in range(count)]
    t0 = utcnow()
    leases = await storage.claim(ClaimRequest("srv-dead", [queue], count, 5, t0))
    assert [lease.job_id for lease in leases] == ids
    request = RecoverRequest(now=t0 + timedelta(seconds=6), crash_backoff=10, max_crashes=3)
    assert sorted(await storage.recover_expired(request)) == sorted(ids)
    for job_id in ids:
        job = await storage.get_job(job_id)
        assert (job.state, job.crashes) == (JobState.ENQUEUED, 1)
    return ids


async def test_a_claim_takes_no_more_suspects_than_allowed(storage: Storage) -> None:
    """Suspects beyond ``max_suspects`` are passed over for fresh jobs behind them
    and keep their place: the next claim that may take them gets them first."""
    s1, s2, s3 = await _suspects(storage, 3)
    f1 = await storage.enqueue(Job("m", {"fresh": 1}))
    f2 = await storage.enqueue(Job("m", {"fresh": 2}))
    leases = await storage.claim(ClaimRequest("srv-2", ["default"], 10, max_suspects=1))
    assert [lease.job_id for lease in leases] == [s1, f1, f2]
    assert [lease.job.crashes for lease in leases] == [1, 0, 0]

    assert await storage.claim(ClaimRequest("srv-2", ["default"], 10, max_suspects=0)) == []
    f3 = await storage.enqueue(Job("m", {"fresh": 3}))  # behind the passed-over suspects
    leases = await storage.claim(ClaimRequest("srv-3", ["default"], 10, max_suspects=0))
    assert [lease.job_id for lease in leases] == [f3]
    for job_id in (s2, s3):
        assert (await storage.get_job(job_id)).state is JobState.ENQUEUED

    f4 = await storage.enqueue(Job("m", {"fresh": 4}))
    leases = await storage.claim(ClaimRequest("srv-3", ["default"], 1, max_suspects=1))
    assert [lease.job_id for lease in leases] == [s2]
    leases = await storage.claim(ClaimRequest("srv-3", ["default"], 10))  # no bound
    assert [lease.job_id for lease in leases] == [s3, f4]


async def test_the_suspect_bound_holds_across_queues(storage: Storage) -> None:
    (a1,) = await _suspects(storage, 1, queue="a")
    (b1,) = await _suspects(storage, 1, queue="b")
    fresh_b = await storage.enqueue(Job("m", queue="b"))
    leases = await storage.claim(ClaimRequest("srv-2", ["a", "b"], 10, max_suspects=1))
    assert [lease.job_id for lease in leases] == [a1, fresh_b]
    leases = await storage.claim(ClaimRequest("srv-2", ["a", "b"], 10, max_suspects=2))
    assert [lease.job_id for lease in leases] == [b1]


async def test_suspects_are_the_jobs_with_enough_crashes(storage: Storage) -> None:
    """With ``suspect_crashes=2`` a job that crashed once is not a suspect yet."""
    once = await _suspects(storage, 2)
    fresh = await storage.enqueue(Job("m"))
    leases = await storage.claim(
        ClaimRequest("srv-2", ["default"], 10, max_suspects=0, suspect_crashes=2)
    )
    assert [lease.job_id for lease in leases] == [*once, fresh]
    with pytest.raises(ConfigurationError, match="suspect_crashes"):
        await storage.claim(ClaimRequest("srv-2", ["default"], 1, suspect_crashes=0))


async def test_fresh_jobs_are_not_bounded(storage: Storage) -> None:
    ids = [await storage.enqueue(Job("m", {"n": n})) for n in range(4)]
    leases = await storage.claim(ClaimRequest("srv-1", ["default"], 10, max_suspects=0))
    assert [lease.job_id for lease in leases] == ids


async def test_a_negative_suspect_bound_is_refused(storage: Storage) -> None:
    await storage.enqueue(Job("m"))
    with pytest.raises(ConfigurationError, match="max_suspects"):
        await storage.claim(ClaimRequest("srv-1", ["default"], 1, max_suspects=-1))
    assert await storage.count(state=JobState.ENQUEUED) == 1
