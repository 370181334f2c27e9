"""Bad input never crashes the server nor loses a job (SPEC §6).

Each case ends as a clear error or a retry on that job, and a healthy job
enqueued beside it still succeeds.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from qml import (
    Job,
    MemoryStorage,
    RetryPolicy,
    SerializationError,
    TypedWorker,
    Worker,
    WorkerContext,
    WorkerRegistry,
    WorkerResult,
)

from .support import OK, E, F, P, R, S, fast_config, reasons, serving, states, wait_for_state

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def release_threads() -> Iterator[threading.Event]:
    """Set at teardown, so sync jobs that 'hang' end and leave no thread behind."""
    gate = threading.Event()
    yield gate
    gate.set()


def add_healthy_job(registry: WorkerRegistry) -> None:
    @registry.job("healthy")
    async def healthy(n: int) -> int:
        return n * 2


async def assert_server_still_works(storage: MemoryStorage) -> None:
    job_id = await storage.enqueue(Job("healthy", {"n": 21}))
    job = await wait_for_state(storage, job_id, OK, F)
    assert job.state is OK
    assert job.result == 42


# ---------------------------------------------------------------------- unknown method
async def test_unknown_method_is_released_with_backoff_without_counting(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    job_id = await memory.enqueue(Job("not.deployed.yet", {"a": 1}))
    async with serving(fast_config(unknown_method_window=3600.0), memory, registry):
        job = await wait_for_state(memory, job_id, S)
        assert job.attempts == 0  # a release does not count an attempt
        assert job.run_at is not None and job.run_at > job.updated_at  # type: ignore[operator]
        assert reasons(job)[-2:] == [("Processing", None), ("Scheduled", "unknown_method")]
        assert job.error is None
        await assert_server_still_works(memory)


async def test_unknown_method_runs_once_the_worker_is_deployed(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """A rolling deploy: the job waits (released with backoff) for a server that knows it."""
    job_id = await memory.enqueue(Job("deployed.later", {"n": 5}))
    async with serving(fast_config(unknown_method_window=3600.0), memory, registry):
        await wait_for_state(memory, job_id, S)

        @registry.job("deployed.later")
        def later(n: int) -> int:
            return n + 1

        job = await wait_for_state(memory, job_id, OK)
    assert job.result == 6
    assert job.attempts == 1


async def test_unknown_method_fails_after_the_window(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    job_id = await memory.enqueue(Job("never.deployed"))
    async with serving(fast_config(unknown_method_window=0.0), memory, registry):
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
    assert job.error_type == "WorkerNotFoundError"
    assert job.error is not None and "never.deployed" in job.error
    assert reasons(job)[-1] == ("Failed", "unknown_method")


async def test_unknown_method_window_uses_the_storage_clock(registry: WorkerRegistry) -> None:
    """The job's age comes from storage times (created_at, started_at), not the
    host clock: a fresh job on a storage whose clock lags the host's must not
    look old enough to fail."""
    from qml.clock import FrozenClock

    clock = FrozenClock(datetime(2020, 1, 1, tzinfo=UTC))
    storage = MemoryStorage(clock=clock)
    job_id = await storage.enqueue(Job("not.yet"))
    async with serving(fast_config(unknown_method_window=60.0), storage, registry):
        job = await wait_for_state(storage, job_id, S)
    assert job.attempts == 0
    assert reasons(job)[-1] == ("Scheduled", "unknown_method")


# ---------------------------------------------------------------------- arguments
@dataclass
class Point:
    x: int
    y: int


class PointWorker(TypedWorker[Point]):
    method_name = "point"
    runs = 0

    async def execute(self, args: Point, ctx: WorkerContext) -> int:
        PointWorker.runs += 1
        return args.x + args.y


async def test_arguments_failing_validation_fail_without_retry(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    registry.register(PointWorker())
    PointWorker.runs = 0
    # Bypass the typed API, as another language or an old deploy would.
    bad = await memory.enqueue(Job("point", {"x": "not a number"}))
    good = await registry.enqueue("point", Point(1, 2))
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, bad, F)
        assert (await wait_for_state(memory, good, OK)).result == 3
        await assert_server_still_works(memory)
    assert job.attempts == 1
    assert job.error_type == "ValidationError"
    assert job.error is not None and "x" in job.error and "y" in job.error
    assert R not in states(job)
    assert reasons(job)[-1] == ("Failed", "invalid")
    assert PointWorker.runs == 1  # only the good one ran


async def test_function_job_with_invalid_stored_arguments(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    bad_ids = [
        await memory.enqueue(Job("healthy", {"n": "twenty"})),
        await memory.enqueue(Job("healthy", {"n": 1, "extra": True})),
        await memory.enqueue(Job("healthy", ["not", "an", "object"])),
    ]
    async with serving(fast_config(), memory, registry):
        for job_id in bad_ids:
            job = await wait_for_state(memory, job_id, F)
            assert job.error_type == "ValidationError"
            assert job.attempts == 1
        await assert_server_still_works(memory)


async def test_non_json_arguments_are_refused_at_enqueue(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    class Raw(Worker):
        method_name = "raw"

        def execute(self, job: Job, ctx: WorkerContext) -> None:
            return None

    registry.register(Raw())
    for args in ({"when": datetime.now(UTC)}, {"s": {1, 2}}, {"b": b"x"}, object()):
        with pytest.raises(SerializationError):
            await memory.enqueue(Job("raw", args))
        with pytest.raises(SerializationError):
            await registry.enqueue("raw", args)
    assert await memory.count() == 0


async def test_non_json_result_fails_the_job_with_serialization_error(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    runs = Counter[str]()

    @registry.job("returns_set")
    async def returns_set(ctx: WorkerContext) -> set[int]:
        runs[ctx.job_id] += 1
        return {1, 2}

    @registry.job("returns_object")
    def returns_object(ctx: WorkerContext) -> WorkerResult:
        runs[ctx.job_id] += 1
        return WorkerResult.success(object())

    ids = [await returns_set.enqueue(), await returns_object.enqueue()]
    async with serving(fast_config(), memory, registry):
        for job_id in ids:
            job = await wait_for_state(memory, job_id, F)
            assert job.error_type == "SerializationError"
            assert job.error is not None and "job result" in job.error
            assert job.result is None
        await assert_server_still_works(memory)
    assert runs == {i: 1 for i in ids}  # not retried


# ---------------------------------------------------------------------- raising
_delays: list[int] = []


@dataclass(frozen=True, slots=True)
class RecordingPolicy(RetryPolicy):
    """Records which retry numbers the server asked a delay for."""

    def delay(self, retry_number: int, rng: Any = None) -> float:
        _delays.append(retry_number)
        return RetryPolicy.delay(self, retry_number, rng)


async def test_raising_job_is_retried_with_backoff_then_fails(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    _delays.clear()
    runs = Counter[str]()
    attempts_seen: list[int] = []

    @registry.job("flaky")
    async def flaky(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        attempts_seen.append(ctx.attempt)
        raise ValueError(f"boom on attempt {ctx.attempt}")

    policy = RecordingPolicy(max_retries=2, base_delay=0.01, factor=2.0, jitter=0.0)
    job_id = await flaky.enqueue()
    async with serving(fast_config(retry_policy=policy), memory, registry):
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
    assert runs[job_id] == 3  # first run + max_retries
    assert attempts_seen == [1, 2, 3]
    assert job.attempts == 3
    assert job.crashes == 0
    assert _delays == [1, 2]  # backoff asked for retry 1, then retry 2
    assert job.error_type == "ValueError"
    assert job.error == "boom on attempt 3"
    assert job.traceback is not None and "ValueError: boom on attempt 3" in job.traceback
    assert states(job) == [E, P, R, E, P, R, E, P, F]
    assert reasons(job)[-1] == ("Failed", "retries_exhausted")


async def test_retry_limits_per_job_and_per_worker(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    runs = Counter[str]()

    @registry.job("fails")
    def fails(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        raise RuntimeError("no")

    @registry.job(
        "fails_once_allowed", max_retries=1, retry_policy=RetryPolicy(base_delay=0.01, jitter=0)
    )
    def fails_once_allowed(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        raise RuntimeError("no")

    no_retry = await fails.options(max_retries=0).enqueue()
    two_retries = await fails.options(max_retries=2).enqueue()
    worker_level = await fails_once_allowed.enqueue()
    async with serving(fast_config(), memory, registry):
        for job_id in (no_retry, two_retries, worker_level):
            await wait_for_state(memory, job_id, F)
    assert runs == {no_retry: 1, two_retries: 3, worker_level: 2}


async def test_worker_result_retry_and_failure(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    @registry.job("polite")
    def polite(ctx: WorkerContext, mode: str) -> WorkerResult:
        if mode == "fail":
            return WorkerResult.failure("input is wrong")
        if ctx.attempt < 3:
            return WorkerResult.retry("not yet", delay=0.01)
        return WorkerResult.success({"attempt": ctx.attempt})

    failed = await polite.enqueue("fail")
    retried = await polite.enqueue("retry")
    async with serving(fast_config(), memory, registry):
        f_job = await wait_for_state(memory, failed, F)
        r_job = await wait_for_state(memory, retried, OK)
    assert f_job.attempts == 1
    assert (f_job.error_type, f_job.error) == ("Failure", "input is wrong")
    assert r_job.result == {"attempt": 3}
    assert states(r_job).count(R) == 2


# ---------------------------------------------------------------------- hanging
async def test_async_job_hanging_past_its_timeout(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)
    cancelled = asyncio.Event()

    @registry.job("hangs", timeout=0.2)
    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job_id = await hangs.options(max_retries=1).enqueue()
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
    assert cancelled.is_set()
    assert job.attempts == 2  # retried once, like any failure
    assert job.error_type == "TimeoutError"
    assert job.error is not None and "0.2" in job.error
    assert reasons(job)[-1] == ("Failed", "timeout")


async def test_sync_job_hanging_past_its_timeout_keeps_the_server_going(
    memory: MemoryStorage, registry: WorkerRegistry, release_threads: threading.Event
) -> None:
    """With one slot, a sync job that ignores its timeout keeps its thread busy;
    the next sync job must still run (on a new thread) and not time out queued."""
    saw_cancel = threading.Event()

    @registry.job("stuck")
    def stuck(ctx: WorkerContext) -> None:
        if ctx.cancelled.wait_sync(30):
            saw_cancel.set()
        release_threads.wait(30)  # and then ignores it

    @registry.job("quick_sync")
    def quick_sync(n: int) -> int:
        return n

    stuck_id = await stuck.options(max_retries=0, timeout=0.2).enqueue()
    async with serving(fast_config(worker_count=1, fetch_batch_size=1), memory, registry):
        job = await wait_for_state(memory, stuck_id, F)
        assert job.error_type == "TimeoutError"
        assert saw_cancel.is_set() or await asyncio.to_thread(saw_cancel.wait, 5)
        quick_ids = [await quick_sync.options(timeout=5.0).enqueue(i) for i in range(3)]
        for i, quick_id in enumerate(quick_ids):
            quick = await wait_for_state(memory, quick_id, OK, F)
            assert quick.state is OK, quick.error
            assert quick.result == i


# ---------------------------------------------------------------------- sys.exit
async def test_async_job_calling_sys_exit(memory: MemoryStorage, registry: WorkerRegistry) -> None:
    add_healthy_job(registry)

    @registry.job("exits_async")
    async def exits_async() -> None:
        sys.exit(3)

    job_id = await exits_async.options(max_retries=1).enqueue()
    async with serving(fast_config(), memory, registry) as server:
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
        assert server.is_running
    assert job.attempts == 2
    assert job.error_type == "SystemExit"
    assert job.error == "job called sys.exit(3)"


async def test_sync_job_calling_sys_exit(memory: MemoryStorage, registry: WorkerRegistry) -> None:
    add_healthy_job(registry)

    @registry.job("exits_sync")
    def exits_sync() -> None:
        raise SystemExit("bye")

    job_id = await exits_sync.options(max_retries=0).enqueue()
    async with serving(fast_config(), memory, registry) as server:
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
        assert server.is_running
    assert job.attempts == 1
    assert job.error_type == "SystemExit"
    assert job.error == "job called sys.exit('bye')"


async def test_keyboard_interrupt_in_a_job_is_a_job_error(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    add_healthy_job(registry)

    @registry.job("interrupts")
    def interrupts() -> None:
        raise KeyboardInterrupt

    job_id = await interrupts.options(max_retries=0).enqueue()
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, job_id, F)
        await assert_server_still_works(memory)
    assert job.error_type == "KeyboardInterrupt"


async def test_job_raising_cancelled_error_itself_is_a_failure_not_a_release(
    memory: MemoryStorage, registry: WorkerRegistry
) -> None:
    """Nobody cancelled this attempt: the job must not be released (uncounted)
    and re-run forever, but fail and retry like any exception."""
    add_healthy_job(registry)
    runs = Counter[str]()

    @registry.job("leaks_cancel")
    async def leaks_cancel(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        raise asyncio.CancelledError

    @registry.job("leaks_cancel_sync")
    def leaks_cancel_sync(ctx: WorkerContext) -> None:
        runs[ctx.job_id] += 1
        raise asyncio.CancelledError

    ids = [
        await leaks_cancel.options(max_retries=1).enqueue(),
        await leaks_cancel_sync.options(max_retries=1).enqueue(),
    ]
    async with serving(fast_config(), memory, registry):
        for job_id in ids:
            job = await wait_for_state(memory, job_id, F)
            assert job.attempts == 2
            assert job.error_type == "CancelledError"
        await assert_server_still_works(memory)
    assert runs == {i: 2 for i in ids}


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_job_raising_its_own_timeout_error_is_not_a_job_timeout(
    memory: MemoryStorage, registry: WorkerRegistry, kind: str
) -> None:
    """A socket timeout inside the job is the job's error, reported as such."""
    if kind == "async":

        @registry.job("times_out_inside")
        async def inside_async() -> None:
            raise TimeoutError("socket timed out")

    else:

        @registry.job("times_out_inside")
        def inside_sync() -> None:
            raise TimeoutError("socket timed out")

    job_id = await memory.enqueue(Job("times_out_inside", max_retries=0))
    async with serving(fast_config(), memory, registry):
        job = await wait_for_state(memory, job_id, F)
    assert job.error_type == "TimeoutError"
    assert job.error == "socket timed out"
    assert job.traceback is not None and "inside_" in job.traceback
    assert reasons(job)[-1] == ("Failed", "retries_exhausted")
