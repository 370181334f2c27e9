"""Cancellation of a running job reaches it through ``ctx.cancelled``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from qml import Job, JobState, MemoryStorage, WorkerContext, WorkerRegistry

from .support import (
    OK,
    WAIT,
    D,
    F,
    R,
    fast_config,
    reasons,
    serving,
    states,
    wait_for_state,
    wait_thread_event,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = {"lease_seconds": 3.0, "heartbeat_interval": 0.05, "cancel_grace": 0.3}


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_request_cancel_reaches_a_running_job(
    memory: MemoryStorage, registry: WorkerRegistry, kind: str
) -> None:
    started = threading.Event()
    seen: list[str | None] = []

    if kind == "async":

        @registry.job("cooperative")
        async def cooperative_async(ctx: WorkerContext) -> None:
            started.set()
            await asyncio.wait_for(ctx.cancelled.wait(), WAIT)
            seen.append(ctx.cancelled.reason)
            raise RuntimeError("stopped on request")

    else:

        @registry.job("cooperative")
        def cooperative_sync(ctx: WorkerContext) -> None:
            started.set()
            assert ctx.cancelled.wait_sync(WAIT)
            seen.append(ctx.cancelled.reason)
            raise RuntimeError("stopped on request")

    job_id = await memory.enqueue(Job("cooperative", max_retries=5))
    async with serving(fast_config(**CONFIG), memory, registry):
        await wait_thread_event(started, "the job to start")
        running = await memory.request_cancel(job_id)
        assert running.state is JobState.PROCESSING
        assert running.cancel_requested
        job = await wait_for_state(memory, job_id, F)
    assert seen == ["cancelled"]
    assert job.attempts == 1  # a cancelled job is not retried
    assert R not in states(job)
    assert reasons(job)[-1] == ("Failed", "cancelled")
    assert job.error == "stopped on request"


async def test_async_job_ignoring_cancel_is_cancelled_after_the_grace(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    started = asyncio.Event()
    got_cancelled_error = asyncio.Event()

    @registry.job("stubborn")
    async def stubborn(ctx: WorkerContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)  # never looks at ctx.cancelled
        except asyncio.CancelledError:
            got_cancelled_error.set()
            raise

    job_id = await memory.enqueue(Job("stubborn", max_retries=5))
    async with serving(fast_config(**CONFIG), memory, registry) as server:
        await asyncio.wait_for(started.wait(), WAIT)
        await memory.request_cancel(job_id)
        job = await wait_for_state(memory, job_id, F)
        assert got_cancelled_error.is_set()
        # The server goes on: the slot is free for the next job.
        other = await memory.enqueue(Job("finishes"))

        @registry.job("finishes")
        def finishes() -> str:
            return "ok"

        assert (await wait_for_state(memory, other, OK)).result == "ok"
        assert server.is_running
    assert job.attempts == 1
    assert job.error_type == "JobCancelledError"
    assert reasons(job)[-1] == ("Failed", "cancelled")


async def test_job_finishing_normally_after_cancel_is_not_a_failure(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """A job may choose to finish its work when asked to stop; its result stands."""
    started = asyncio.Event()

    @registry.job("wraps_up")
    async def wraps_up(ctx: WorkerContext) -> str:
        started.set()
        await asyncio.wait_for(ctx.cancelled.wait(), WAIT)
        return "partial"

    job_id = await memory.enqueue(Job("wraps_up"))
    async with serving(fast_config(**CONFIG), memory, registry):
        await asyncio.wait_for(started.wait(), WAIT)
        await memory.request_cancel(job_id)
        job = await wait_for_state(memory, job_id, OK, F)
    assert job.state is OK
    assert job.result == "partial"


async def test_cancel_of_a_waiting_job_deletes_it(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    job_id = await memory.enqueue(Job("never_runs"))
    job = await memory.request_cancel(job_id)
    assert job.state is D
    assert reasons(job)[-1] == ("Deleted", "cancelled")
