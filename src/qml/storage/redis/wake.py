"""Wake-up signals over Redis pub/sub.

Every script that may make work ready (enqueue, release, recovery,
activation, requeue, resume, a recurring tick) increments the counter
``{P}:wake-gen``; while some storage is registered in ``{P}:waiters`` it
also publishes the new value on ``{P}:wake``, so a busy cluster (nobody
waiting) sends no messages at all. A storage waiting for work registers
and reads the counter in one script (``wait.lua``): whatever was signalled
before that shows in the counter, whatever after it is published. A claim
by the storage unregisters it.

One listener per storage keeps the subscription on its own connection,
resubscribing by itself after Redis restarts, and remembers the highest
generation seen; a waiter is woken by any generation above the one it read.
Scripts also report their generation directly, so a process's own signals
never depend on the pub/sub round trip. Messages lost while the connection
was down are caught up from the counter on resubscription; polling with a
timeout remains the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("qml.storage.redis")


class WakeListener:
    """Follows one prefix's wake-up channel; see the module docstring."""

    def __init__(
        self, client: Redis, channel: str, read_generation: Callable[[], Awaitable[int]]
    ) -> None:
        self._client = client
        self._channel = channel
        self._read_generation = read_generation
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        #: Highest generation seen (-1: not known yet).
        self.seen = -1
        #: Set while subscribed (cleared when the connection is lost).
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="qml-redis-wake")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake_all()

    def observe(self, generation: int) -> None:
        """Record a generation; wake every waiter if it is new."""
        if generation > self.seen:
            self.seen = generation
            self._wake_all()

    async def wait(self, baseline: int, timeout: float) -> bool:
        """Wait for a generation above ``baseline`` (the current one, just read
        from Redis); False on timeout."""
        self.observe(baseline)  # wakes the waiters that started before it
        if self.seen > baseline:  # a newer signal already arrived
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _resync(self, generation: int) -> None:
        if generation < self.seen:  # the counter went back: Redis lost its data
            self.seen = generation
            self._wake_all()
        else:
            self.observe(generation)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # catch up on whatever was signalled while not subscribed
                self._resync(await self._read_generation())
                self.subscribed.set()
                delay = 0.05
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is not None and msg.get("type") == "message":
                        self.observe(int(msg["data"]))
            except asyncio.CancelledError:
                await _close(pubsub)
                raise
            except Exception as exc:  # never let the listener die: polling is the fallback
                expected = isinstance(exc, RedisError | OSError)
                if self.subscribed.is_set() or not expected:
                    log.warning(
                        "redis wake-up subscription lost (%s); reconnecting",
                        exc,
                        exc_info=not expected,
                        extra={"action": "redis_wake_reconnect"},
                    )
                self.subscribed.clear()
                await _close(pubsub)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _close(pubsub: Any) -> None:
    # not in a ``finally``: a coroutine closed by the garbage collector must not await
    with contextlib.suppress(Exception):
        await cast(Callable[[], Awaitable[None]], pubsub.aclose)()
