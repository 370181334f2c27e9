"""One shared change feed per dashboard app (DASHBOARD.md P1).

A single hub task reads storage once per tick, whatever the number of open
tabs, and hands each connected client the newest snapshot. A client keeps only
the latest snapshot it has not sent yet, so a slow client never queues a
backlog, and with the default tick it gets at most a few messages a second.
The task runs only while at least one client is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..storage.base import Storage
from ..storage.requests import MinuteStat

log = logging.getLogger("qml.dashboard")

#: Seconds between two storage reads of the hub (also the minimum gap between
#: two messages to one client).
DEFAULT_TICK = 0.5
#: How many published topics (e.g. operations) the hub remembers for new clients.
TOPICS_KEPT = 50


class Subscription:
    """One client's mailbox: per topic (``stats``, ``operation:ID``), the newest
    message not yet delivered. Older undelivered messages of a topic are dropped."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._event = asyncio.Event()

    def offer(self, message: dict[str, Any], topic: str = "stats") -> None:
        self._latest.pop(topic, None)  # re-insert: topics are delivered oldest first
        self._latest[topic] = message
        self._event.set()

    async def next(self) -> dict[str, Any]:
        while not self._latest:
            self._event.clear()
            await self._event.wait()
        topic = next(iter(self._latest))
        return self._latest.pop(topic)


async def snapshot(storage: Storage) -> dict[str, Any]:
    """Counts by state and by queue plus paused queues: what every page shows live."""
    stats = await storage.stats(history_minutes=2)
    paused = await storage.paused_queues()
    zero = MinuteStat(datetime.fromtimestamp(0, UTC), 0, 0)
    prev, cur = [zero, zero, *stats.history][-2:]
    return {
        "op": "stats",
        "counts": {s.value: n for s, n in stats.counts.items()},
        "queues": {
            q: {s.value: n for s, n in c.items() if n} for q, c in sorted(stats.by_queue.items())
        },
        "paused": sorted(paused),
        "total": stats.total,
        # finished per minute (this one and the one before): the browser turns
        # their growth between two messages into a per-second rate
        "throughput": {
            "minute": cur.minute.isoformat(),
            "succeeded": cur.succeeded,
            "failed": cur.failed,
            "prev_minute": prev.minute.isoformat(),
            "prev_succeeded": prev.succeeded,
            "prev_failed": prev.failed,
        },
    }


class ChangeHub:
    """Reads storage once per tick and fans the snapshot out to subscribers."""

    def __init__(
        self,
        storage: Storage,
        *,
        tick: float = DEFAULT_TICK,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self.tick = tick
        #: Called when a read finds a new snapshot, before clients get it
        #: (ends the shared reads of the previous snapshot).
        self.on_change = on_change
        self.reads = 0
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, Any] | None = None
        self._seq = 0
        #: The newest message of each published topic (bounded), replayed to
        #: clients that connect later: a page opened mid-operation catches up.
        self._topics: dict[str, dict[str, Any]] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        for topic, message in self._topics.items():
            sub.offer(message, topic)
        if self._last is not None:
            sub.offer(self._last)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="qml-dashboard-hub")
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if not self._subs:
            await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._last = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Push a message (e.g. operation progress) to every connected client."""
        self._seq += 1
        message = {**message, "seq": self._seq}
        self._topics.pop(topic, None)
        self._topics[topic] = message
        while len(self._topics) > TOPICS_KEPT:
            del self._topics[next(iter(self._topics))]
        for sub in list(self._subs):
            sub.offer(message, topic)

    async def read_once(self) -> dict[str, Any] | None:
        """One tick: read storage; return the snapshot if it changed (and deliver it)."""
        self.reads += 1
        snap = await snapshot(self.storage)
        if self._last is not None and {**self._last, "seq": 0} == {**snap, "seq": 0}:
            return None
        if self.on_change is not None:
            self.on_change()
        self._seq += 1
        snap["seq"] = self._seq
        self._last = snap
        for sub in list(self._subs):
            sub.offer(snap)
        return snap

    async def _run(self) -> None:
        while self._subs:
            try:
                await self.read_once()
            except Exception:  # a storage outage must not kill the feed
                log.warning("dashboard change feed: storage read failed", exc_info=True)
            await asyncio.sleep(self.tick)
