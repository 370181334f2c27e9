"""Storage URLs for tests that run `qml` processes: one isolated store per test
on each available backend (SQLite always; PostgreSQL and Redis when their
modules exist and their servers answer, failing instead of skipping under
QML_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from uuid import uuid4

from ..conftest import POSTGRES_DSN, REDIS_URL, require_service


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def backend_urls(tmp_path: Path) -> dict[str, str]:
    """backend name -> storage URL of a fresh, isolated store."""
    tag = uuid4().hex[:12]
    urls = {"sqlite": f"sqlite:///{tmp_path / f'qml-{tag}.db'}"}
    if _has("qml.storage.postgres"):
        dsn = require_service("PostgreSQL", POSTGRES_DSN, 5432)
        urls["postgres"] = f"{dsn}?qml_schema=t_{tag}"
    if _has("qml.storage.redis"):
        url = require_service("Redis", REDIS_URL, 6379)
        urls["redis"] = f"{url}?key_prefix=t{tag}"
    return urls


def available_backends() -> list[str]:
    """Backends whose modules exist (services are checked by ``backend_urls``)."""
    return ["sqlite"] + [
        n
        for n, m in (("postgres", "qml.storage.postgres"), ("redis", "qml.storage.redis"))
        if _has(m)
    ]
