"""The WebSocket change feed and DashboardServer, over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from qml.dashboard import DashboardServer, TokenAuth
from qml.job import Job
from qml.storage.base import Storage

from .support import SECRET_ARGS, SECRET_VALUES

TICK = 0.05


@pytest.fixture
async def served(local_storage: Storage) -> AsyncIterator[DashboardServer]:
    server = DashboardServer(local_storage, tick=TICK)
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop()


def ws_url(server: DashboardServer) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


async def next_stats(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["op"] == "stats":
            return dict(message)


async def test_feed_pushes_counts_when_storage_changes(
    served: DashboardServer, local_storage: Storage
) -> None:
    async with connect(ws_url(served), origin=served.url) as ws:  # type: ignore[arg-type]
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["op"] == "hello"
        first = await next_stats(ws)
        assert first["counts"]["enqueued"] == 0
        await local_storage.enqueue(Job("app.live", SECRET_ARGS, queue="live"))
        second = await next_stats(ws)
        assert second["counts"]["enqueued"] == 1
        assert second["queues"] == {"live": {"enqueued": 1}}
        assert second["seq"] > first["seq"]
        for secret in SECRET_VALUES:
            assert secret not in json.dumps(second)


async def test_one_storage_read_per_tick_whatever_the_number_of_clients(
    served: DashboardServer,
) -> None:
    from qml.dashboard.app import dashboard_context

    hub = dashboard_context(served.app).hub

    async def reads_during(clients: int, seconds: float = 0.5) -> int:
        sockets = [await connect(ws_url(served)).__aenter__() for _ in range(clients)]
        try:
            for ws in sockets:
                await next_stats(ws)
            before = hub.reads
            await asyncio.sleep(seconds)
            assert hub.subscribers == clients
            return hub.reads - before
        finally:
            for ws in sockets:
                await ws.close()

    one = await reads_during(1)
    twenty = await reads_during(20)
    assert one >= 3
    assert twenty <= one * 1.5 + 2, (one, twenty)


async def test_messages_are_coalesced(served: DashboardServer, local_storage: Storage) -> None:
    async with connect(ws_url(served)) as ws:
        await next_stats(ws)
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = 0

        async def burst() -> None:
            for i in range(40):
                await local_storage.enqueue_many([Job("app.burst", {"i": i})] * 1)
                await asyncio.sleep(0.005)

        task = asyncio.create_task(burst())
        last: dict[str, Any] = {}
        while not task.done() or last.get("counts", {}).get("enqueued") != 40:
            try:
                last = await next_stats(ws, timeout=2.0)
            except TimeoutError:
                break
            received += 1
        await task
        elapsed = loop.time() - start
        assert last["counts"]["enqueued"] == 40
        assert received <= elapsed / TICK + 2


async def test_foreign_origin_websocket_is_refused(served: DashboardServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(served), origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


async def test_remote_client_is_refused_on_pages_api_and_websocket(
    local_storage: Storage,
) -> None:
    # serve on a second loopback address and count only 127.0.0.1 as local
    server = DashboardServer(local_storage, local_networks=["127.0.0.1/32"])
    await server.start("127.0.0.2:0")
    try:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as c:
            for path in ("/", "/jobs", "/api/v1/jobs", "/api/v1/stats", "/metrics"):
                assert (await c.get(path)).status_code == 403, path
            assert (await c.get("/healthz")).status_code == 200
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server), local_addr=("127.0.0.2", 0)):
                pass
        assert info.value.response.status_code == 403
    finally:
        await server.stop()


async def test_token_protects_the_websocket(local_storage: Storage) -> None:
    async with DashboardServer(local_storage, auth=TokenAuth("tok-123456")) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server)):
                pass
        assert info.value.response.status_code == 403
        headers = {"Authorization": "Bearer tok-123456"}
        async with connect(ws_url(server), additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == "hello"
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.get("/api/v1/stats")).status_code == 401
            assert (await c.get("/api/v1/stats", headers=headers)).status_code == 200


async def test_server_start_stop_and_base_path(local_storage: Storage) -> None:
    server = DashboardServer(local_storage, base_path="/qml")
    await server.start("127.0.0.1:0")
    assert server.url.endswith("/qml")
    async with httpx.AsyncClient() as c:
        assert (await c.get(server.url + "/")).status_code == 200
        assert (await c.get(server.url + "/api/v1/stats")).status_code == 200
    with pytest.raises(RuntimeError):
        await server.start("127.0.0.1:0")
    await server.stop()
    await server.stop()
    async with httpx.AsyncClient() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(server.url + "/")
