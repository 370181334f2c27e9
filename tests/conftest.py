"""Fixtures shared by the whole test tree.

* ``postgres_dsn`` / ``redis_url``: the address of a test service, after a fast
  connect probe (cached for the session). An absent service skips the test,
  or fails it when ``QML_REQUIRE_SERVICES=1``.
* ``make_storage``: a factory of opened storages for one backend, parametrized
  over ``memory``, ``sqlite``, ``postgres`` and ``redis`` (a backend is listed
  only once its module exists). Each test gets its own store: a fresh SQLite
  file, PostgreSQL schema or Redis key prefix, removed afterwards.
* ``storage``: one opened storage from ``make_storage``, closed after the test.
* ``requires(storage, *caps)`` and the ``@pytest.mark.requires(*caps)`` marker:
  the only way a backend may skip a contract test, by lacking a capability.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import uuid4

import pytest

from qml.storage.base import Storage
from qml.storage.memory import MemoryStorage

POSTGRES_DSN = os.environ.get("QML_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("QML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_BACKEND_MODULES = {
    "sqlite": "qml.storage.sqlite",
    "postgres": "qml.storage.postgres",
    "redis": "qml.storage.redis",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*capabilities): skip on a storage backend lacking one of the "
        "qml.storage.base.CAP_* capabilities",
    )


# ---------------------------------------------------------------------- services
def services_required() -> bool:
    """Whether an absent PostgreSQL or Redis must fail tests instead of skipping them."""
    return os.environ.get("QML_REQUIRE_SERVICES", "") == "1"


_probes: dict[tuple[str, int], str | None] = {}


def _probe(url: str, default_port: int) -> str | None:
    """None when a TCP connection to the URL's host opens, else why not (cached)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    key = (host, port)
    if key not in _probes:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                _probes[key] = None
        except OSError as exc:
            _probes[key] = f"{host}:{port} is unreachable ({exc})"
    return _probes[key]


def require_service(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if the service answers; else skip (or fail when required)."""
    problem = _probe(url, default_port)
    if problem is not None:
        if services_required():
            pytest.fail(f"{name} is required (QML_REQUIRE_SERVICES=1) but {problem}", pytrace=False)
        pytest.skip(f"{name} not available: {problem} (QML_REQUIRE_SERVICES=1 makes this fail)")
    return url


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the test PostgreSQL (user postgres, trust auth, database ``test``)."""
    return require_service("PostgreSQL", POSTGRES_DSN, 5432)


@pytest.fixture
def redis_url() -> str:
    """URL of the test Redis."""
    return require_service("Redis", REDIS_URL, 6379)


# ---------------------------------------------------------------------- capabilities
def requires(storage: Storage, *capabilities: str) -> None:
    """Skip the running test unless ``storage`` declares every capability."""
    missing = [c for c in capabilities if c not in storage.capabilities]
    if missing:
        pytest.skip(f"{storage.backend_name} backend lacks capability {', '.join(missing)}")


# ---------------------------------------------------------------------- storage factory
def _backend_available(backend: str) -> bool:
    try:
        return importlib.util.find_spec(_BACKEND_MODULES[backend]) is not None
    except ImportError:
        return False


BACKENDS = [pytest.param("memory", id="memory")] + [
    pytest.param(
        name, id=name, marks=[pytest.mark.services] if name in ("postgres", "redis") else []
    )
    for name in ("sqlite", "postgres", "redis")
    if _backend_available(name)
]


class StorageFactory:
    """Opens storages of one backend, each on this test's store or on a fresh one.

    ``await make_storage()`` opens another handle on the test's store (the same
    SQLite file, PostgreSQL schema or Redis prefix; a memory storage cannot be
    shared, so tests needing two handles declare ``multi_process``).
    ``await make_storage(fresh=True)`` opens a new isolated store. Keyword
    arguments go to the storage's constructor.
    """

    def __init__(self, backend: str, tmp_path: Path, service_url: str | None) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._url = service_url
        self._namespace = self._new_namespace()
        self._pending: list[str] = [self._namespace]
        self._handles: list[tuple[Storage, asyncio.AbstractEventLoop, str]] = []

    def _new_namespace(self) -> str:
        tag = uuid4().hex[:12]
        if self.backend == "sqlite":
            return str(self._tmp_path / f"qml-{tag}.db")
        if self.backend == "postgres":
            return f"t_{tag}"
        if self.backend == "redis":
            return f"t{tag}"
        return ""

    def _build(self, namespace: str, kwargs: dict[str, Any]) -> Storage:
        if self.backend == "memory":
            return MemoryStorage(**kwargs)
        module: Any = importlib.import_module(_BACKEND_MODULES[self.backend])
        if self.backend == "sqlite":
            return cast(Storage, module.SqliteStorage(namespace, **kwargs))
        if self.backend == "postgres":
            config = module.PostgresConfig(
                database_url=self._url, schema_name=namespace, min_connections=1, max_connections=4
            )
            return cast(Storage, module.PostgresStorage(config, **kwargs))
        config = module.RedisConfig(url=self._url, key_prefix=namespace)
        return cast(Storage, module.RedisStorage(config, **kwargs))

    async def __call__(self, *, fresh: bool = False, **kwargs: Any) -> Storage:
        """Open a new storage handle (on a new isolated store when ``fresh``)."""
        namespace = self._namespace
        if fresh:
            namespace = self._new_namespace()
            self._pending.append(namespace)
        storage = self._build(namespace, kwargs)
        try:
            await storage.open()
        except BaseException:
            await storage.close()
            raise
        self._handles.append((storage, asyncio.get_running_loop(), namespace))
        return storage

    async def dispose(self, storage: Storage, *, drop: bool = True) -> None:
        """Close ``storage`` and, if it was opened with ``fresh=True`` and ``drop``
        is set, remove its store now (else at :meth:`aclose`)."""
        for item in list(self._handles):
            if item[0] is storage:
                self._handles.remove(item)
                await storage.close()
                namespace = item[2]
                if (
                    drop
                    and namespace != self._namespace
                    and namespace in self._pending
                    and not any(h[2] == namespace for h in self._handles)
                ):
                    self._pending.remove(namespace)
                    await self._drop([namespace])

    async def aclose(self) -> None:
        """Close every handle opened on the running loop, then drop every store."""
        loop = asyncio.get_running_loop()
        for item in list(self._handles):
            if item[1] is loop:
                self._handles.remove(item)
                await item[0].close()
        pending, self._pending = self._pending, []
        await self._drop(pending)

    def finalize(self) -> None:
        """Drop stores left behind, from a helper thread (no event loop is running here)."""
        pending, self._pending = self._pending, []
        if not pending or self.backend not in ("postgres", "redis"):
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._drop(pending))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="qml-test-cleanup")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    async def _drop(self, namespaces: list[str]) -> None:
        """Remove the stores of ``namespaces`` (schemas or key prefixes)."""
        if not namespaces:
            return
        if self.backend == "postgres":
            import asyncpg

            conn = await asyncpg.connect(self._url, timeout=10)
            try:
                for i in range(0, len(namespaces), 10):
                    names = ", ".join(f'"{n}"' for n in namespaces[i : i + 10])
                    await conn.execute(f"DROP SCHEMA IF EXISTS {names} CASCADE")
            finally:
                await conn.close()
        elif self.backend == "redis":
            await self._drop_redis(namespaces)

    async def _drop_redis(self, namespaces: list[str]) -> None:
        """SCAN and DEL the keys under each prefix (or its hash tag ``{prefix}``)."""
        from redis.asyncio import Redis

        assert self._url is not None
        wanted = {n.encode() for n in namespaces}
        width = len(next(iter(wanted)))
        # one prefix: let Redis filter; many: one pass over the keyspace
        pattern = f"*{namespaces[0]}*" if len(namespaces) == 1 else None
        client = Redis.from_url(self._url)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=5000):
                start = 1 if key.startswith(b"{") else 0
                if key[start : start + width] not in wanted:
                    continue
                batch.append(key)
                if len(batch) >= 500:
                    await client.delete(*batch)
                    batch = []
            if batch:
                await client.delete(*batch)
        finally:
            await client.aclose()


@pytest.fixture(params=BACKENDS)
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageFactory]:
    """A :class:`StorageFactory` for one backend; usable from sync and async tests."""
    backend: str = request.param
    url: str | None = None
    if backend == "postgres":
        url = request.getfixturevalue("postgres_dsn")
    elif backend == "redis":
        url = request.getfixturevalue("redis_url")
    factory = StorageFactory(backend, tmp_path, url)
    yield factory
    factory.finalize()


@pytest.fixture
async def storage(
    make_storage: StorageFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Storage]:
    """An opened storage on a store of its own, closed and removed after the test."""
    opened = await make_storage()
    try:
        for marker in request.node.iter_markers("requires"):
            requires(opened, *marker.args)
        yield opened
    finally:
        await make_storage.aclose()
