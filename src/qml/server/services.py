"""The periodic services a server runs beside its workers."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from .. import __version__
from ..config import ServerConfig
from ..storage.base import Storage
from ..storage.requests import RecoverRequest, ServerInfo
from .service import PeriodicService

log = logging.getLogger("qml.server")


class Scheduler(PeriodicService):
    """Activates due Scheduled / AwaitingRetry jobs and recovers expired leases."""

    name = "scheduler"

    def __init__(self, storage: Storage, config: ServerConfig) -> None:
        super().__init__(config.scheduler_interval)
        self.storage = storage
        self.recover = RecoverRequest(
            max_crashes=config.max_crashes,
            crash_backoff=config.crash_backoff,
            failed_ttl=config.failed_ttl.total_seconds(),
        )

    async def run_once(self) -> None:
        recovered = await self.storage.recover_expired(self.recover)
        if recovered:
            log.warning(
                "recovered %d job(s) whose worker stopped renewing its lease",
                len(recovered),
                extra={"action": "recover_expired", "job_ids": recovered[:20]},
            )
        while not self.stopping and await self.storage.activate_due(limit=1000) >= 1000:
            pass


class CleanupWorker(PeriodicService):
    """Deletes expired final jobs in bounded batches, and prunes bookkeeping."""

    name = "cleanup"

    def __init__(self, storage: Storage, config: ServerConfig, max_batches: int = 100) -> None:
        super().__init__(config.cleanup_interval)
        self.storage = storage
        self.batch_size = config.cleanup_batch_size
        self.max_batches = max_batches
        self.deleted_total = 0

    async def run_once(self) -> None:
        for _ in range(self.max_batches):
            if self.stopping:
                return
            n = await self.storage.delete_expired(limit=self.batch_size)
            self.deleted_total += n
            if n < self.batch_size:
                break
        await self.storage.prune()


class ServerRegistryService(PeriodicService):
    """Keeps this server's entry in the storage's server registry fresh."""

    name = "server_registry"

    def __init__(
        self, storage: Storage, config: ServerConfig, busy: Callable[[], list[str]]
    ) -> None:
        super().__init__(config.server_heartbeat_interval)
        self.storage = storage
        self.config = config
        self.busy = busy
        self.info = ServerInfo(
            id=config.server_name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=list(config.queues),
            worker_count=config.worker_count,
            version=__version__,
        )

    async def run_once(self) -> None:
        current = self.busy()
        self.info.busy = len(current)
        self.info.current_jobs = current[:100]
        await self.storage.heartbeat_server(self.info)
        await self.storage.prune_servers(dead_after=max(60.0, 6 * self.interval))
