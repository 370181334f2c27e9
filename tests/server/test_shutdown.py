"""Graceful stop: finish what can finish, release the rest, claim nothing new."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from qml import BackgroundJobServer, Job, MemoryStorage, WorkerContext, WorkerRegistry
from qml.server.services import CleanupWorker
from qml.storage.requests import ClaimRequest, Lease, Outcome

from .support import (
    OK,
    WAIT,
    E,
    P,
    begin_stop,
    fast_config,
    reasons,
    states,
    wait_event,
    wait_thread_event,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Released at teardown so no job thread outlives its test."""
    event = threading.Event()
    yield event
    event.set()


async def assert_untouched(storage: MemoryStorage, job_id: str) -> None:
    job = await storage.get_job(job_id)
    assert job.state is E
    assert job.attempts == 0
    assert P not in states(job), "claimed after stop began"


async def test_jobs_finishing_within_the_timeout_complete(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    saw_shutdown: list[bool] = []

    @registry.job("slow")
    async def slow(ctx: WorkerContext, n: int) -> int:
        started.set()
        await go.wait()
        saw_shutdown.append(ctx.cancelled.is_set())
        return n

    first = await slow.enqueue(1)
    server = BackgroundJobServer(fast_config(shutdown_timeout=WAIT), memory, registry)
    await server.start()
    await wait_event(started, "the job to start")
    stopping = await begin_stop(server)
    later = await slow.enqueue(2)  # enqueued after stop began: must stay Enqueued
    go.set()
    await asyncio.wait_for(stopping, WAIT)

    job = await memory.get_job(first)
    assert job.state is OK
    assert job.result == 1
    assert saw_shutdown == [False]  # a job finishing in time is not disturbed
    await assert_untouched(memory, later)
    assert not server.is_running
    assert await memory.list_servers() == []


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_jobs_running_past_the_timeout_are_released_uncounted(
    memory: MemoryStorage, registry: WorkerRegistry, gate: threading.Event, kind: str
) -> None:
    started = threading.Event()
    saw_shutdown = threading.Event()

    if kind == "async":

        @registry.job("long")
        async def long_async(ctx: WorkerContext) -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if ctx.cancelled.is_set() and ctx.cancelled.reason == "shutdown":
                    saw_shutdown.set()
                raise

    else:

        @registry.job("long")
        def long_sync(ctx: WorkerContext) -> None:
            started.set()
            if ctx.cancelled.wait_sync(30) and ctx.cancelled.reason == "shutdown":
                saw_shutdown.set()
            gate.wait(30)

    job_id = await memory.enqueue(Job("long"))
    other = await memory.enqueue(Job("long"))
    server = BackgroundJobServer(
        fast_config(worker_count=1, fetch_batch_size=1, shutdown_timeout=0.2), memory, registry
    )
    await server.start()
    await wait_thread_event(started, "the job to start")
    await asyncio.wait_for(server.stop(), WAIT)
    await wait_thread_event(saw_shutdown, "the job to see ctx.cancelled")

    job = await memory.get_job(job_id)
    assert job.state is E
    assert job.attempts == 0  # released without counting an attempt
    assert job.crashes == 0
    assert reasons(job)[-1] == ("Enqueued", "shutdown")
    assert job.lease_token is None
    await assert_untouched(memory, other)  # never claimed: the only slot was busy
    assert not server.is_running


@pytest.mark.parametrize("how", ["second_stop", "force"])
async def test_second_stop_or_force_releases_at_once(
    memory: MemoryStorage, registry: WorkerRegistry, how: str
) -> None:
    started = asyncio.Event()

    @registry.job("forever")
    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    job_id = await forever.enqueue()
    # A shutdown timeout far beyond the test's bound: only an immediate release passes.
    server = BackgroundJobServer(fast_config(shutdown_timeout=3600.0), memory, registry)
    await server.start()
    await wait_event(started, "the job to start")
    if how == "force":
        await asyncio.wait_for(server.stop(force=True), WAIT)
    else:
        first = await begin_stop(server)
        assert not first.done()
        await asyncio.wait_for(server.stop(), WAIT)
        await asyncio.wait_for(first, WAIT)
    job = await memory.get_job(job_id)
    assert job.state is E
    assert job.attempts == 0
    assert reasons(job)[-1] == ("Enqueued", "shutdown")


async def test_stop_before_start_and_twice_after(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    server = BackgroundJobServer(fast_config(), memory, registry)
    await server.stop()
    assert not server.is_running
    server2 = BackgroundJobServer(fast_config(), memory, registry)
    async with server2:
        assert server2.is_running
    await asyncio.wait_for(server2.stop(), WAIT)  # idempotent
    assert not server2.is_running


class SlowClaimStorage(MemoryStorage):
    """A storage whose claim reply arrives late: the claim is done in storage,
    the answer is still on the wire (a slow database round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.claim_sent = asyncio.Event()
        self.reply = asyncio.Event()
        self.slow = True

    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        leases = await super()._claim(request)
        if leases and self.slow:
            self.slow = False
            self.claim_sent.set()
            await self.reply.wait()
        return leases


async def test_a_claim_in_flight_when_stop_begins_is_released_not_lost() -> None:
    storage = SlowClaimStorage()
    registry = WorkerRegistry(storage)
    ran: list[str] = []

    @registry.job("work")
    async def work(ctx: WorkerContext) -> None:
        ran.append(ctx.job_id)

    job_id = await work.enqueue()
    server = BackgroundJobServer(fast_config(), storage, registry)
    await server.start()
    await wait_event(storage.claim_sent, "the claim to be sent")
    stopping = await begin_stop(server)
    storage.reply.set()
    await asyncio.wait_for(stopping, WAIT)

    job = await storage.get_job(job_id)
    assert ran == []  # not started after stop began
    assert job.state is E, "a claim answered during shutdown must be released at once"
    assert job.attempts == 0
    assert reasons(job)[-1] == ("Enqueued", "shutdown")


class SlowFinishStorage(MemoryStorage):
    """A storage whose first ``finish`` takes a while (a slow round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.finish_sent = asyncio.Event()

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        if not self.finish_sent.is_set():
            self.finish_sent.set()
            await asyncio.sleep(0.2)  # latency of the round trip, not a wait for a result
        return await super()._finish(outcomes, now)


async def test_an_outcome_being_recorded_when_stop_begins_is_not_lost() -> None:
    storage = SlowFinishStorage()
    registry = WorkerRegistry(storage)

    @registry.job("quick")
    async def quick() -> str:
        return "done"

    job_id = await quick.enqueue()
    server = BackgroundJobServer(fast_config(), storage, registry)
    await server.start()
    await wait_event(storage.finish_sent, "the outcome to be sent")
    await asyncio.wait_for(server.stop(), WAIT)
    job = await storage.get_job(job_id)
    assert job.state is OK, "the outcome in flight was dropped by stop()"
    assert job.result == "done"


async def test_burst_run_releases_nothing_and_stops(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    done: list[Any] = []

    @registry.job("n")
    def n(i: int) -> None:
        done.append(i)

    await memory.enqueue_many([n.build(i) for i in range(30)])
    server = BackgroundJobServer(fast_config(), memory, registry, burst=True)
    await asyncio.wait_for(server.run(), WAIT)
    assert sorted(done) == list(range(30))
    assert await memory.count(OK) == 30


class SlowDeleteStorage(MemoryStorage):
    """A storage whose first cleanup batch is applied before its reply comes back
    (the reply is held until ``reply`` is set, or forever if ``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        self.delete_sent = asyncio.Event()
        self.reply = asyncio.Event()
        self.cancelled = False

    async def _delete_expired(self, limit: int, now: datetime | None) -> int:
        if self.delete_sent.is_set():
            return await super()._delete_expired(limit, now)
        deleted = await super()._delete_expired(limit, datetime.max.replace(tzinfo=UTC))
        self.delete_sent.set()
        try:
            await (asyncio.Event().wait() if self.hang else self.reply.wait())
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return deleted


async def test_a_cleanup_batch_on_the_wire_when_stop_begins_is_counted() -> None:
    storage = SlowDeleteStorage()
    registry = WorkerRegistry(storage)
    job_ids = await storage.enqueue_many([Job("gone") for _ in range(3)])
    for job_id in job_ids:
        await storage.delete(job_id)
    server = BackgroundJobServer(
        fast_config(enable_cleanup=True, cleanup_interval=0.05), storage, registry
    )
    await server.start()
    (cleanup,) = (s for s in server._services if isinstance(s, CleanupWorker))
    await wait_event(storage.delete_sent, "the cleanup batch to be sent")
    stopping = await begin_stop(server)
    await wait_until(lambda: cleanup.stopping, "the cleanup service to be stopping")
    storage.reply.set()
    await asyncio.wait_for(stopping, WAIT)
    assert await storage.count() == 0
    assert cleanup.deleted_total == 3, "a batch applied during stop went uncounted"
    assert not storage.cancelled


async def test_a_service_tick_that_hangs_is_cancelled_after_the_grace() -> None:
    storage = SlowDeleteStorage(hang=True)
    service = CleanupWorker(storage, fast_config(cleanup_interval=0.05))
    service.start()
    await wait_event(storage.delete_sent, "the cleanup batch to be sent")
    await asyncio.wait_for(service.stop(grace=0.05), WAIT)
    assert storage.cancelled
