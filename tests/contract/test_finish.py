"""Finishing attempts with fencing tokens; attempts; lease extension; cancel relay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from qml.errors import LeaseLostError
from qml.ids import new_id
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, Lease, Outcome, RecoverRequest

from .support import ERROR, assert_recent, assert_time, claim_one, last_change, utcnow


async def held_job(storage: Storage) -> Lease:
    await storage.enqueue(Job("m", {"x": 1}))
    return await claim_one(storage, server="srv-1")


def assert_lease_cleared(job: Job) -> None:
    assert job.lease_token is None
    assert job.lease_expires_at is None
    assert job.server_id is None
    assert job.cancel_requested is False


async def test_complete(storage: Storage) -> None:
    lease = await held_job(storage)
    result = {"sent": True, "ids": [1, 2], "note": "ünï"}
    await storage.complete(lease, result)
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.result == result
    assert job.attempts == 1
    assert_lease_cleared(job)
    assert_recent(job.finished_at)
    assert job.finished_at is not None
    ttl = storage.retention.succeeded_ttl
    assert_time(job.expires_at, job.finished_at + ttl)
    change = last_change(job)
    assert (change.state, change.server_id) == (JobState.SUCCEEDED, "srv-1")
    assert_time(change.at, job.finished_at)


async def test_complete_with_ttl_and_explicit_time(storage: Storage) -> None:
    lease = await held_job(storage)
    await storage.complete(lease, None, ttl=60)
    job = await storage.get_job(lease.job_id)
    assert job.finished_at is not None
    assert_time(job.expires_at, job.finished_at + timedelta(seconds=60))
    assert job.result is None
    lease = await held_job(storage)
    at = utcnow() + timedelta(minutes=3)
    assert await storage.finish([Outcome.succeed(lease, 7, ttl=30)], now=at) == [True]
    job = await storage.get_job(lease.job_id)
    assert_time(job.finished_at, at)
    assert_time(job.expires_at, at + timedelta(seconds=30))
    assert job.result == 7


async def test_fail(storage: Storage) -> None:
    lease = await held_job(storage)
    await storage.fail(lease, ERROR)
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.FAILED
    assert (job.error_type, job.error, job.traceback) == (
        ERROR.type,
        ERROR.message,
        ERROR.traceback,
    )
    assert_lease_cleared(job)
    assert job.finished_at is not None
    assert_time(job.expires_at, job.finished_at + storage.retention.failed_ttl)
    assert (last_change(job).state, last_change(job).server_id) == (JobState.FAILED, "srv-1")


async def test_retry(storage: Storage) -> None:
    lease = await held_job(storage)
    at = utcnow() + timedelta(seconds=5)
    error = ErrorInfo("TimeoutError", "too slow")
    outcome = Outcome.retry(lease, error, delay=90, reason="backoff")
    assert await storage.finish([outcome], now=at) == [True]
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.AWAITING_RETRY
    assert_time(job.run_at, at + timedelta(seconds=90))
    assert (job.error_type, job.error, job.traceback) == ("TimeoutError", "too slow", None)
    assert job.attempts == 1
    assert job.finished_at is None and job.expires_at is None
    assert_lease_cleared(job)
    change = last_change(job)
    assert (change.state, change.reason, change.server_id) == (
        JobState.AWAITING_RETRY,
        "backoff",
        "srv-1",
    )
    with pytest.raises(LeaseLostError):
        await storage.retry(lease, error, delay=1)


async def test_release_does_not_count_the_attempt(storage: Storage) -> None:
    lease = await held_job(storage)
    at = utcnow() + timedelta(seconds=5)
    assert await storage.finish([Outcome.release(lease, reason="shutdown")], now=at) == [True]
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.ENQUEUED
    assert job.attempts == 0
    assert_time(job.enqueued_at, at)
    assert_lease_cleared(job)
    change = last_change(job)
    assert (change.state, change.reason, change.server_id) == (
        JobState.ENQUEUED,
        "shutdown",
        "srv-1",
    )


async def test_release_with_delay_schedules(storage: Storage) -> None:
    lease = await held_job(storage)
    at = utcnow() + timedelta(seconds=5)
    assert await storage.finish([Outcome.release(lease, delay=20)], now=at) == [True]
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.SCHEDULED
    assert_time(job.run_at, at + timedelta(seconds=20))
    assert job.attempts == 0
    assert await storage.activate_due(now=at + timedelta(seconds=19)) == 0
    assert await storage.activate_due(now=at + timedelta(seconds=21)) == 1
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.ENQUEUED


async def test_attempts_are_counted_per_claim(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    seen = []
    for step in range(3):
        t += timedelta(minutes=1)
        lease = await claim_one(storage, now=t)
        seen.append(lease.job.attempts)
        if step == 1:
            assert await storage.finish([Outcome.release(lease)], now=t) == [True]
            continue
        assert await storage.finish([Outcome.retry(lease, ERROR, delay=1)], now=t) == [True]
        assert await storage.activate_due(now=t + timedelta(seconds=2)) == 1
    assert seen == [1, 2, 2]
    job = await storage.get_job(job_id)
    assert job.attempts == 2
    assert [c.attempt for c in job.history if c.state is JobState.PROCESSING] == [1, 2, 2]


async def test_finish_reports_each_outcome(storage: Storage) -> None:
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    a, b, c = await storage.claim(ClaimRequest("srv", ["default"], 3))
    forged = Outcome.succeed(Lease(b.job, "not-the-token", b.expires_at), ttl=60)
    unknown = Outcome.succeed(Lease(Job("m"), "x", b.expires_at), ttl=60)
    results = await storage.finish(
        [
            Outcome.succeed(a, "A", ttl=60),
            forged,
            unknown,
            Outcome.fail(c, ERROR, ttl=60),
            Outcome.succeed(a, "again", ttl=60),  # its token was used by the first item
        ]
    )
    assert results == [True, False, False, True, False]
    assert (await storage.get_job(a.job_id)).result == "A"
    assert (await storage.get_job(b.job_id)).state is JobState.PROCESSING
    assert (await storage.get_job(c.job_id)).state is JobState.FAILED
    assert await storage.get(unknown.job_id) is None
    assert await storage.finish([]) == []


async def test_a_finished_lease_is_stale_everywhere(storage: Storage) -> None:
    lease = await held_job(storage)
    await storage.complete(lease, "done")
    with pytest.raises(LeaseLostError):
        await storage.complete(lease, "again")
    with pytest.raises(LeaseLostError):
        await storage.fail(lease, ERROR)
    with pytest.raises(LeaseLostError):
        await storage.retry(lease, ERROR, delay=1)
    with pytest.raises(LeaseLostError):
        await storage.release(lease)
    with pytest.raises(LeaseLostError):
        await storage.extend_lease(lease, 30)
    job = await storage.get_job(lease.job_id)
    assert (job.state, job.result, job.error, job.attempts) == (JobState.SUCCEEDED, "done", None, 1)


async def test_the_dead_holders_late_writes_are_refused(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t0 = utcnow()
    old = await claim_one(storage, server="dead", now=t0, lease_seconds=30)
    request = RecoverRequest(now=t0 + timedelta(seconds=31), crash_backoff=0)
    assert await storage.recover_expired(request) == [job_id]
    new = await claim_one(storage, server="alive", now=t0 + timedelta(seconds=32))
    assert new.token != old.token
    for write in (
        storage.complete(old, "late"),
        storage.fail(old, ERROR),
        storage.retry(old, ERROR, delay=0),
        storage.release(old),
        storage.extend_lease(old, 60),
    ):
        with pytest.raises(LeaseLostError):
            await write
    assert await storage.finish([Outcome.succeed(old, "late", ttl=60)]) == [False]
    job = await storage.get_job(job_id)
    assert (job.state, job.server_id, job.lease_token, job.attempts) == (
        JobState.PROCESSING,
        "alive",
        new.token,
        2,
    )
    await storage.complete(new, "fresh")
    assert (await storage.get_job(job_id)).result == "fresh"


async def test_an_expired_lease_still_holds_until_recovered(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    long_ago = utcnow() - timedelta(hours=1)
    lease = await claim_one(storage, now=long_ago, lease_seconds=5)
    replies = await storage.extend_leases([(job_id, lease.token)], 5, now=long_ago)
    assert replies[0].held is True
    await storage.complete(lease, "still mine")
    assert (await storage.get_job(job_id)).state is JobState.SUCCEEDED


async def test_extend_leases(storage: Storage) -> None:
    await storage.enqueue_many([Job("m"), Job("m")])
    t0 = utcnow()
    a, b = await storage.claim(ClaimRequest("srv", ["default"], 2, lease_seconds=30, now=t0))
    await storage.complete(b)
    t1 = t0 + timedelta(seconds=20)
    replies = await storage.extend_leases(
        [(a.job_id, a.token), (b.job_id, b.token), (a.job_id, "forged"), (new_id(), a.token)],
        60,
        now=t1,
    )
    assert [r.held for r in replies] == [True, False, False, False]
    assert replies[0].cancel_requested is False
    assert_time(replies[0].expires_at, t1 + timedelta(seconds=60))
    job = await storage.get_job(a.job_id)
    assert_time(job.lease_expires_at, t1 + timedelta(seconds=60))
    assert job.state is JobState.PROCESSING and job.lease_token == a.token
    # recovery follows the renewed lease, not the first one
    assert await storage.recover_expired(RecoverRequest(now=t0 + timedelta(seconds=70))) == []
    recovered = await storage.recover_expired(RecoverRequest(now=t1 + timedelta(seconds=61)))
    assert recovered == [a.job_id]
    assert await storage.extend_leases([], 30) == []


async def test_extend_lease_one(storage: Storage) -> None:
    lease = await held_job(storage)
    reply = await storage.extend_lease(lease, 120)
    assert reply.held is True and reply.cancel_requested is False
    job = await storage.get_job(lease.job_id)
    assert job.lease_expires_at is not None
    assert_time(reply.expires_at, job.lease_expires_at)
    assert_recent(job.lease_expires_at - timedelta(seconds=120))


async def test_cancel_is_relayed_to_the_holder(storage: Storage) -> None:
    lease = await held_job(storage)
    job = await storage.request_cancel(lease.job_id)
    assert job.state is JobState.PROCESSING
    assert job.cancel_requested is True
    assert job.lease_token == lease.token
    reply = await storage.extend_lease(lease, 30)
    assert reply.held is True and reply.cancel_requested is True
    replies = await storage.extend_leases([(lease.job_id, lease.token)], 30)
    assert replies[0].cancel_requested is True
    await storage.fail(lease, ErrorInfo("Cancelled", "cancelled by request"))
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.FAILED
    assert job.cancel_requested is False


async def test_a_new_claim_clears_an_old_cancel_request(storage: Storage) -> None:
    t0 = utcnow()
    lease = await held_job(storage)
    await storage.request_cancel(lease.job_id)
    request = RecoverRequest(now=t0 + timedelta(minutes=5), crash_backoff=0)
    assert await storage.recover_expired(request) == [lease.job_id]
    assert (await storage.get_job(lease.job_id)).cancel_requested is False
    again = await claim_one(storage, now=t0 + timedelta(minutes=6))
    assert again.job.cancel_requested is False
    reply = await storage.extend_leases([(again.job_id, again.token)], 30)
    assert reply[0].cancel_requested is False


async def test_error_text_that_storage_cannot_hold_is_stored_readably(storage: Storage) -> None:
    # A NUL (PostgreSQL text cannot hold one) and a lone surrogate (not UTF-8),
    # in an exception's type name, message and traceback: the outcome is recorded,
    # each such character replaced, and the rest kept.
    lease = await held_job(storage)
    error = ErrorInfo("Bad\x00Type", "before\x00after \ud800 end", "tb\x00 \udfff line")
    assert await storage.finish([Outcome.fail(lease, error, ttl=60)]) == [True]
    job = await storage.get_job(lease.job_id)
    assert job.state is JobState.FAILED
    assert (job.error_type, job.error, job.traceback) == (
        "Bad\ufffdType",
        "before\ufffdafter \ufffd end",
        "tb\ufffd \ufffd line",
    )
    assert ErrorInfo("T", "plain ünï ✓", None) == ErrorInfo("T", "plain ünï ✓")
