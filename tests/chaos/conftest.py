"""Chaos suite: short scenarios run in ``make test``; the full ones are marked
``chaos_full`` and run only under ``QML_CHAOS_FULL=1`` (``make chaos``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qml import Storage, StorageInstance

from ..acceptance.backends import available_backends, backend_urls


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos_full: full-size chaos scenario (make chaos, QML_CHAOS_FULL=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("QML_CHAOS_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="full chaos run: set QML_CHAOS_FULL=1 (make chaos)")
    for item in items:
        if item.get_closest_marker("chaos_full") is not None:
            item.add_marker(skip)


@pytest.fixture(params=available_backends())
async def store(  # backend name, storage URL, open storage
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str, Storage]]:
    url = backend_urls(tmp_path)[request.param]
    s = await StorageInstance.from_url(url)
    try:
        yield request.param, url, s
    finally:
        await s.close()
