"""``StorageInstance``: build any backend from a config or a URL.

Backends with optional drivers are imported only when asked for, so
``import qml`` needs no extra.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from .base import Storage
from .memory import MemoryStorage

if TYPE_CHECKING:
    from .postgres import PostgresConfig, PostgresStorage
    from .redis import RedisConfig, RedisStorage
    from .sqlite import SqliteStorage

DEFAULT_URL = "sqlite:///qml.db"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and banners)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return url


class StorageInstance:
    """Factories for every backend (SPEC §1)."""

    @staticmethod
    def memory(**kwargs: Any) -> MemoryStorage:
        return MemoryStorage(**kwargs)

    @staticmethod
    def sqlite(path: str = "qml.db", **kwargs: Any) -> SqliteStorage:
        from .sqlite import SqliteStorage

        return SqliteStorage(path, **kwargs)

    @staticmethod
    async def redis(config: RedisConfig | None = None) -> RedisStorage:
        from .redis import RedisStorage

        storage = RedisStorage(config)
        await storage.open()
        return storage

    @staticmethod
    async def postgres(config: PostgresConfig | None = None) -> PostgresStorage:
        from .postgres import PostgresStorage

        storage = PostgresStorage(config)
        await storage.open()
        return storage

    @staticmethod
    async def from_url(url: str | None = None, **kwargs: Any) -> Storage:
        """Open storage for ``memory://``, ``sqlite:///path``, ``redis://…`` or
        ``postgresql://…`` (default: ``$QML_STORAGE_URL`` or ``sqlite:///qml.db``)."""
        url = url or os.environ.get("QML_STORAGE_URL") or DEFAULT_URL
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "memory":
            storage: Storage = MemoryStorage(**kwargs)
        elif scheme == "sqlite":
            from .sqlite import SqliteStorage

            path = sqlite_path(url)
            storage = SqliteStorage(path, **{**sqlite_options(url), **kwargs})
        elif scheme in ("redis", "rediss", "unix"):
            from .redis import RedisConfig, RedisStorage

            storage = RedisStorage(RedisConfig.from_url(url), **kwargs)
        elif scheme in ("postgres", "postgresql"):
            from .postgres import PostgresConfig, PostgresStorage

            storage = PostgresStorage(PostgresConfig.from_url(url), **kwargs)
        else:
            raise ConfigurationError(
                f"unsupported storage URL {mask_url(url)!r}: use memory://, sqlite:///path, "
                "redis://host:port/db or postgresql://user@host/db"
            )
        await storage.open()
        return storage


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative.db`` or ``sqlite:////abs.db`` URL."""
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        raise ConfigurationError(f"sqlite URL needs three slashes: sqlite:///path.db (got {url!r})")
    path = rest[1:]
    if not path:
        raise ConfigurationError("sqlite URL has no file path")
    if path == ":memory:":
        raise ConfigurationError("use memory:// for in-memory storage")
    return path


#: Query-string options of a ``sqlite:///`` URL and their types.
SQLITE_OPTIONS: dict[str, type] = {
    "synchronous": str,
    "busy_timeout": float,
    "poll_interval": float,
}


def sqlite_options(url: str) -> dict[str, Any]:
    """``SqliteStorage`` settings from a URL's query string, e.g.
    ``sqlite:///qml.db?synchronous=NORMAL&busy_timeout=10``."""
    out: dict[str, Any] = {}
    for key, value in url_options(url).items():
        kind = SQLITE_OPTIONS.get(key)
        if kind is None:
            raise ConfigurationError(
                f"unknown sqlite URL option {key!r}: use {', '.join(SQLITE_OPTIONS)}"
            )
        try:
            out[key] = kind(value)
        except ValueError:
            raise ConfigurationError(f"sqlite URL option {key}={value!r} is not a number") from None
    return out


def url_options(url: str) -> dict[str, str]:
    """Query-string options of a storage URL (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
