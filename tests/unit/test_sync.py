"""The sync bridge: qml's async API from plain synchronous code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TypedDict

import pytest

from qml import Job, JobState, MemoryStorage, TypedWorker, WorkerContext, WorkerRegistry, sync
from qml.sync import Blocking


class Args(TypedDict):
    n: int


class Square(TypedWorker[Args]):
    method_name = "square"

    def execute(self, args: Args, ctx: WorkerContext) -> int:
        return args["n"] ** 2


@pytest.fixture
def bridge() -> Iterator[None]:
    yield
    sync.shutdown()


def test_run_enqueues_from_plain_sync_code(bridge: None) -> None:
    storage = MemoryStorage()
    job_id = sync.run(storage.enqueue(Job("m", {"a": 1})))
    job = sync.run(storage.get_job(job_id))
    assert job.state is JobState.ENQUEUED
    assert job.args == {"a": 1}


def test_blocking_wrapper(bridge: None) -> None:
    storage = Blocking(MemoryStorage())
    job_id = storage.enqueue(Job("m", {"k": "v"}))
    assert isinstance(job_id, str)
    assert storage.count(JobState.ENQUEUED) == 1
    assert storage.get_job(job_id).args == {"k": "v"}
    assert storage.backend_name == "memory"  # plain attributes pass through
    assert isinstance(storage.target, MemoryStorage)


def test_function_jobs_and_registry_from_sync_code(bridge: None) -> None:
    storage = MemoryStorage()
    registry = WorkerRegistry(storage)
    registry.register(Square())

    @registry.job("greet")
    async def greet(name: str) -> str:
        return f"hi {name}"

    ids = [
        sync.run(greet.enqueue("ann")),
        Blocking(registry).enqueue("square", {"n": 3}),
    ]
    jobs = [sync.run(storage.get_job(i)) for i in ids]
    assert [j.method for j in jobs] == ["greet", "square"]
    assert [j.args for j in jobs] == [{"name": "ann"}, {"n": 3}]


def test_run_from_many_threads(bridge: None) -> None:
    storage = MemoryStorage()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(20):
                sync.run(storage.enqueue(Job("m", {"k": k, "i": i})))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sync.run(storage.count()) == 100


def test_exceptions_propagate(bridge: None) -> None:
    from qml import JobNotFoundError

    with pytest.raises(JobNotFoundError):
        sync.run(MemoryStorage().get_job("missing"))


async def test_run_inside_a_running_loop_raises() -> None:
    storage = MemoryStorage()
    with pytest.raises(RuntimeError, match="await the coroutine instead"):
        sync.run(storage.enqueue(Job("m")))  # closed unstarted: no "never awaited" warning
    assert await storage.count() == 0


def test_timeout_cancels_the_operation(bridge: None) -> None:
    finished = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            finished.set()

    with pytest.raises(TimeoutError):
        sync.run(slow(), timeout=0.05)
    assert finished.wait(5)  # cancelled on the bridge's loop, not left running


def test_shutdown_cancels_what_is_still_running(bridge: None) -> None:
    cancelled = threading.Event()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = sync._ensure_loop()
    asyncio.run_coroutine_threadsafe(forever(), loop)
    assert started.wait(5)
    sync.shutdown()
    assert cancelled.is_set()


def test_bridge_restarts_after_shutdown(bridge: None) -> None:
    storage = MemoryStorage()
    sync.run(storage.enqueue(Job("m")))
    sync.shutdown()
    sync.shutdown()  # idempotent
    assert sync.run(storage.count()) == 1
