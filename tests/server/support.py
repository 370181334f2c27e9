"""Helpers for the server tests: fast settings and bounded waits.

Every wait here polls storage (or an event) until a condition holds, with a
timeout; nothing sleeps a fixed time for correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from qml import (
    BackgroundJobServer,
    Job,
    JobState,
    RetryPolicy,
    ServerConfig,
    Storage,
    WorkerRegistry,
)

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
OK, F, R, D = JobState.SUCCEEDED, JobState.FAILED, JobState.AWAITING_RETRY, JobState.DELETED

#: Upper bound of any single wait in these tests.
WAIT = 15.0


def fast_config(**overrides: Any) -> ServerConfig:
    """Small intervals so the tests run fast; override any field."""
    settings: dict[str, Any] = {
        "server_name": "test-server",
        "worker_count": 4,
        "fetch_batch_size": 4,
        "polling_interval": 0.05,
        "lease_seconds": 3.0,
        "scheduler_interval": 0.05,
        "enable_cleanup": False,
        "enable_recurring": False,
        "retry_policy": RetryPolicy(max_retries=3, base_delay=0.01, factor=2.0, jitter=0.0),
        "shutdown_timeout": 5.0,
        "crash_backoff": 0.0,
        "cancel_grace": 0.3,
        "server_heartbeat_interval": 0.5,
        "flush_interval": 0.001,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = WAIT
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_state(
    storage: Storage, job_id: str, *states: JobState, timeout: float = WAIT
) -> Job:
    """Wait until the job is in one of ``states``; return it."""
    found: list[Job] = []

    async def check() -> bool:
        job = await storage.get_job(job_id)
        found[:] = [job]
        return job.state in states

    labels = "/".join(s.label for s in states)
    try:
        await wait_until(check, f"job {job_id} to be {labels}", timeout)
    except AssertionError as exc:
        last = found[0] if found else None
        raise AssertionError(
            f"{exc} (last seen {last.state.label if last else '-'}: "
            f"{last.error_type if last else ''} {last.error if last else ''})"
        ) from None
    return found[0]


async def wait_for_count(storage: Storage, state: JobState, n: int, timeout: float = WAIT) -> None:
    async def check() -> bool:
        return await storage.count(state) >= n

    await wait_until(check, f"{n} job(s) {state.label}", timeout)


async def wait_event(event: asyncio.Event, what: str, timeout: float = WAIT) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def wait_thread_event(event: Any, what: str, timeout: float = WAIT) -> None:
    """Wait for a ``threading.Event`` without blocking the loop."""
    if not await asyncio.to_thread(event.wait, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.asynccontextmanager
async def serving(
    config: ServerConfig, storage: Storage, registry: WorkerRegistry, **kwargs: Any
) -> AsyncIterator[BackgroundJobServer]:
    """A started server, force-stopped (with a bound) when the block ends."""
    server = BackgroundJobServer(config, storage, registry, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(force=True), WAIT)


async def begin_stop(server: BackgroundJobServer, **kwargs: Any) -> asyncio.Task[None]:
    """Call ``server.stop()`` in a task and return once stopping has begun (the
    task has run up to its first wait: it no longer claims)."""
    task = asyncio.create_task(server.stop(**kwargs))
    await asyncio.sleep(0)  # the new task runs first, up to its first await
    return task


def reasons(job: Job) -> list[tuple[str, str | None]]:
    """The job's history as (state label, reason) pairs."""
    return [(h.state.label, h.reason) for h in job.history]


def states(job: Job) -> list[JobState]:
    return [h.state for h in job.history]
