"""Background work as small periodic services, each testable one tick at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from ..errors import StorageError

log = logging.getLogger("qml.server")

#: Seconds a service's tick in progress may take to end when the server stops.
STOP_GRACE = 2.0


class PeriodicService(ABC):
    """Runs :meth:`run_once` every ``interval`` seconds until stopped.

    A failing tick is logged and retried on the next one; it never kills
    the server.
    """

    name = "service"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False

    @abstractmethod
    async def run_once(self) -> None:
        """One tick of work."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"qml-{self.name}")

    def poke(self) -> None:
        """Run the next tick now."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopped:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except StorageError as exc:  # storage unreachable: one line, no traceback
                log.warning(
                    "%s tick failed (%s); retrying next tick",
                    self.name,
                    exc,
                    extra={"action": f"{self.name}_error"},
                )
            except Exception:  # a bug: show where
                log.exception(
                    "%s tick failed; retrying next tick",
                    self.name,
                    extra={"action": f"{self.name}_error"},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began: a long tick should end between its steps."""
        return self._stopped

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let the tick in progress end (a storage write cancelled on the wire may
        still be applied, unseen by the service), then end the loop; cancel only a
        tick that takes longer than ``grace`` seconds."""
        self._stopped = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            done, _ = await asyncio.wait({task}, timeout=grace)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
