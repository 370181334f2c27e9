"""Translation of redis-py errors, and small reply helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import StorageError, StorageUnavailableError
from .codec import as_hash

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)


@contextmanager
def translate(op: str) -> Iterator[None]:
    """Turn redis-py (and socket) errors into qml storage errors."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StorageUnavailableError(f"redis {op}: {exc}") from exc
    except RedisError as exc:
        raise StorageError(f"redis {op}: {exc}") from exc


def tokens(n: int) -> str:
    """``n`` random 128-bit tokens as one string of 32-character hex chunks."""
    return os.urandom(16 * n).hex()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def hash_reply(reply: Any) -> dict[bytes, bytes]:
    return reply if isinstance(reply, dict) else as_hash(reply)
