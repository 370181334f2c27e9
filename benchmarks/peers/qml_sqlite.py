"""qml on its embedded SQLite storage (WAL, synchronous=FULL)."""

from __future__ import annotations

import os

from harness.adapter import scratch_path  # type: ignore[import-not-found]
from qml_common import QmlBase, noop, registry  # noqa: F401  (registry: the worker's app)

PATH = scratch_path("qml_bench.db")


class QmlSqlite(QmlBase):
    backend = "sqlite"
    url = f"sqlite:///{PATH}"
    notes = QmlBase.notes + "; WAL, synchronous=FULL; cross-process wake-up by data_version"

    def _remove(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(PATH + suffix):
                os.remove(PATH + suffix)

    async def setup(self) -> None:
        self._remove()
        await self.open()

    async def reset(self) -> None:
        await self.storage.close()
        self._remove()
        await self.open()


ADAPTER = QmlSqlite()
