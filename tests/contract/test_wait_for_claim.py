"""wait_for_claim: a server whose claim came back short waits for work; a
storage that hands off claims (``hands_off_claims``) may return jobs claimed
for it meanwhile. Whatever happens, every job is claimed once or stays
claimable: nothing is held by a wait that ended."""

from __future__ import annotations

import asyncio

import pytest

from qml.errors import ConfigurationError
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, Lease

from .support import assert_recent


def _request(limit: int = 5, queues: tuple[str, ...] = ("default",)) -> ClaimRequest:
    return ClaimRequest("srv", queues, limit, lease_seconds=60)


async def _check_held(storage: Storage, leases: list[Lease]) -> None:
    for lease in leases:
        job = await storage.get_job(lease.job_id)
        assert (job.state, job.lease_token, job.server_id, job.attempts) == (
            JobState.PROCESSING,
            lease.token,
            "srv",
            1,
        )
        assert_recent(lease.expires_at, within=120)


async def _until_parked(storage: Storage, task: asyncio.Task[list[Lease]]) -> None:
    """Give the wait time to register (it returns the same either way)."""
    for _ in range(50):
        if task.done():
            return
        await asyncio.sleep(0.002)


async def test_an_interrupt_set_before_the_wait_returns_at_once(storage: Storage) -> None:
    interrupt = asyncio.Event()
    interrupt.set()
    assert await storage.wait_for_claim(_request(), 60.0, interrupt) == []
    job_id = await storage.enqueue(Job("m"))
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]


async def test_an_interrupted_wait_holds_nothing_afterwards(storage: Storage) -> None:
    interrupt = asyncio.Event()
    task = asyncio.create_task(storage.wait_for_claim(_request(), 60.0, interrupt))
    await _until_parked(storage, task)
    interrupt.set()
    assert await task == []
    job_id = await storage.enqueue(Job("m"))  # nobody waits any more: nobody takes it
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]


async def test_a_job_enqueued_during_the_wait_is_handed_over_or_signalled(
    storage: Storage,
) -> None:
    interrupt = asyncio.Event()
    task = asyncio.create_task(storage.wait_for_claim(_request(), 60.0, interrupt))
    await _until_parked(storage, task)
    job_id = await storage.enqueue(Job("m", {"k": "v"}))
    leases = await task  # returns well before the timeout: woken or handed the job
    if storage.hands_off_claims:
        assert [x.job_id for x in leases] == [job_id]
        assert leases[0].job.args == {"k": "v"}
        await _check_held(storage, leases)
        assert await storage.claim(_request()) == []
    else:
        assert leases == []
        assert [x.job_id for x in await storage.claim(_request())] == [job_id]


async def test_the_limit_and_the_queues_of_the_request_hold(storage: Storage) -> None:
    other = await storage.enqueue(Job("m", queue="elsewhere"))
    interrupt = asyncio.Event()
    request = _request(limit=2, queues=("high", "low"))
    task = asyncio.create_task(storage.wait_for_claim(request, 60.0, interrupt))
    await _until_parked(storage, task)
    ids = await storage.enqueue_many([Job("m", {"i": i}, queue="low") for i in range(3)])
    leases = await task
    if storage.hands_off_claims:
        assert [x.job_id for x in leases] == ids[:2]
        await _check_held(storage, leases)
    else:
        assert leases == []
    assert (await storage.get_job(other)).state is JobState.ENQUEUED
    assert await storage.count(JobState.ENQUEUED) == 1 + 3 - len(leases)


async def test_ready_jobs_are_claimed_by_the_wait_itself(storage: Storage) -> None:
    if not storage.hands_off_claims:
        pytest.skip(f"{storage.backend_name} storage only signals")
    ids = await storage.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    leases = await storage.wait_for_claim(_request(limit=2), 60.0, asyncio.Event())
    assert [x.job_id for x in leases] == ids[:2]
    await _check_held(storage, leases)


async def test_a_paused_queue_is_not_handed_over(storage: Storage) -> None:
    await storage.pause_queue("default")
    interrupt = asyncio.Event()
    task = asyncio.create_task(storage.wait_for_claim(_request(), 60.0, interrupt))
    await _until_parked(storage, task)
    job_id = await storage.enqueue(Job("m"))
    await _until_parked(storage, task)
    interrupt.set()
    assert await task == []
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED
    await storage.resume_queue("default")
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]


async def test_a_bad_request_is_refused_and_an_empty_one_only_waits(storage: Storage) -> None:
    bad = ClaimRequest("srv", ["default"], 1, lease_seconds=0)
    with pytest.raises(ConfigurationError):
        await storage.wait_for_claim(bad, 60.0, asyncio.Event())
    interrupt = asyncio.Event()
    empty = ClaimRequest("srv", [], 1)
    task = asyncio.create_task(storage.wait_for_claim(empty, 60.0, interrupt))
    job_id = await storage.enqueue(Job("m"))
    await _until_parked(storage, task)
    interrupt.set()
    assert await task == []
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED
