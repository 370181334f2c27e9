"""qml: background job processing for Python.

Enqueue jobs (a method name plus JSON arguments) into a storage backend;
worker servers claim and run them with retries, scheduling, recurring
templates and cleanup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .config import ServerConfig
from .errors import (
    ConfigurationError,
    DuplicateJobError,
    InvalidTransitionError,
    JobNotFoundError,
    LeaseLostError,
    MigrationError,
    MissingDependencyError,
    QmlError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
    ValidationError,
    WorkerNotFoundError,
)
from .job import Job, JobState
from .retry import RetryPolicy
from .server import BackgroundJobServer
from .storage import MemoryStorage, Storage, StorageInstance
from .worker import TypedWorker, Worker, WorkerContext, WorkerRegistry, WorkerResult

if TYPE_CHECKING:
    from .dashboard import DashboardServer as DashboardServer
    from .storage.postgres import PostgresConfig as PostgresConfig
    from .storage.postgres import PostgresStorage as PostgresStorage
    from .storage.redis import RedisConfig as RedisConfig
    from .storage.redis import RedisStorage as RedisStorage
    from .storage.sqlite import SqliteStorage as SqliteStorage

_LAZY = {
    "DashboardServer": "qml.dashboard",
    "SqliteStorage": "qml.storage.sqlite",
    "RedisStorage": "qml.storage.redis",
    "RedisConfig": "qml.storage.redis",
    "PostgresStorage": "qml.storage.postgres",
    "PostgresConfig": "qml.storage.postgres",
}


def __getattr__(name: str) -> Any:
    """Backends with optional drivers load on first use (``from qml import
    RedisStorage`` works; they are left out of ``__all__`` so ``import *``
    never needs a driver)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qml' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackgroundJobServer",
    "ConfigurationError",
    "DuplicateJobError",
    "InvalidTransitionError",
    "Job",
    "JobNotFoundError",
    "JobState",
    "LeaseLostError",
    "MemoryStorage",
    "MigrationError",
    "MissingDependencyError",
    "QmlError",
    "RetryPolicy",
    "SerializationError",
    "ServerConfig",
    "Storage",
    "StorageError",
    "StorageInstance",
    "StorageUnavailableError",
    "TypedWorker",
    "ValidationError",
    "Worker",
    "WorkerContext",
    "WorkerNotFoundError",
    "WorkerRegistry",
    "WorkerResult",
]
