"""Atomic claim: what a claimed job looks like, the order, limits, pauses, concurrency."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from qml.errors import ConfigurationError
from qml.job import Job, JobState
from qml.storage.base import CAP_MULTI_PROCESS, Storage
from qml.storage.requests import ClaimRequest, Outcome

from .support import StorageMaker, assert_time, claim_all, claim_one, utcnow


async def test_claim_takes_the_job_with_a_lease(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m", {"a": 1}, queue="q"))
    t0 = utcnow()
    leases = await storage.claim(ClaimRequest("srv-1", ["q"], 5, lease_seconds=45, now=t0))
    assert len(leases) == 1
    lease = leases[0]
    assert lease.job_id == job_id
    assert lease.token
    assert_time(lease.expires_at, t0 + timedelta(seconds=45))
    for job in (lease.job, await storage.get_job(job_id)):
        assert job.state is JobState.PROCESSING
        assert job.args == {"a": 1}
        assert job.attempts == 1
        assert job.server_id == "srv-1"
        assert job.lease_token == lease.token
        assert_time(job.started_at, t0)
        assert_time(job.lease_expires_at, t0 + timedelta(seconds=45))
        assert job.cancel_requested is False
    stored = await storage.get_job(job_id)
    change = stored.history[-1]
    assert len(stored.history) == 2
    assert (change.state, change.server_id, change.attempt) == (JobState.PROCESSING, "srv-1", 1)
    assert_time(change.at, t0)


async def test_tokens_are_unique(storage: Storage) -> None:
    await storage.enqueue_many([Job("m") for _ in range(10)])
    leases = await storage.claim(ClaimRequest("srv", ["default"], 10))
    assert len({lease.token for lease in leases}) == 10


async def test_queues_are_taken_in_list_order(storage: Storage) -> None:
    low = await storage.enqueue_many([Job("m", queue="low", priority=100) for _ in range(2)])
    high = await storage.enqueue_many([Job("m", queue="high", priority=-5) for _ in range(2)])
    leases = await claim_all(storage, ["high", "low"])
    assert [lease.job_id for lease in leases] == high + low
    await storage.enqueue_many([Job("m", queue="low"), Job("m", queue="high")])
    leases = await storage.claim(ClaimRequest("srv", ["high", "low"], 3))
    assert [lease.job.queue for lease in leases] == ["high", "low"]


async def test_priority_first_then_fifo_then_id(storage: Storage) -> None:
    jobs = [Job("m", {"i": i}, priority=p) for i, p in enumerate([0, 5, 0, -3, 5, 0])]
    ids = [j.id for j in jobs]
    for job in jobs:
        await storage.enqueue(job)
    leases = await claim_all(storage, ["default"])
    assert [lease.job_id for lease in leases] == [ids[1], ids[4], ids[0], ids[2], ids[5], ids[3]]


async def test_equal_enqueue_times_are_ordered_by_id(storage: Storage) -> None:
    jobs = [Job("m", {"i": i}) for i in range(5)]
    await storage.enqueue_many(list(reversed(jobs)))  # one batch: one enqueue time
    leases = await claim_all(storage, ["default"], batch=2)
    assert [lease.job_id for lease in leases] == [j.id for j in jobs]


async def test_a_released_job_goes_behind_jobs_already_waiting(storage: Storage) -> None:
    a, b = await storage.enqueue_many([Job("m", {"n": "a"}), Job("m", {"n": "b"})])
    lease = await claim_one(storage)
    assert lease.job_id == a
    later = utcnow() + timedelta(seconds=10)
    assert await storage.finish([Outcome.release(lease)], now=later) == [True]
    assert [lease.job_id for lease in await claim_all(storage, ["default"])] == [b, a]


async def test_limit_is_respected(storage: Storage) -> None:
    await storage.enqueue_many([Job("m", queue=q) for q in ["a"] * 3 + ["b"] * 3])
    assert len(await storage.claim(ClaimRequest("s", ["a", "b"], 4))) == 4
    assert len(await storage.claim(ClaimRequest("s", ["a", "b"], 4))) == 2
    assert await storage.claim(ClaimRequest("s", ["a", "b"], 4)) == []
    assert await storage.count(state=JobState.PROCESSING) == 6


async def test_nothing_to_claim(storage: Storage) -> None:
    await storage.enqueue(Job("m", queue="a"))
    assert await storage.claim(ClaimRequest("s", ["a"], 0)) == []
    assert await storage.claim(ClaimRequest("s", [], 5)) == []
    assert await storage.claim(ClaimRequest("s", ["b", "c"], 5)) == []
    with pytest.raises(ConfigurationError):
        await storage.claim(ClaimRequest("s", ["a"], 1, lease_seconds=0))
    assert await storage.count(state=JobState.ENQUEUED) == 1


async def test_only_enqueued_jobs_are_claimed(storage: Storage) -> None:
    await storage.enqueue(Job("m", run_at=utcnow() + timedelta(minutes=5)))
    other = await storage.enqueue(Job("m"))
    await storage.delete(other)
    assert await storage.claim(ClaimRequest("s", ["default"], 10)) == []
    ready = await storage.enqueue(Job("m"))
    assert [lease.job_id for lease in await storage.claim(ClaimRequest("s", ["default"], 10))] == [
        ready
    ]
    assert await storage.claim(ClaimRequest("s", ["default"], 10)) == []


async def test_paused_queues_are_skipped(storage: Storage) -> None:
    a = await storage.enqueue(Job("m", queue="a"))
    b = await storage.enqueue(Job("m", queue="b"))
    await storage.pause_queue("a")
    assert await storage.paused_queues() == {"a"}
    leases = await storage.claim(ClaimRequest("s", ["a", "b"], 10))
    assert [lease.job_id for lease in leases] == [b]
    assert await storage.claim(ClaimRequest("s", ["a"], 10)) == []
    await storage.resume_queue("a")
    assert await storage.paused_queues() == set()
    assert [lease.job_id for lease in await storage.claim(ClaimRequest("s", ["a"], 10))] == [a]


async def test_pause_is_idempotent_and_checked(storage: Storage) -> None:
    await storage.pause_queue("a")
    await storage.pause_queue("a")
    await storage.resume_queue("b")
    assert await storage.paused_queues() == {"a"}
    assert {q.name: q.paused for q in await storage.queues()}["a"] is True
    await storage.resume_queue("a")
    assert await storage.paused_queues() == set()
    with pytest.raises(ConfigurationError):
        await storage.pause_queue("")


async def test_concurrent_claimers_never_share_a_job(storage: Storage) -> None:
    ids = set(await storage.enqueue_many([Job("m", {"i": i}) for i in range(100)]))

    async def claimer(n: int) -> list[str]:
        got: list[str] = []
        while True:
            leases = await storage.claim(ClaimRequest(f"srv-{n}", ["default"], 3))
            if not leases:
                return got
            got += [lease.job_id for lease in leases]

    claimed = [i for got in await asyncio.gather(*(claimer(n) for n in range(20))) for i in got]
    assert len(claimed) == 100
    assert set(claimed) == ids
    assert await storage.count(state=JobState.PROCESSING) == 100
    assert await storage.count(state=JobState.ENQUEUED) == 0


@pytest.mark.requires(CAP_MULTI_PROCESS)
async def test_claimers_on_separate_handles_never_share_a_job(
    storage: Storage, make_storage: StorageMaker
) -> None:
    other = await make_storage()
    ids = set(await storage.enqueue_many([Job("m", {"i": i}) for i in range(60)]))

    async def claimer(handle: Storage, n: int) -> list[str]:
        got: list[str] = []
        while True:
            leases = await handle.claim(ClaimRequest(f"srv-{n}", ["default"], 2))
            if not leases:
                return got
            got += [lease.job_id for lease in leases]

    tasks = [claimer(storage if n % 2 else other, n) for n in range(10)]
    claimed = [i for got in await asyncio.gather(*tasks) for i in got]
    assert sorted(claimed) == sorted(ids)
    assert await other.count(state=JobState.PROCESSING) == 60
