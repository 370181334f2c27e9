"""A connection of its own for one hot statement (enqueue, claim, finish), outside the pool.

Checking a connection out of asyncpg's pool and back costs more client CPU
than a short queue statement's own work: the pool's queue, its timeout
wrapper, the holder bookkeeping and the release hook on every call. A
:class:`Lane` holds one connection and serves one call at a time; a caller
that finds it busy uses the pool, so the lane never makes anybody wait.

The lane offers the pool's ``acquire(timeout=...)`` so the retry rules of
:func:`.driver.call_with_retry` apply to it unchanged. A call that fails or is
cancelled half-way closes the connection (a reply may still be in flight, or
the server may have gone), and the next call connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncpg


class Lane:
    """One dedicated connection, made by ``connect`` on first use and after a loss."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection[Any]]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection[Any] | None = None
        self.busy = False

    def acquire(self, *, timeout: float | None = None) -> _Use:
        """The connection, as ``async with lane.acquire(timeout=...) as conn``."""
        return _Use(self, timeout)

    async def close(self, timeout: float) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        if self.busy:  # a call is in flight: do not wait for it
            conn.terminate()
            return
        try:
            await asyncio.wait_for(conn.close(), timeout)
        except (Exception, asyncio.CancelledError):
            conn.terminate()
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


class _Use:
    __slots__ = ("_lane", "_timeout")

    def __init__(self, lane: Lane, timeout: float | None) -> None:
        self._lane, self._timeout = lane, timeout

    async def __aenter__(self) -> asyncpg.Connection[Any]:
        lane = self._lane
        conn = lane._conn
        if conn is None or conn.is_closed():
            lane._conn = None
            conn = await asyncio.wait_for(lane._connect(), self._timeout)
            lane._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:  # failed or cancelled mid-call: never reuse
            self._lane._drop()
