"""asyncpg at the boundary: translate its errors and decide what may be retried.

No asyncpg exception leaves qml: :func:`translate` maps each one to a
:class:`~qml.errors.StorageError` subclass (raised ``from`` the original).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg import exceptions as pg

from ...errors import (
    ConfigurationError,
    MigrationError,
    QmlError,
    StorageError,
    StorageUnavailableError,
)

logger = logging.getLogger("qml.storage.postgres")
T = TypeVar("T")
ATTEMPTS = 3

#: A connection of ours: a pool's proxy or a plain connection.
Conn: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

#: Connection lost, server shutting down or overloaded, or timed out.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    pg.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    pg.CannotConnectNowError,
    pg.AdminShutdownError,
    pg.CrashShutdownError,
    pg.TooManyConnectionsError,
    pg.QueryCanceledError,  # statement_timeout
    OSError,
    TimeoutError,
    ConnectionError,
)
#: The statement was rolled back as a whole; running it again is always safe.
_ROLLED_BACK: tuple[type[BaseException], ...] = (pg.TransactionRollbackError,)
#: The schema is missing or older than this qml.
_NO_SCHEMA: tuple[type[BaseException], ...] = (
    pg.UndefinedTableError,
    pg.InvalidSchemaNameError,
    pg.UndefinedObjectError,
    pg.UndefinedFunctionError,
    pg.UndefinedColumnError,
)


def is_unavailable(exc: BaseException) -> bool:
    """The connection was lost or the server could not be reached in time."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # Client-side protocol errors: qml never shares a connection between tasks,
    # so these come from a connection the server closed under our feet.
    if isinstance(exc, pg.InternalClientError):
        return True
    return isinstance(exc, pg.InterfaceError) and not isinstance(exc, pg.ClientConfigurationError)


def is_rolled_back(exc: BaseException) -> bool:
    """Serialization failure or deadlock: nothing was written."""
    return isinstance(exc, _ROLLED_BACK)


def translate(exc: BaseException, action: str) -> QmlError | None:
    """The qml error for a driver exception, or None if ``exc`` is not one."""
    if isinstance(exc, QmlError):
        return None
    if isinstance(exc, pg.ClientConfigurationError):
        return ConfigurationError(f"PostgreSQL connection settings: {exc}")
    if is_unavailable(exc):
        detail = str(exc) or type(exc).__name__
        return StorageUnavailableError(f"PostgreSQL unavailable during {action}: {detail}")
    if isinstance(exc, _NO_SCHEMA):
        return MigrationError(
            f"PostgreSQL schema is missing or outdated ({exc}); run migrate() "
            "or enable auto_migrate"
        )
    if isinstance(exc, pg.PostgresError | pg.InterfaceError | pg.InternalClientError):
        return StorageError(f"PostgreSQL error during {action}: {exc}")
    return None


async def call_with_retry(
    pool: asyncpg.Pool[Any],
    fn: Callable[[Conn], Awaitable[T]],
    action: str,
    *,
    acquire_timeout: float,
    idempotent: bool = False,
    resume: Callable[[Conn], Awaitable[T]] | None = None,
) -> T:
    """Run ``fn`` on a connection of ``pool``, translating driver errors.

    Retried (up to :data:`ATTEMPTS` times): failures to get a connection
    (nothing was sent), statements rolled back by a deadlock or serialization
    failure, and, when ``idempotent``, a connection lost mid-statement.
    ``resume`` replaces ``fn`` after such a loss, for writes that must first
    learn what landed.
    """
    delay = 0.05
    step = fn
    for attempt in range(1, ATTEMPTS + 1):
        sent = False
        try:
            async with pool.acquire(timeout=acquire_timeout) as conn:
                sent = True
                return await step(conn)
        except Exception as exc:
            err = translate(exc, action)
            if err is None:
                raise
            lost = is_unavailable(exc)
            retry = is_rolled_back(exc) or (lost and (not sent or idempotent or resume is not None))
            if attempt == ATTEMPTS or not retry:
                raise err from exc
            if lost and sent and resume is not None:
                step = resume
            logger.warning(
                "retrying %s after %s",
                action,
                err,
                extra={"action": "storage_retry", "operation": action, "attempt": attempt},
            )
            await asyncio.sleep(delay)
            delay *= 4
    raise AssertionError("unreachable")
