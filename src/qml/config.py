"""Server configuration."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import ConfigurationError
from .retry import RetryPolicy
from .states import Retention


def default_server_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ServerConfig:
    """Settings of one :class:`~qml.BackgroundJobServer` (SPEC §4).

    Durations are seconds. ``queues`` are in priority order: a server takes
    jobs from the first queue before the second.
    """

    server_name: str = field(default_factory=default_server_name)
    worker_count: int = 10
    queues: list[str] = field(default_factory=lambda: ["default"])
    fetch_batch_size: int = 10
    polling_interval: float = 1.0
    job_timeout: float | None = None
    lease_seconds: float = 30.0
    heartbeat_interval: float | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown_timeout: float = 25.0
    enable_scheduler: bool = True
    scheduler_interval: float = 1.0
    enable_recurring: bool = True
    recurring_poll_interval: float = 1.0
    recurring_claim_seconds: float = 30.0
    enable_cleanup: bool = True
    cleanup_interval: float = 60.0
    cleanup_batch_size: int = 1000
    succeeded_ttl: timedelta = timedelta(hours=24)
    failed_ttl: timedelta = timedelta(days=7)
    deleted_ttl: timedelta = timedelta(days=7)
    max_crashes: int = 3
    crash_backoff: float = 1.0
    unknown_method_window: float = 3600.0
    flush_interval: float = 0.002
    server_heartbeat_interval: float = 10.0
    cancel_grace: float = 10.0

    def __post_init__(self) -> None:
        if not self.server_name:
            raise ConfigurationError("server_name must not be empty")
        if self.worker_count < 1:
            raise ConfigurationError("worker_count must be >= 1")
        if not self.queues or not all(isinstance(q, str) and q for q in self.queues):
            raise ConfigurationError("queues must be a non-empty list of names")
        if self.fetch_batch_size < 1:
            raise ConfigurationError("fetch_batch_size must be >= 1")
        if self.lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive")
        hb = self.effective_heartbeat_interval
        if hb <= 0 or hb > self.lease_seconds / 3:
            raise ConfigurationError("heartbeat_interval must be at most a third of lease_seconds")
        for name in (
            "polling_interval",
            "scheduler_interval",
            "recurring_poll_interval",
            "cleanup_interval",
            "shutdown_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigurationError("job_timeout must be positive or None")
        if self.recurring_claim_seconds <= self.recurring_poll_interval:
            raise ConfigurationError("recurring_claim_seconds must exceed recurring_poll_interval")
        if self.max_crashes < 1:
            raise ConfigurationError("max_crashes must be >= 1")

    @property
    def effective_heartbeat_interval(self) -> float:
        """Lease renewal interval: the configured one, or a third of the lease."""
        return self.heartbeat_interval or self.lease_seconds / 3

    @property
    def retention(self) -> Retention:
        return Retention(self.succeeded_ttl, self.failed_ttl, self.deleted_ttl)
