"""finish_and_claim: outcomes recorded, then a claim, in one call (one
transaction or round trip where the backend can)."""

from __future__ import annotations

import pytest

from qml.errors import ConfigurationError
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, Lease, Outcome

from .support import ERROR


async def test_records_the_outcomes_and_claims_the_next_jobs(storage: Storage) -> None:
    ids = await storage.enqueue_many([Job("m", {"i": i}) for i in range(5)])
    a, b = await storage.claim(ClaimRequest("srv", ["default"], 2))
    results, leases = await storage.finish_and_claim(
        [Outcome.succeed(a, "A", ttl=60), Outcome.fail(b, ERROR, ttl=60)],
        ClaimRequest("srv", ["default"], 2),
    )
    assert results == [True, True]
    assert [lease.job_id for lease in leases] == ids[2:4]
    assert (await storage.get_job(a.job_id)).result == "A"
    assert (await storage.get_job(b.job_id)).state is JobState.FAILED
    for lease in leases:
        job = await storage.get_job(lease.job_id)
        assert (job.state, job.lease_token, job.attempts) == (
            JobState.PROCESSING,
            lease.token,
            1,
        )
    assert await storage.count(JobState.ENQUEUED) == 1
    assert await storage.count(JobState.PROCESSING) == 2


async def test_a_stale_outcome_is_refused_and_the_claim_still_made(storage: Storage) -> None:
    await storage.enqueue_many([Job("m") for _ in range(2)])
    lease = (await storage.claim(ClaimRequest("srv", ["default"], 1)))[0]
    forged = Outcome.succeed(Lease(lease.job, "not-the-token", lease.expires_at), ttl=60)
    results, leases = await storage.finish_and_claim(
        [forged, Outcome.succeed(lease, ttl=60), Outcome.succeed(lease, "again", ttl=60)],
        ClaimRequest("srv", ["default"], 5),
    )
    assert results == [False, True, False]
    assert len(leases) == 1 and leases[0].job_id != lease.job_id
    assert (await storage.get_job(lease.job_id)).state is JobState.SUCCEEDED


async def test_a_released_job_can_be_claimed_by_the_same_call(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    lease = (await storage.claim(ClaimRequest("srv", ["default"], 1)))[0]
    results, leases = await storage.finish_and_claim(
        [Outcome.release(lease, reason="shutdown")], ClaimRequest("srv", ["default"], 1)
    )
    assert results == [True]
    assert [x.job_id for x in leases] == [job_id]  # the outcomes are applied first
    assert leases[0].token != lease.token


async def test_either_part_may_be_empty(storage: Storage) -> None:
    await storage.enqueue_many([Job("m") for _ in range(3)])
    results, leases = await storage.finish_and_claim([], ClaimRequest("srv", ["default"], 2))
    assert results == [] and len(leases) == 2
    results, claimed = await storage.finish_and_claim(
        [Outcome.succeed(leases[0], ttl=60)], ClaimRequest("srv", ["default"], 0)
    )
    assert (results, claimed) == ([True], [])
    results, claimed = await storage.finish_and_claim(
        [Outcome.succeed(leases[1], ttl=60)], ClaimRequest("srv", [], 5)
    )
    assert (results, claimed) == ([True], [])
    assert await storage.count(JobState.SUCCEEDED) == 2
    assert await storage.count(JobState.ENQUEUED) == 1


async def test_a_bad_claim_request_records_nothing(storage: Storage) -> None:
    await storage.enqueue(Job("m"))
    lease = (await storage.claim(ClaimRequest("srv", ["default"], 1)))[0]
    with pytest.raises(ConfigurationError):
        await storage.finish_and_claim(
            [Outcome.succeed(lease, ttl=60)], ClaimRequest("srv", ["default"], 1, lease_seconds=0)
        )
    job = await storage.get_job(lease.job_id)
    assert (job.state, job.lease_token) == (JobState.PROCESSING, lease.token)
