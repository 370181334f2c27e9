"""One generic bridge for synchronous callers (Django/Flask views, scripts).

qml's API is async. From sync code, run any of its coroutines with
:func:`run`; they execute on one background event loop owned by this module,
so connection pools created there stay on that loop::

    from qml import sync
    storage = sync.run(StorageInstance.from_url("sqlite:///qml.db"))
    job_id = sync.run(send_email.enqueue(to="a@example.com"))

:class:`Blocking` wraps any object whose methods are coroutines (a storage,
a registry) into one whose methods block: ``Blocking(storage).enqueue(job)``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _ensure_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def runner() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=runner, name="qml-sync-bridge", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def run(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Run a qml coroutine from synchronous code and return its result.

    Must not be called from inside a running event loop's thread (use
    ``await`` there instead).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: no "never awaited" warning
        raise RuntimeError("qml.sync.run() called from async code: await the coroutine instead")
    loop = _ensure_loop()

    async def wrap() -> T:
        return await awaitable

    fut = asyncio.run_coroutine_threadsafe(wrap(), loop)
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()  # do not leave the operation running in the background
        raise


def shutdown() -> None:
    """Stop the bridge's loop (at interpreter exit, or in tests)."""
    global _loop, _thread
    with _lock:
        loop, thread, _loop, _thread = _loop, _thread, None, None
    if loop is None or thread is None:
        return

    async def cancel_pending() -> None:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await loop.shutdown_asyncgens()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    if not thread.is_alive():
        loop.close()


atexit.register(shutdown)


class Blocking(Generic[O]):
    """Wrap an object so its coroutine methods block and return their result."""

    def __init__(self, target: O) -> None:
        self._target = target

    @property
    def target(self) -> O:
        return self._target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            def call(*args: Any, **kwargs: Any) -> Any:
                coro: Coroutine[Any, Any, Any] = attr(*args, **kwargs)
                return run(coro)

            return call
        return attr
