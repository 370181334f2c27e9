"""Server registry, wake-up signal, persisted queue pauses, durability."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from qml.errors import DuplicateJobError
from qml.job import Job, JobState
from qml.storage.base import CAP_DURABLE, CAP_MULTI_PROCESS, Storage
from qml.storage.requests import ClaimRequest, Lease, Outcome, RecoverRequest, ServerInfo

from .support import StorageMaker, assert_recent, claim_one, utcnow

# ---------------------------------------------------------------------- registry


async def test_heartbeat_registers_and_refreshes(storage: Storage) -> None:
    info = ServerInfo(
        "srv-1",
        hostname="host-a",
        pid=4242,
        queues=["critical", "default"],
        worker_count=8,
        busy=2,
        version="0.1.0",
        current_jobs=["j1", "j2"],
    )
    await storage.heartbeat_server(info)
    (got,) = await storage.list_servers()
    assert (got.id, got.hostname, got.pid, got.queues, got.worker_count, got.busy) == (
        "srv-1",
        "host-a",
        4242,
        ["critical", "default"],
        8,
        2,
    )
    assert (got.version, got.current_jobs) == ("0.1.0", ["j1", "j2"])
    assert_recent(got.started_at)
    assert_recent(got.heartbeat_at)
    first_started, first_beat = got.started_at, got.heartbeat_at
    assert first_started is not None and first_beat is not None

    info.busy, info.current_jobs = 0, []
    await storage.heartbeat_server(info)
    (got,) = await storage.list_servers()
    assert (got.busy, got.current_jobs) == (0, [])
    assert got.started_at == first_started  # the first start is kept
    assert got.heartbeat_at is not None and got.heartbeat_at >= first_beat


async def test_servers_are_listed_by_id_and_removed(storage: Storage) -> None:
    for sid in ("srv-b", "srv-a", "srv-c"):
        await storage.heartbeat_server(ServerInfo(sid))
    assert [s.id for s in await storage.list_servers()] == ["srv-a", "srv-b", "srv-c"]
    await storage.remove_server("srv-b")
    await storage.remove_server("srv-unknown")
    assert [s.id for s in await storage.list_servers()] == ["srv-a", "srv-c"]


async def test_prune_servers_removes_the_silent(storage: Storage) -> None:
    await storage.heartbeat_server(ServerInfo("srv-1"))
    await storage.heartbeat_server(ServerInfo("srv-2"))
    assert await storage.prune_servers(dead_after=3600) == 0
    assert await storage.prune_servers(dead_after=60, now=utcnow() + timedelta(seconds=30)) == 0
    assert len(await storage.list_servers()) == 2
    assert await storage.prune_servers(dead_after=60, now=utcnow() + timedelta(minutes=5)) == 2
    assert await storage.list_servers() == []


# ---------------------------------------------------------------------- wake-up


async def drain(storage: Storage) -> None:
    """Consume wake-ups left by setup, so the next wait sees only new signals."""
    for _ in range(20):
        if not await storage.wait_for_work(0.05):
            return


async def woken_by(
    storage: Storage, action: Callable[[], Awaitable[object]], tries: int = 20
) -> bool:
    """Whether a task waiting for work (with a long timeout) is woken by ``action``.

    The action is repeated until the waiter returns, since a signal sent before
    the waiter is listening may be missed; a waiter that only times out fails.
    """
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    try:
        for _ in range(tries):
            await action()
            done, _ = await asyncio.wait({waiter}, timeout=0.25)
            if done:
                return waiter.result()
        return False
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


async def test_wait_times_out_when_nothing_happens(storage: Storage) -> None:
    assert await storage.wait_for_work(0.1) is False


async def test_enqueue_from_another_task_wakes_a_waiter(storage: Storage) -> None:
    await drain(storage)
    assert await woken_by(storage, lambda: storage.enqueue(Job("m"))) is True
    assert await storage.count() >= 1


async def test_release_wakes_a_waiter(storage: Storage) -> None:
    await storage.enqueue_many([Job("m") for _ in range(20)])
    leases: list[Lease] = await storage.claim(ClaimRequest("s", ["default"], 20))
    await drain(storage)
    assert await woken_by(storage, lambda: storage.release(leases.pop())) is True


async def test_activation_wakes_a_waiter(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m", run_at=t0 + timedelta(seconds=5)) for _ in range(20)])
    await drain(storage)
    at = t0 + timedelta(seconds=10)
    assert await woken_by(storage, lambda: storage.activate_due(now=at, limit=1)) is True


async def test_recovery_wakes_a_waiter(storage: Storage) -> None:
    t0 = utcnow()
    await storage.enqueue_many([Job("m") for _ in range(20)])
    await storage.claim(ClaimRequest("s", ["default"], 20, lease_seconds=1, now=t0))
    await drain(storage)
    request = RecoverRequest(now=t0 + timedelta(seconds=5), limit=1, crash_backoff=0)
    assert await woken_by(storage, lambda: storage.recover_expired(request)) is True


async def test_resuming_a_queue_wakes_a_waiter(storage: Storage) -> None:
    await storage.enqueue(Job("m", queue="q"))
    await storage.pause_queue("q")
    await drain(storage)

    async def toggle() -> None:
        await storage.resume_queue("q")
        await storage.pause_queue("q")

    assert await woken_by(storage, toggle) is True


async def test_a_new_job_after_a_timeout_still_wakes(storage: Storage) -> None:
    assert await storage.wait_for_work(0.05) is False
    assert await woken_by(storage, lambda: storage.enqueue(Job("m"))) is True


@pytest.mark.requires(CAP_MULTI_PROCESS)
async def test_enqueue_on_another_handle_wakes_a_waiter(
    storage: Storage, make_storage: StorageMaker
) -> None:
    other = await make_storage()
    await drain(storage)
    assert await woken_by(storage, lambda: other.enqueue(Job("m")), tries=40) is True


# ---------------------------------------------------------------------- sharing and durability


@pytest.mark.requires(CAP_DURABLE)
async def test_queue_pause_is_persisted(storage: Storage, make_storage: StorageMaker) -> None:
    await storage.pause_queue("mail")
    await storage.enqueue(Job("m", queue="mail"))
    await storage.close()
    other = await make_storage()
    assert await other.paused_queues() == {"mail"}
    assert {q.name: q.paused for q in await other.queues()}["mail"] is True
    assert await other.claim(ClaimRequest("s", ["mail"], 1)) == []
    await other.resume_queue("mail")
    assert len(await other.claim(ClaimRequest("s", ["mail"], 1))) == 1


@pytest.mark.requires(CAP_DURABLE)
async def test_everything_survives_a_restart(storage: Storage, make_storage: StorageMaker) -> None:
    t0 = utcnow()
    waiting = await storage.enqueue(Job("m", {"a": [1, 2]}, queue="q", priority=3, dedup_key="k1"))
    await storage.enqueue(Job("m", queue="held"))
    lease = await claim_one(storage, "held", now=t0)
    done = await storage.enqueue(Job("m", queue="done"))
    await storage.complete(await claim_one(storage, "done"), {"r": 1})
    await storage.heartbeat_server(ServerInfo("srv-1", queues=["q"]))
    await storage.close()

    other = await make_storage()
    job = await other.get_job(waiting)
    assert (job.state, job.args, job.priority, job.dedup_key) == (
        JobState.ENQUEUED,
        {"a": [1, 2]},
        3,
        "k1",
    )
    assert (await other.get_job(done)).result == {"r": 1}
    assert (await other.get_job(lease.job_id)).lease_token == lease.token
    assert await other.finish([Outcome.succeed(lease, "after restart", ttl=60)]) == [True]
    assert await other.count() == 3
    assert [s.id for s in await other.list_servers()] == ["srv-1"]
    with pytest.raises(DuplicateJobError):
        await other.enqueue(Job("m", dedup_key="k1"))


@pytest.mark.requires(CAP_MULTI_PROCESS)
async def test_two_handles_see_the_same_jobs(storage: Storage, make_storage: StorageMaker) -> None:
    other = await make_storage()
    job_id = await storage.enqueue(Job("m", {"x": 1}))
    lease = await claim_one(other)
    assert lease.job_id == job_id
    await storage.complete(lease, "done by the first handle")
    assert (await other.get_job(job_id)).result == "done by the first handle"
    assert (await storage.stats()).counts == (await other.stats()).counts
