"""Shared parts of the qml adapters for the peer benchmark harness
(``../shared/bench``). One module per backend (``qml_<backend>.py``) imports it.

The job is a plain async function registered with ``@registry.job`` and
enqueued with its typed ``.enqueue()``, as a user would write it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from harness.adapter import Adapter, record  # type: ignore[import-not-found]

from qml import Storage, StorageInstance, WorkerRegistry

registry = WorkerRegistry()


@registry.job("noop")
async def noop(payload: dict[str, Any]) -> None:
    record(payload)


class QmlBase(Adapter):  # type: ignore[misc]
    name = "qml"
    batch_api = (
        "storage.enqueue_many(noop.build(p) for p in payloads): all or none; one round trip"
        " (PostgreSQL: one transaction, 200 jobs a statement, built while the last is stored)"
    )
    packages = ("qml-jobs", "orjson", "pydantic")
    worker_model = "1 `qml worker` process, 10 slots (asyncio tasks for async jobs)"
    notes = "async job via @registry.job; default lease 30 s, heartbeats and batch acks on"
    loop = "asyncio"  # the worker's event loop (qml worker --loop)
    url = ""
    storage: Storage

    async def open(self) -> None:
        logging.basicConfig(level=logging.WARNING)
        self.storage = await StorageInstance.from_url(self.url)
        registry.storage = self.storage

    async def cleanup(self) -> None:
        await self.storage.close()

    async def enqueue_one(self, payload: dict[str, Any]) -> None:
        await noop.enqueue(payload)

    async def enqueue_batch(self, payloads: list[dict[str, Any]]) -> None:
        await self.storage.enqueue_many(noop.build(p) for p in payloads)

    async def pending(self) -> int:
        from qml import JobState

        return await self.storage.count(JobState.ENQUEUED)

    async def count_completed(self) -> int:
        from qml import JobState

        return await self.storage.count(JobState.SUCCEEDED)

    def worker_command(self, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "qml",
            "worker",
            f"{type(self).__module__}:registry",
            "--storage",
            self.url,
            "--workers",
            str(concurrency),
            "--log-level",
            "warning",
            "--loop",
            self.loop,
        ]
