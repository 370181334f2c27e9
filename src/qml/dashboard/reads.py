"""Every storage call of the dashboard goes through :class:`DashboardStorage`.

It does three things:

* **counts** the calls per storage operation (``/metrics`` exposes them as
  ``qml_dashboard_storage_calls_total{op=...}``);
* **times** them per request: :class:`ServerTimingMiddleware` adds a
  ``Server-Timing`` entry with the time spent waiting for storage in each
  HTTP response (next to ``app;dur``, the total server time);
* **shares** the reads of live page refreshes. When the change feed reports
  new counts, every open tab refetches its page fragment (``?fragment=1``).
  Identical fragment reads of one feed generation are made once: concurrent
  ones wait for the same call, later ones reuse its result. A new feed
  snapshot, any change made through the dashboard, or ``ttl`` seconds end a
  shared result, so storage reads per tick stay flat with the number of tabs
  (DASHBOARD.md P1). Full page loads and API reads always read storage.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..storage.base import Storage

#: Reads whose results live page refreshes may share.
SHARED_READS = frozenset(
    {"stats", "queues", "list_jobs", "list_servers", "paused_queues", "list_recurring", "count"}
)
#: Storage methods that never change anything (every other coroutine method
#: is treated as a change and ends all shared results).
READ_ONLY = SHARED_READS | frozenset(
    {"get", "get_job", "get_recurring", "get_job_count", "wait_for_work"}
)
#: Seconds a shared read result may be reused (within one feed generation).
DEFAULT_SHARED_TTL = 1.0
#: Most shared results kept at once (distinct queries: filters and cursors).
CACHE_ENTRIES = 256


@dataclass(slots=True)
class RequestTiming:
    """Storage time of one HTTP request (filled by :class:`DashboardStorage`)."""

    shared: bool = False
    storage_seconds: float = 0.0
    calls: int = 0
    shared_hits: int = 0


_request: ContextVar[RequestTiming | None] = ContextVar("qml_dashboard_request", default=None)


@dataclass(slots=True)
class StorageCalls:
    """Counters of the storage calls made (and of shared reads saved) by one app."""

    calls: dict[str, int] = field(default_factory=dict)
    shared_hits: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@dataclass(slots=True)
class _Entry:
    generation: int
    at: float
    task: asyncio.Future[Any]


class DashboardStorage:
    """A counting, timing and read-sharing view of a :class:`Storage`.

    Attributes and synchronous methods pass through unchanged.
    """

    def __init__(self, storage: Storage, *, ttl: float = DEFAULT_SHARED_TTL) -> None:
        self._qml_storage = storage
        self._qml_ttl = ttl
        self._qml_generation = 0
        self._qml_cache: dict[Hashable, _Entry] = {}
        self.storage_calls = StorageCalls()

    @property
    def wrapped(self) -> Storage:
        return self._qml_storage

    def __repr__(self) -> str:
        return f"DashboardStorage({self._qml_storage!r})"

    def invalidate(self) -> None:
        """End every shared result (the data may have changed)."""
        self._qml_generation += 1
        self._qml_cache.clear()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._qml_storage, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        if name in SHARED_READS:

            async def shared_read(*args: Any, **kwargs: Any) -> Any:
                return await self._read(name, attr, args, kwargs)

            return shared_read

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await self._timed(self._call(name, attr, args, kwargs))
            finally:
                if name not in READ_ONLY:
                    self.invalidate()

        return call

    async def _call(
        self, name: str, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        self.storage_calls.calls[name] = self.storage_calls.calls.get(name, 0) + 1
        return await fn(*args, **kwargs)

    async def _timed(self, awaitable: Awaitable[Any], *, hit: bool = False) -> Any:
        timing = _request.get()
        started = time.perf_counter()
        try:
            return await awaitable
        finally:
            if timing is not None:
                timing.storage_seconds += time.perf_counter() - started
                timing.calls += 0 if hit else 1
                timing.shared_hits += 1 if hit else 0

    async def _read(
        self, name: str, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        timing = _request.get()
        if timing is None or not timing.shared:
            return await self._timed(self._call(name, fn, args, kwargs))
        key = (name, args, tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:
            return await self._timed(self._call(name, fn, args, kwargs))
        now = time.monotonic()
        entry = self._qml_cache.get(key)
        if (
            entry is not None
            and entry.generation == self._qml_generation
            and now - entry.at < self._qml_ttl
            and not (entry.task.done() and (entry.task.cancelled() or entry.task.exception()))
        ):
            hits = self.storage_calls.shared_hits
            hits[name] = hits.get(name, 0) + 1
            return await self._timed(asyncio.shield(entry.task), hit=True)
        if len(self._qml_cache) >= CACHE_ENTRIES:
            self._qml_cache = {
                k: e for k, e in self._qml_cache.items() if now - e.at < self._qml_ttl
            }
            if len(self._qml_cache) >= CACHE_ENTRIES:
                self._qml_cache.clear()
        task = asyncio.ensure_future(self._call(name, fn, args, kwargs))
        entry = _Entry(self._qml_generation, now, task)
        self._qml_cache[key] = entry
        try:
            return await self._timed(asyncio.shield(task))
        except BaseException:
            if self._qml_cache.get(key) is entry and task.done():
                del self._qml_cache[key]
            raise


class ServerTimingMiddleware:
    """Adds ``Server-Timing: storage;dur=…;desc="N calls"`` (time spent waiting
    for storage) to every HTTP response; the security middleware around it adds
    ``app;dur=…`` (the total). Marks live fragment refreshes as shareable reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        shared = scope.get("method") == "GET" and b"fragment=1" in query.split(b"&")
        timing = RequestTiming(shared=shared)
        token = _request.set(timing)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                shared_note = f", {timing.shared_hits} shared" if timing.shared_hits else ""
                value = (
                    f"storage;dur={timing.storage_seconds * 1000:.2f};"
                    f'desc="{timing.calls} calls{shared_note}"'
                )
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", value.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            _request.reset(token)
