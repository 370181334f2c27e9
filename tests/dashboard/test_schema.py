"""Property-based run of the OpenAPI document with schemathesis: no 5xx, responses
match the schema. Bounded (few examples per operation) to stay fast."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from starlette.types import Receive, Scope, Send

from qml.dashboard import create_app
from qml.recurring import schedule_recurring
from qml.storage.memory import MemoryStorage

from .support import CSRF, register_server, seed_states


async def _seed(storage: MemoryStorage) -> None:
    await seed_states(storage)
    await register_server(storage)
    await schedule_recurring(storage, "nightly", "0 0 3 * * *", "app.report")


@pytest.fixture(scope="module")
def api_schema() -> Any:
    storage = MemoryStorage()
    asyncio.run(_seed(storage))
    app = create_app(storage)

    async def from_loopback(scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's test client calls itself "testclient" on host "testserver"
        headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
        headers.append((b"host", b"127.0.0.1:8765"))
        await app({**scope, "client": ("127.0.0.1", 50000), "headers": headers}, receive, send)

    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", from_loopback)


def test_api_conforms_to_its_openapi_document(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers=CSRF)

        check()
