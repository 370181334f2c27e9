"""Fixtures for the server tests (the backend-parametrized ``storage`` fixture
lives in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from qml import MemoryStorage, WorkerRegistry


@pytest.fixture
def memory() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def registry(memory: MemoryStorage) -> WorkerRegistry:
    return WorkerRegistry(memory)
