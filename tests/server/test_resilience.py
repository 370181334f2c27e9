"""Storage trouble never stops the server: it retries and goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import pytest

from qml import (
    BackgroundJobServer,
    Job,
    MemoryStorage,
    StorageError,
    StorageUnavailableError,
    WorkerContext,
    WorkerRegistry,
)
from qml.storage.requests import ClaimRequest, HeartbeatReply, Lease, Outcome

from .support import OK, WAIT, F, P, fast_config, serving, wait_for_state, wait_until

pytestmark = pytest.mark.timeout(60)


class FlakyStorage(MemoryStorage):
    """Fails chosen operations a number of times, with chosen errors."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_claims: list[BaseException] = []
        self.fail_finishes: list[BaseException] = []
        self.fail_extends: list[BaseException] = []
        self.fail_waits = 0
        self.extends = 0

    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        if self.fail_claims:
            raise self.fail_claims.pop(0)
        return await super()._claim(request)

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        if self.fail_finishes:
            raise self.fail_finishes.pop(0)
        return await super()._finish(outcomes, now)

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        self.extends += 1
        if self.fail_extends:
            raise self.fail_extends.pop(0)
        return await super()._extend_leases(leases, lease_seconds, now)

    async def _wait_for_work(self, timeout: float) -> bool:
        if self.fail_waits:
            self.fail_waits -= 1
            raise StorageUnavailableError("no wake-up channel")
        return await super()._wait_for_work(timeout)


async def test_claim_errors_are_retried_with_backoff() -> None:
    storage = FlakyStorage()
    registry = WorkerRegistry(storage)

    @registry.job("work")
    def work() -> str:
        return "ok"

    storage.fail_claims = [StorageUnavailableError("down"), RuntimeError("a backend bug")]
    job_id = await work.enqueue()
    async with serving(fast_config(), storage, registry):
        job = await wait_for_state(storage, job_id, OK)
    assert job.result == "ok"
    assert storage.fail_claims == []


async def test_finish_errors_are_retried_while_the_lease_holds() -> None:
    storage = FlakyStorage()
    registry = WorkerRegistry(storage)

    @registry.job("work")
    async def work() -> str:
        return "recorded"

    storage.fail_finishes = [StorageUnavailableError("down"), StorageError("again")]
    job_id = await work.enqueue()
    async with serving(fast_config(), storage, registry) as server:
        job = await wait_for_state(storage, job_id, OK)
        assert server.leases_lost == 0
    assert job.result == "recorded"
    assert job.attempts == 1


async def test_heartbeat_errors_do_not_end_renewals() -> None:
    storage = FlakyStorage()
    registry = WorkerRegistry(storage)
    started = asyncio.Event()
    go = asyncio.Event()

    @registry.job("long")
    async def long(ctx: WorkerContext) -> str:
        started.set()
        await go.wait()
        return "done"

    storage.fail_extends = [StorageUnavailableError("down"), RuntimeError("a backend bug")]
    job_id = await long.enqueue()
    config = fast_config(lease_seconds=3.0, heartbeat_interval=0.05)
    async with serving(config, storage, registry):
        await asyncio.wait_for(started.wait(), WAIT)
        await wait_until(lambda: storage.extends >= 4, "renewals to go on after errors")
        assert (await storage.get_job(job_id)).state is P
        go.set()
        await wait_for_state(storage, job_id, OK)


async def test_a_job_whose_lease_cannot_be_renewed_is_stopped_before_it_ends() -> None:
    """Storage unreachable for renewals: when the lease may have ended (and
    another server may take the job) the holder stops the job and writes no
    outcome for it; the job is recovered and runs again."""
    storage = FlakyStorage()
    registry = WorkerRegistry(storage)
    runs: list[str | None] = []
    first = asyncio.Event()

    @registry.job("long")
    async def long(ctx: WorkerContext) -> str:
        if not runs:
            runs.append(None)
            first.set()
            try:
                await asyncio.sleep(60)
            finally:
                runs[0] = ctx.cancelled.reason
        runs.append("again")
        return "done"

    job_id = await long.enqueue()
    config = fast_config(lease_seconds=1.0, heartbeat_interval=0.05, scheduler_interval=0.05)
    storage.fail_extends = [StorageUnavailableError("down")] * 10_000
    async with serving(config, storage, registry) as server:
        await asyncio.wait_for(first.wait(), WAIT)
        await wait_until(lambda: runs[0] is not None, "the job to be stopped")
        storage.fail_extends = []
        job = await wait_for_state(storage, job_id, OK)
        assert server.leases_lost == 1
    assert runs == ["lease_expired", "again"]
    assert job.attempts == 2 and job.crashes == 1


async def test_wake_up_errors_fall_back_to_polling() -> None:
    storage = FlakyStorage()
    registry = WorkerRegistry(storage)

    @registry.job("work")
    def work() -> str:
        return "ok"

    storage.fail_waits = 3
    async with serving(fast_config(polling_interval=0.02), storage, registry):
        await wait_until(lambda: storage.fail_waits == 0, "the failing waits")
        job_id = await work.enqueue()
        await wait_for_state(storage, job_id, OK)


class BrokenOpen(MemoryStorage):
    async def open(self) -> None:
        raise StorageUnavailableError("cannot connect")


async def test_a_server_that_failed_to_start_stops_cleanly() -> None:
    server = BackgroundJobServer(fast_config(), BrokenOpen(), WorkerRegistry())
    with pytest.raises(StorageUnavailableError):
        await server.start()
    assert not server.is_running
    await asyncio.wait_for(server.stop(), WAIT)


async def test_corrupt_stored_arguments_fail_the_job(memory: MemoryStorage) -> None:
    registry = WorkerRegistry(memory)

    @registry.job("work")
    def work(n: int) -> int:
        return n

    job_id = await memory.enqueue(Job("work", {"n": 1}))
    memory._payloads[job_id] = b'{"n": 1'  # damaged in storage
    ok_id = await work.enqueue(2)
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, job_id, F)
        assert (await wait_for_state(memory, ok_id, OK)).result == 2
    assert job.error_type == "SerializationError"
    assert job.error is not None and "cannot be decoded" in job.error
    assert job.attempts == 1
