"""The qml error tree.

Every error qml raises derives from :class:`QmlError`; no driver exception
(sqlite3, asyncpg, redis) escapes the library untranslated::

    QmlError
    ├── ConfigurationError          bad settings, bad cron, bad URL
    ├── MissingDependencyError      an optional extra is not installed
    ├── SerializationError          payload is not JSON or too large
    ├── ValidationError             typed arguments do not validate
    ├── WorkerNotFoundError         no worker registered for a method
    ├── JobNotFoundError            no job with that id
    ├── InvalidTransitionError      the state machine forbids the change
    ├── LeaseLostError              a stale fencing token was used
    ├── DuplicateJobError           a deduplication key already exists
    └── StorageError                the backend failed
        ├── StorageUnavailableError     connection lost / timed out
        └── MigrationError              schema install or upgrade failed
"""

from __future__ import annotations


class QmlError(Exception):
    """Base class of every error raised by qml."""


class ConfigurationError(QmlError):
    """A setting, URL, cron expression or other configuration is invalid."""


class MissingDependencyError(QmlError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is required for this feature: pip install 'qml-jobs[{extra}]'")
        self.package = package
        self.extra = extra


class SerializationError(QmlError):
    """A payload could not be encoded to or decoded from JSON."""


class ValidationError(QmlError):
    """Typed job arguments failed validation."""


class WorkerNotFoundError(QmlError):
    """No worker is registered for a job's method."""

    def __init__(self, method: str) -> None:
        super().__init__(f"no worker registered for method {method!r}")
        self.method = method


class JobNotFoundError(QmlError):
    """No job exists with the given id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class InvalidTransitionError(QmlError):
    """The requested state change is not allowed by the transition table."""


class LeaseLostError(QmlError):
    """The job's lease (fencing token) is no longer held by the caller.

    Raised when a worker whose lease expired, and whose job may have been
    claimed again elsewhere, tries to write that job's state.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease on job {job_id!r} is lost (stale fencing token)")
        self.job_id = job_id


class DuplicateJobError(QmlError):
    """A job with the same deduplication key already exists."""


class StorageError(QmlError):
    """The storage backend failed."""


class StorageUnavailableError(StorageError):
    """The storage backend could not be reached (connection lost or timed out)."""


class MigrationError(StorageError):
    """Installing or upgrading the storage schema failed."""
