"""An idle server starts a new job on the storage's wake-up signal, not on its
polling fallback: with a 60 s polling interval, a job enqueued through another
storage handle (as another process would) starts long before the next poll."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from qml import BackgroundJobServer, Job, ServerConfig, Storage, WorkerRegistry

POLL = 60.0


async def test_idle_server_is_woken_by_an_enqueue_from_elsewhere(
    storage: Storage, make_storage: Callable[..., Awaitable[Storage]]
) -> None:
    producer = storage
    if "multi_process" in storage.capabilities:
        producer = await make_storage()  # a second handle: its signal crosses connections
    registry = WorkerRegistry()
    started = asyncio.Event()

    @registry.job("wake")
    async def wake() -> None:
        started.set()

    config = ServerConfig(
        "idle",
        worker_count=2,
        polling_interval=POLL,
        scheduler_interval=POLL,
        enable_recurring=False,
        enable_cleanup=False,
        server_heartbeat_interval=POLL,
    )
    async with BackgroundJobServer(config, storage, registry):
        # let the server finish its first (empty) claim and go idle on the wake-up wait
        await asyncio.sleep(0.5)
        await producer.enqueue(Job("wake"))
        # a poll would come only after 60 s; the wake-up signal must start it well before
        await asyncio.wait_for(started.wait(), POLL / 4)
    assert started.is_set()
