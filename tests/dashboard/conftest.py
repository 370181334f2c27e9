"""Fixtures of the dashboard tests.

``storage`` (from ``tests/conftest.py``) runs each test on memory and sqlite,
and on postgres and redis when those services are reachable. ``client`` is an
httpx client talking to the dashboard app in-process from a loopback address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from qml.dashboard import create_app
from qml.storage.base import Storage

BASE_URL = "http://127.0.0.1:8765"


def make_client(app: Any, *, client_addr: str = "127.0.0.1", **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_addr, 50123))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, **kwargs)


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(create_app(storage)) as c:
        yield c


@pytest.fixture(params=["memory", "sqlite"])
async def local_storage(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Storage]:
    """An opened memory or SQLite storage (for tests whose subject is not storage)."""
    if request.param == "memory":
        from qml.storage.memory import MemoryStorage

        opened: Storage = MemoryStorage()
    else:
        from qml.storage.sqlite import SqliteStorage

        opened = SqliteStorage(str(tmp_path / "dash.db"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def memory_storage() -> AsyncIterator[Storage]:
    from qml.storage.memory import MemoryStorage

    opened = MemoryStorage()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
