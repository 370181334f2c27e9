"""A thread pool of daemon threads for sync jobs.

The standard ThreadPoolExecutor joins its threads at interpreter exit, so one
hung sync job would keep a stopping worker process alive forever; these
threads do not hold the process.

A thread cannot be killed: a sync job that hangs past its timeout keeps its
thread while the server reuses the job's slot. So a job submitted while every
thread is busy gets a new thread rather than queueing behind a hung one; the
server's slots bound how many jobs run, and at most ``size`` threads stay idle.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class DaemonThreadPool:
    """Runs callables on daemon threads, started on demand; keeps up to ``size``
    idle threads for reuse."""

    def __init__(self, size: int, name: str = "qml-job") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._count = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("pool is shut down")
            self._queue.put((fut, fn, args))
            if self._idle:
                self._idle -= 1  # an idle thread will take it
            else:
                self._count += 1
                t = threading.Thread(
                    target=self._work, name=f"{self.name}-{self._count}", daemon=True
                )
                self._threads.append(t)
                t.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            _run(*item)
            del item  # hold no reference to the job while idle
            with self._lock:
                if self._idle >= self.size or self._shutdown:
                    self._threads.remove(threading.current_thread())
                    return
                self._idle += 1

    def shutdown(self) -> None:
        """Stop idle threads; busy ones finish their job and then stop."""
        with self._lock:
            self._shutdown = True
            for _ in self._threads:
                self._queue.put(_STOP)


def _run(fut: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
