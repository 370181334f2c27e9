"""Redis hand-off: a parked waiter is handed the claim by the enqueue
(``hand_off`` in ``scripts/_lib.lua``), and no way a wait can end leaves a job
held by nobody: a dead waiter's jobs come back with their lease, a cancelled
one gives them back, a failed pop still takes them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from qml import BackgroundJobServer, ServerConfig, WorkerRegistry
from qml.errors import ConfigurationError, StorageUnavailableError
from qml.job import Job, JobState
from qml.storage.redis import RedisConfig, RedisStorage
from qml.storage.redis.codec import micros
from qml.storage.redis.errors import tokens
from qml.storage.redis.lane import Lane
from qml.storage.requests import ClaimRequest, RecoverRequest

Open = Callable[..., Awaitable[RedisStorage]]


@pytest.fixture
async def open_storage(redis_url: str) -> AsyncIterator[Open]:
    """Storages on one fresh prefix (or ``prefix``), closed and purged afterwards."""
    prefix = f"th{uuid4().hex[:12]}"
    opened: list[RedisStorage] = []

    async def make(**options: Any) -> RedisStorage:
        config = RedisConfig(url=redis_url, key_prefix=prefix, command_timeout=10.0, **options)
        storage = RedisStorage(config)
        await storage.open()
        opened.append(storage)
        return storage

    yield make
    if opened:
        await opened[0].purge()
    for storage in opened:
        await storage.close()


def _request(server: str = "srv", limit: int = 5, queue: str = "default") -> ClaimRequest:
    return ClaimRequest(server, [queue], limit, lease_seconds=60)


async def _parked(storage: RedisStorage, n: int = 1) -> None:
    """Until ``n`` waiters are parked (a condition, not a time)."""
    while await storage._cmd("HLEN", storage.keys.parked) < n:
        await asyncio.sleep(0.002)


async def _wake_generation(storage: RedisStorage) -> int:
    return int(await storage._cmd("GET", storage.keys.wake_gen) or 0)


async def test_each_parked_waiter_gets_its_own_jobs(open_storage: Open) -> None:
    a, b = await open_storage(), await open_storage()
    ta = asyncio.create_task(a.wait_for_claim(_request("a", 1), 30.0, asyncio.Event()))
    await _parked(a, 1)
    tb = asyncio.create_task(b.wait_for_claim(_request("b", 2), 30.0, asyncio.Event()))
    await _parked(a, 2)
    before = await _wake_generation(a)
    ids = await a.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    got_a, got_b = await ta, await tb
    assert [x.job_id for x in got_a] == ids[:1]  # the longest parked first
    assert [x.job_id for x in got_b] == ids[1:]
    for lease, server in ((got_a[0], "a"), (got_b[0], "b"), (got_b[1], "b")):
        job = await a.get_job(lease.job_id)
        assert (job.state, job.server_id, job.lease_token, job.lease_expires_at) == (
            JobState.PROCESSING,
            server,
            lease.token,
            lease.expires_at,  # to the microsecond
        )
    assert await _wake_generation(a) == before  # every job taken: nobody else was woken
    assert await a._cmd("HLEN", a.keys.parked) == 0


async def test_jobs_left_over_wake_the_other_waiters(open_storage: Open) -> None:
    a = await open_storage()
    task = asyncio.create_task(a.wait_for_claim(_request(limit=1), 30.0, asyncio.Event()))
    await _parked(a)
    before = await _wake_generation(a)
    await a.enqueue_many([Job("m") for _ in range(2)])
    assert len(await task) == 1
    assert await _wake_generation(a) == before + 1
    assert await a.count(JobState.ENQUEUED) == 1


async def test_a_scheduled_job_is_not_handed_over(open_storage: Open) -> None:
    storage = await open_storage()
    interrupt = asyncio.Event()
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, interrupt))
    await _parked(storage)
    job_id = await storage.enqueue(Job("m", run_at=_later()))
    interrupt.set()
    assert await task == []
    assert (await storage.get_job(job_id)).state is JobState.SCHEDULED


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


async def test_a_waiter_that_died_parked_gets_its_jobs_back_by_lease(open_storage: Open) -> None:
    storage = await open_storage()
    # what park.lua leaves behind when its process dies while parked
    await storage._hot(
        "park", "dead.1", "dead", micros(30), "dead-server", micros(5), 1, tokens(1), "", 1,
        "default",
    )  # fmt: skip
    job_id = await storage.enqueue(Job("m"))
    job = await storage.get_job(job_id)
    assert (job.state, job.server_id) == (JobState.PROCESSING, "dead-server")
    assert job.lease_expires_at is not None
    recovered = await storage.recover_expired(
        RecoverRequest(now=job.lease_expires_at + timedelta(seconds=1))
    )
    assert recovered == [job_id]
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED


async def test_an_ended_parking_is_not_handed_anything(open_storage: Open) -> None:
    storage = await open_storage()
    await storage._hot(
        "park", "gone.1", "gone", 1, "gone-server", micros(60), 1, tokens(1), "", 1, "default"
    )  # parked for 1 µs: over before the enqueue
    job_id = await storage.enqueue(Job("m"))
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED
    assert await storage._cmd("HLEN", storage.keys.parked) == 0  # and cleaned up


async def test_a_cancelled_waiter_gives_back_what_was_handed_to_it(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await open_storage()
    popping = asyncio.Event()

    async def stuck_pop(key: str, timeout: float) -> bytes | None:
        popping.set()
        await asyncio.Event().wait()  # its reply never comes
        return None

    monkeypatch.setattr(storage, "_pop", stuck_pop)
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await popping.wait()
    job_id = await storage.enqueue(Job("m"))
    assert (await storage.get_job(job_id)).state is JobState.PROCESSING  # handed over
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = await storage.get_job(job_id)
    assert job.state is JobState.ENQUEUED
    assert job.history[-1].reason == "hand-off not taken"
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]


@pytest.mark.parametrize("failure", ["error", "timeout"])
async def test_a_failed_pop_still_takes_the_handed_claim(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    storage = await open_storage()
    popping, enqueued = asyncio.Event(), asyncio.Event()

    async def failing_pop(key: str, timeout: float) -> bytes | None:
        popping.set()
        await enqueued.wait()
        if failure == "error":
            raise StorageUnavailableError("connection lost")
        return None  # as if the pop's own timeout came first

    monkeypatch.setattr(storage, "_pop", failing_pop)
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await popping.wait()
    job_id = await storage.enqueue(Job("m"))
    enqueued.set()
    leases = await task
    assert [x.job_id for x in leases] == [job_id]
    assert (await storage.get_job(job_id)).lease_token == leases[0].token


async def test_a_parked_waiter_is_woken_by_other_signals(open_storage: Open) -> None:
    storage = await open_storage()
    job_id = await storage.enqueue(Job("m", run_at=_later()))
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(storage)
    assert await storage.requeue(job_id) is not None  # made ready by a state change
    assert await task == []  # woken (a state change hands nothing over)
    assert await storage._cmd("HLEN", storage.keys.parked) == 0
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]


async def test_hand_off_can_be_switched_off(open_storage: Open) -> None:
    storage = await open_storage(hand_off=False)
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await asyncio.sleep(0.02)
    job_id = await storage.enqueue(Job("m"))
    assert await task == []  # woken, not handed the job
    assert await storage._cmd("HLEN", storage.keys.parked) == 0
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]
    assert RedisConfig.from_url("redis://h/0?hand_off=0").hand_off is False
    assert RedisConfig.from_url("redis://h/0?hand_off=true").hand_off is True
    assert RedisConfig.from_url("redis://h/0").hand_off is True
    with pytest.raises(ConfigurationError, match="hand_off"):
        RedisConfig.from_url("redis://h/0?hand_off=maybe")


@pytest.mark.parametrize("hand_off", [True, False])
async def test_an_idle_server_is_handed_its_jobs(open_storage: Open, hand_off: bool) -> None:
    storage = await open_storage(hand_off=hand_off)
    assert storage.hands_off_claims is hand_off
    registry = WorkerRegistry(storage=storage)
    ran: list[int] = []

    @registry.job("record")
    async def record(i: int) -> None:
        ran.append(i)

    server = BackgroundJobServer(
        ServerConfig("hand", worker_count=4, polling_interval=30.0, enable_cleanup=False,
                     enable_recurring=False),
        storage,
        registry,
    )  # fmt: skip
    await server.start()
    try:
        for i in range(5):
            if hand_off:
                await _parked(storage)
            before = await _wake_generation(storage)
            job_id = await record.enqueue(i)
            if hand_off:
                assert await _wake_generation(storage) == before  # handed, nobody woken
            while (await storage.get_job(job_id)).state is not JobState.SUCCEEDED:
                await asyncio.sleep(0.005)
    finally:
        await server.stop()
    # without the hand-off the server claims by itself after each wake-up
    assert ran == [0, 1, 2, 3, 4]
    assert await storage._cmd("HLEN", storage.keys.parked) == 0  # stop ended the parking


async def test_a_pop_that_fails_every_time_raises_instead_of_parking_again(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await open_storage()

    async def refused_pop(key: str, timeout: float) -> bytes | None:
        raise StorageUnavailableError("NOPERM this user has no permissions to run 'blpop'")

    monkeypatch.setattr(storage, "_pop", refused_pop)
    with pytest.raises(StorageUnavailableError, match="blocking pop"):
        await storage.wait_for_claim(_request(), 30.0, asyncio.Event())
    assert await storage._cmd("HLEN", storage.keys.parked) == 0  # the parking ended
    job_id = await storage.enqueue(Job("m"))
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED


async def test_a_wait_cancelled_as_it_parks_leaves_no_parking(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await open_storage()
    real_hot = storage._hot

    async def cancelled_after_park(name: str, *args: Any) -> Any:
        reply = await real_hot(name, *args)
        if name == "park":  # the script ran; the reply never reaches the waiter
            raise asyncio.CancelledError
        return reply

    monkeypatch.setattr(storage, "_hot", cancelled_after_park)
    with pytest.raises(asyncio.CancelledError):
        await storage.wait_for_claim(_request(), 30.0, asyncio.Event())
    assert await storage._cmd("HLEN", storage.keys.parked) == 0
    job_id = await storage.enqueue(Job("m"))
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED


async def test_a_pop_given_up_leaves_nothing_for_the_next_one(open_storage: Open) -> None:
    storage = await open_storage()
    client = await storage._c()
    lane = Lane(client, storage.keys.tag)
    a, b = storage.keys.hand + "a", storage.keys.hand + "b"
    try:
        # the reply is awaited for less time than the pop may block (a stalled
        # server looks the same): the pop is given up while Redis still holds it
        assert await lane.pop(a, 5.0, -4.9) is None
        await storage._cmd("RPUSH", a, "for-a")
        assert await lane.pop(b, 0.05, 5.0) is None  # not a's element
    finally:
        await lane.close()
        await storage._cmd("DEL", a, b)


async def test_an_immediate_claim_keeps_another_wait_registered(open_storage: Open) -> None:
    storage = await open_storage()  # two servers on one storage: one waits, one claims
    waiting = asyncio.create_task(storage.wait_for_work(30.0))
    while await storage._cmd("ZSCORE", storage.keys.waiters, storage._waiter_id) is None:
        await asyncio.sleep(0.002)
    await storage.enqueue(Job("m", queue="other"))
    leases = await storage.wait_for_claim(_request(queue="other"), 30.0, asyncio.Event())
    assert len(leases) == 1  # claimed by the park itself
    assert await storage._cmd("ZSCORE", storage.keys.waiters, storage._waiter_id) is not None
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
