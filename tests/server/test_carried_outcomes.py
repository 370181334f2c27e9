"""Outcomes ride on the next claim where the storage does both in one go
(``Storage.combines_finish_and_claim``): each is recorded once, none is lost,
and storage trouble on the combined call hands them back to the flush loop."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from qml import (
    BackgroundJobServer,
    MemoryStorage,
    StorageUnavailableError,
    WorkerContext,
    WorkerRegistry,
)
from qml.storage.requests import ClaimRequest, Lease, Outcome, OutcomeKind
from qml.storage.sqlite import SqliteStorage

from .support import OK, WAIT, fast_config, wait_for_count

pytestmark = pytest.mark.timeout(60)


class Tally:
    """Outcomes recorded by each path (job id -> times)."""

    def __init__(self) -> None:
        self.carried: Counter[str] = Counter()
        self.flushed: Counter[str] = Counter()
        self.combined_calls = 0


def tally_calls(storage: SqliteStorage | MemoryStorage, tally: Tally) -> None:
    finish, combined = storage._finish, storage._finish_and_claim

    async def counting_finish(outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        results = await finish(outcomes, now)
        tally.flushed.update(o.job_id for o, ok in zip(outcomes, results, strict=True) if ok)
        return results

    async def counting_combined(
        outcomes: Sequence[Outcome], request: ClaimRequest
    ) -> tuple[list[bool], list[Lease]]:
        tally.combined_calls += 1
        results, leases = await combined(outcomes, request)
        tally.carried.update(o.job_id for o, ok in zip(outcomes, results, strict=True) if ok)
        return results, leases

    storage._finish = counting_finish  # type: ignore[method-assign]
    storage._finish_and_claim = counting_combined  # type: ignore[method-assign]


async def test_sqlite_carries_outcomes_on_claims_and_records_each_once(tmp_path: Path) -> None:
    storage = SqliteStorage(str(tmp_path / "carry.db"))
    assert storage.combines_finish_and_claim
    registry = WorkerRegistry(storage)
    ran = Counter[str]()

    @registry.job("work")
    async def work(ctx: WorkerContext, i: int) -> int:
        ran[ctx.job_id] += 1
        for _ in range(i % 3):
            await asyncio.sleep(0)
        return i

    tally = Tally()
    tally_calls(storage, tally)
    async with storage:
        ids = await storage.enqueue_many([work.build(i) for i in range(300)])
        server = BackgroundJobServer(fast_config(worker_count=5), storage, registry, burst=True)
        await asyncio.wait_for(server.run(), WAIT)
        assert await storage.count(OK) == 300
        assert [(await storage.get_job(i)).result for i in ids] == list(range(300))
    assert ran == Counter({i: 1 for i in ids})
    assert tally.combined_calls > 0
    assert sum(tally.carried.values()) > 0
    # every outcome recorded exactly once, by one path or the other
    assert tally.carried + tally.flushed == Counter({i: 1 for i in ids})
    assert server.processed[OutcomeKind.SUCCEED] == 300
    assert server.leases_lost == 0


class CarryingFlaky(MemoryStorage):
    """A memory storage that combines, and whose combined call fails at first:
    before anything is written, then after the outcomes were written."""

    combines_finish_and_claim = True

    def __init__(self, failures: list[str]) -> None:
        super().__init__()
        self.failures = failures

    async def _finish_and_claim(
        self, outcomes: Sequence[Outcome], request: ClaimRequest
    ) -> tuple[list[bool], list[Lease]]:
        if self.failures:
            when = self.failures.pop(0)
            if when == "after_finish":
                await self._finish(outcomes, request.now)
            raise StorageUnavailableError(f"connection lost ({when})")
        return await super()._finish_and_claim(outcomes, request)


@pytest.mark.parametrize("when", ["before_finish", "after_finish"])
async def test_a_failed_combined_call_loses_no_outcome(when: str) -> None:
    storage = CarryingFlaky([when, when])
    registry = WorkerRegistry(storage)
    ran = Counter[str]()

    @registry.job("work")
    async def work(ctx: WorkerContext) -> str:
        ran[ctx.job_id] += 1
        return "done"

    ids = await storage.enqueue_many([work.build() for _ in range(40)])
    # Leases far longer than the test: an outcome dropped on the failure would
    # leave its job Processing, never recovered in time.
    config = fast_config(worker_count=4, lease_seconds=600.0)
    server = BackgroundJobServer(config, storage, registry)
    async with server:
        await wait_for_count(storage, OK, 40)
    assert storage.failures == []
    assert ran == Counter({i: 1 for i in ids})
    for job_id in ids:
        job = await storage.get_job(job_id)
        assert (job.state, job.result, job.attempts) == (OK, "done", 1)
