"""LeaseKeeper: renews a server's leases from a thread and event loop of its own.

Jobs written as ``async def`` run on the server's event loop. One that blocks
that loop (CPU-bound code, a blocking call) would also stop renewals made on
it: its lease would expire and another server would run the job again while it
still runs. The keeper renews from its own thread over a storage of its own
(:meth:`~qml.storage.base.Storage.sibling`), so a lease lasts as long as its
holder's process lives and is not paused, however long the job keeps the loop.
A pure-Python loop that holds the GIL still lets this thread run at every
interpreter switch (every 5 ms by default).

The keeper only talks to storage. What the replies mean (a lost lease stops
its job, a cancellation request is relayed) is applied on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import StorageError
from ..storage.base import Storage
from ..storage.requests import HeartbeatReply

log = logging.getLogger("qml.server")


class Held(Protocol):
    """What the keeper needs of a held job (the server's ``Slot``)."""

    @property
    def job_id(self) -> str: ...

    @property
    def token(self) -> str: ...

    def renewal_requested(self) -> bool: ...

    def clear_renewal_request(self) -> None: ...


#: ``apply(slots, replies, sent)``: called on the server's loop with the slots
#: sent, their replies in the same order and the monotonic time of sending.
Apply = Callable[[Sequence[Held], list[HeartbeatReply], float], None]


class LeaseKeeper:
    """Every ``interval`` seconds (or sooner when a job asks for a heartbeat),
    renews the leases that ``snapshot()`` returns in one round trip over
    ``storage`` from a daemon thread, and hands the replies to ``apply`` on
    ``loop``."""

    def __init__(
        self,
        storage: Storage,
        *,
        owned: bool,
        interval: float,
        lease_seconds: float,
        snapshot: Callable[[], Sequence[Held]],
        apply: Apply,
        loop: asyncio.AbstractEventLoop,
        name: str = "qml-leases",
    ) -> None:
        self.storage = storage
        self.owned = owned  # a sibling with connections of its own: opened and closed here
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._snapshot = snapshot
        self._apply = apply
        self._loop = loop
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = threading.Event()
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        #: Round trips made (diagnostics, tests).
        self.renewals = 0

    def start(self) -> None:
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop renewing and close the keeper's own storage; returns once done."""
        self._stopping.set()
        loop, wake = self._own_loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(wake.set)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)

    # ------------------------------------------------------------------ thread
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:  # pragma: no cover - _run catches what it can
            log.exception("lease renewals stopped", extra={"action": "heartbeat_error"})

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        self._own_loop = asyncio.get_running_loop()
        try:
            last = time.monotonic()
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(self.interval, 0.25))
                if self._stopping.is_set():
                    break
                slots = self._snapshot()
                now = time.monotonic()
                if now - last < self.interval and not any(s.renewal_requested() for s in slots):
                    continue
                # After a failed round trip, try again soon while the leases may hold.
                ok = await self.renew(slots)
                last = now if ok else now - self.interval + min(1.0, self.interval / 2)
        finally:
            if self.owned:
                with contextlib.suppress(Exception):
                    await self.storage.close()

    async def renew(self, slots: Sequence[Held]) -> bool:
        """One renewal round trip for ``slots``; replies go to the server's loop.
        False when the round trip failed."""
        if not slots:
            return True
        for s in slots:
            s.clear_renewal_request()
        sent = time.monotonic()
        try:
            replies = await self.storage.extend_leases(
                [(s.job_id, s.token) for s in slots], self.lease_seconds
            )
        except StorageError as exc:
            log.warning(
                "lease renewal failed (%s); retrying", exc, extra={"action": "heartbeat_error"}
            )
            return False
        except Exception:
            # A storage bug must not end renewals: every held job would be
            # recovered and run twice.
            log.exception("lease renewal failed", extra={"action": "heartbeat_error"})
            return False
        self.renewals += 1
        with contextlib.suppress(RuntimeError):  # the server's loop has closed
            self._loop.call_soon_threadsafe(self._apply, slots, replies, sent)
        return True
