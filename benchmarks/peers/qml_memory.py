"""qml on MemoryStorage: the queue lives in the harness process, so the server
runs there too, as an asyncio task on the harness's event loop."""

from __future__ import annotations

import resource
import time
from typing import Any

from qml_common import QmlBase, noop, registry  # noqa: F401

from qml import BackgroundJobServer, MemoryStorage, ServerConfig


class _InProc:
    def __init__(self, server: BackgroundJobServer, t_spawn: float) -> None:
        self.server = server
        self.t_spawn = t_spawn


class QmlMemory(QmlBase):
    backend = "memory"
    url = "memory://"
    worker_model = "in-process BackgroundJobServer, 10 slots (same process and loop as the client)"
    notes = "MemoryStorage works in one process: the server is a task on the harness loop"

    async def setup(self) -> None:
        await self.open()

    async def reset(self) -> None:
        self.storage = MemoryStorage()
        registry.storage = self.storage

    async def start_worker(self, concurrency: int, env: dict[str, str], log_path: str) -> Any:
        config = ServerConfig(
            "bench", worker_count=concurrency, enable_cleanup=False, enable_recurring=False
        )
        server = BackgroundJobServer(config, self.storage, registry)
        t = time.monotonic()
        await server.start()
        return _InProc(server, t)

    async def stop_worker(self, handle: _InProc) -> dict[str, Any]:
        await handle.server.stop()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu_s": None,
            "exit": 0,
            "killed": False,
            "note": f"in-process; harness process cpu {ru.ru_utime + ru.ru_stime:.2f}s",
        }


ADAPTER = QmlMemory()
