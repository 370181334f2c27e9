"""Wake-up signal: LISTEN on a dedicated connection, waiters woken on NOTIFY.

The job table's triggers NOTIFY the installation's channel when jobs become
Enqueued (insert, release, activation, recovery, requeue) and ``resume_queue``
notifies too; every process listening wakes its idle fetchers at once.
Notifications sent by this storage's own pool connections are ignored: the
storage wakes its local waiters itself right after such a write. Polling
stays the fallback: a waiter also returns when its timeout passes. The
listener reconnects by itself, and wakes every waiter after a reconnect
(notifications may have been missed meanwhile).

The same connection listens on the storage's hand-off channel too, where an
enqueue sends a job it claimed for one of this storage's parked waiters
(``PostgresStorage.wait_for_claim``); those notifications are never ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

logger = logging.getLogger("qml.storage.postgres")


class Waiters:
    """Futures of the tasks waiting for work (one event loop)."""

    def __init__(self) -> None:
        self._items: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, fut: asyncio.Future[Any]) -> None:
        """Resolve ``fut`` (with None) at the next wake-up."""
        self._items.add(fut)

    def discard(self, fut: asyncio.Future[Any]) -> None:
        self._items.discard(fut)

    async def wait(self, timeout: float) -> bool:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.add(fut)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
            return True
        except TimeoutError:
            return False
        finally:
            self._items.discard(fut)

    def wake_all(self) -> None:
        items, self._items = self._items, set()
        for fut in items:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(None)


class Listener:
    """LISTEN on ``channel`` through its own connection, kept alive and reconnected."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection[Any]]],
        channel: str,
        ignore_pids: set[int],
        on_signal: Callable[[], None],
        *,
        hand_channel: str | None = None,
        on_hand: Callable[[str], None] | None = None,
        ping_interval: float = 15.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._connect = connect
        self.channel = channel
        self._ignore = ignore_pids
        self._on_signal = on_signal
        self.hand_channel = hand_channel
        self._on_hand = on_hand
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self._conn: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        #: Notifications from other connections received so far.
        self.received = 0
        #: Successful (re)connections so far.
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def server_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self) -> None:
        """Start the supervisor task; see :meth:`wait_connected` for the first connection."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"qml-{self.channel}")

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    # ------------------------------------------------------------------ internals
    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if pid in self._ignore:
            return
        self.received += 1
        self._on_signal()

    def _handed(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if self._on_hand is not None and isinstance(payload, str):
            self._on_hand(payload)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:  # not a connection dropped earlier
            self._lost.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)
        except Exception:  # already broken: just drop it
            conn.terminate()

    async def _open(self) -> None:
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._notified)
            if self.hand_channel is not None:
                await conn.add_listener(self.hand_channel, self._handed)
            conn.add_termination_listener(self._terminated)
        except BaseException:
            conn.terminate()
            raise
        self._lost.clear()
        self._conn = conn
        self.connections += 1
        self._connected.set()

    async def _supervise(self) -> None:
        backoff = 0.05
        while True:
            if not self.connected or self._lost.is_set():
                await self._drop()
                try:
                    await self._open()
                except Exception as exc:
                    logger.log(
                        logging.WARNING if backoff == 0.05 else logging.DEBUG,
                        "LISTEN connection failed; polling until it is back: %s",
                        exc,
                        extra={"action": "listen_failed", "channel": self.channel},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                backoff = 0.05
                if self.connections > 1:
                    logger.info(
                        "LISTEN connection restored",
                        extra={"action": "listen_restored", "channel": self.channel},
                    )
                    self._on_signal()  # work may have arrived while we were deaf
            try:
                await asyncio.wait_for(self._lost.wait(), self._ping_interval)
            except TimeoutError:
                await self._ping()

    async def _ping(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.fetchval("SELECT 1", timeout=self._ping_interval)
        except Exception:
            self._lost.set()
