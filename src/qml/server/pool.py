"""A thread pool of daemon threads for sync jobs.

The standard ThreadPoolExecutor joins its threads at interpreter exit, so one
hung sync job would keep a stopping worker process alive forever; these
threads do not hold the process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class DaemonThreadPool:
    """Runs callables on up to ``size`` daemon threads, started on demand."""

    def __init__(self, size: int, name: str = "qml-job") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("pool is shut down")
            self._queue.put((fut, fn, args))
            if self._idle == 0 and len(self._threads) < self.size:
                t = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1 if self._idle else 0
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop idle threads; busy ones finish their job and then stop."""
        with self._lock:
            self._shutdown = True
            for _ in self._threads:
                self._queue.put(_STOP)
