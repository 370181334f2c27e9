"""DaemonThreadPool: sync jobs on daemon threads; a hung job never starves others."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from qml.server.pool import DaemonThreadPool


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_runs_callables_and_returns_results() -> None:
    pool = DaemonThreadPool(2)
    futures = [pool.submit(pow, 2, n) for n in range(10)]
    assert [f.result(5) for f in futures] == [2**n for n in range(10)]
    pool.shutdown()


def test_exceptions_including_base_exceptions_reach_the_future() -> None:
    pool = DaemonThreadPool(1)

    def exits() -> None:
        raise SystemExit(2)

    fut = pool.submit(exits)
    with pytest.raises(SystemExit):
        fut.result(5)
    assert pool.submit(lambda: "still works").result(5) == "still works"
    pool.shutdown()


def test_a_hung_job_does_not_block_the_next(gate: threading.Event) -> None:
    pool = DaemonThreadPool(1)
    started = threading.Event()

    def hang() -> None:
        started.set()
        gate.wait(30)

    pool.submit(hang)
    assert started.wait(5)
    assert pool.submit(lambda: 42).result(5) == 42  # on a new thread
    assert all(t.daemon for t in pool._threads)
    gate.set()
    pool.shutdown()


def test_idle_threads_are_capped_at_size(gate: threading.Event) -> None:
    pool = DaemonThreadPool(2)
    ready = threading.Barrier(6)

    def block() -> None:
        ready.wait(5)
        gate.wait(30)

    futures = [pool.submit(block) for _ in range(5)]
    ready.wait(5)  # five jobs at once: five threads
    assert len(pool._threads) == 5
    gate.set()
    for f in futures:
        f.result(5)
    # Threads beyond ``size`` leave once idle (poll, bounded).
    pause = threading.Event()
    for _ in range(1000):
        if len(pool._threads) <= 2:
            break
        pause.wait(0.01)
    assert len(pool._threads) <= 2
    assert pool.submit(lambda: "reused").result(5) == "reused"
    pool.shutdown()


def test_submit_after_shutdown_is_refused() -> None:
    pool = DaemonThreadPool(1)
    pool.submit(lambda: None).result(5)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)
