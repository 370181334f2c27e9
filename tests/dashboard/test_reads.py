"""Storage calls of the dashboard: counted, timed, and shared between live tabs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import replace
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from qml.dashboard import DashboardServer, create_app
from qml.dashboard.app import dashboard_context
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import JobQuery

from .conftest import make_client
from .support import seed_states

#: The hub never ticks on its own in these tests: the test drives each tick.
NO_TICK = 3600.0
TIMING = re.compile(r'^storage;dur=(\d+\.\d+);desc="(\d+) calls[^"]*", app;dur=(\d+\.\d+)$')


class Tab:
    """One open page, doing what qml.js does: follow the feed and refetch the
    page fragment whenever the counts change."""

    def __init__(self, ws: ClientConnection, http: httpx.AsyncClient, path: str) -> None:
        self.ws = ws
        self.http = http
        self.path = path
        self.digest: str | None = None
        self.fragments: asyncio.Queue[str] = asyncio.Queue()

    async def run(self) -> None:
        while True:
            msg: dict[str, Any] = json.loads(await self.ws.recv())
            if msg["op"] != "stats":
                continue
            digest = json.dumps([msg["counts"], msg["queues"], msg["paused"]], sort_keys=True)
            changed = self.digest is not None and digest != self.digest
            self.digest = digest
            if changed:
                sep = "&" if "?" in self.path else "?"
                response = await self.http.get(self.path + sep + "fragment=1")
                assert response.status_code == 200
                self.fragments.put_nowait(response.text)
            else:
                self.fragments.put_nowait("")


async def calls_over_ticks(storage: Storage, *, tabs: int, path: str, ttl: float = 60.0) -> int:
    """Storage calls of the dashboard while ``tabs`` tabs follow 4 changes."""
    server = DashboardServer(storage, tick=NO_TICK, shared_read_ttl=ttl)
    await server.start("127.0.0.1:0")
    ctx = dashboard_context(server.app)
    ws_url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url))
        open_tabs = []
        for _ in range(tabs):
            ws = await stack.enter_async_context(connect(ws_url))
            assert json.loads(await ws.recv())["op"] == "hello"
            open_tabs.append(Tab(ws, http, path))
        runners = [asyncio.create_task(t.run()) for t in open_tabs]
        try:
            for t in open_tabs:  # the first snapshot sets each tab's digest
                assert await asyncio.wait_for(t.fragments.get(), 30) == ""
            before = ctx.storage_calls.total
            for tick in range(4):
                job_id = await storage.enqueue(Job("app.reads", {"tick": tick}))
                enqueued = await storage.count(JobState.ENQUEUED)
                assert await ctx.hub.read_once() is not None
                for t in open_tabs:
                    fragment = await asyncio.wait_for(t.fragments.get(), 30)
                    # a shared read is never one from before the change
                    if path.startswith("/jobs"):
                        assert f'data-job-id="{job_id}"' in fragment
                    else:
                        assert f'data-count="enqueued">{enqueued}<' in fragment
            return ctx.storage_calls.total - before
        finally:
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            await stack.aclose()
            await server.stop()


@pytest.mark.parametrize("path", ["/", "/jobs?state=enqueued"])
async def test_storage_reads_per_tick_stay_flat_with_the_number_of_tabs(
    local_storage: Storage, path: str
) -> None:
    one = await calls_over_ticks(local_storage, tabs=1, path=path)
    twenty = await calls_over_ticks(local_storage, tabs=20, path=path)
    # 4 ticks: the hub's reads plus one read per query of the page per tick
    assert one > 4
    assert twenty <= one + 2, (one, twenty)


async def test_without_sharing_every_tab_reads_storage(local_storage: Storage) -> None:
    # the same run with shared reads turned off: the load grows with the tabs,
    # which is what the shared reads prevent
    one = await calls_over_ticks(local_storage, tabs=1, path="/jobs", ttl=0.0)
    five = await calls_over_ticks(local_storage, tabs=5, path="/jobs", ttl=0.0)
    assert five >= one + 4 * 4 * 2, (one, five)


async def test_storage_calls_are_exposed_on_metrics(local_storage: Storage) -> None:
    async with make_client(create_app(local_storage)) as c:
        assert (await c.get("/jobs")).status_code == 200
        assert (await c.get("/jobs?state=failed")).status_code == 200
        text = (await c.get("/metrics")).text
    found = dict(re.findall(r'^qml_dashboard_storage_calls_total\{op="(\w+)"\} (\S+)$', text, re.M))
    assert float(found["list_jobs"]) == 2.0
    # two pages (one stats read each) and the metrics scrape itself
    assert float(found["stats"]) == 3.0


async def test_pages_carry_a_server_timing_header(local_storage: Storage) -> None:
    await local_storage.enqueue(Job("app.timed", {}))
    async with make_client(create_app(local_storage)) as c:
        page = await c.get("/jobs?state=enqueued")
        fragment = await c.get("/jobs?state=enqueued&fragment=1")
        api = await c.get("/api/v1/jobs")
    for response, calls in ((page, 2), (fragment, 2), (api, 1)):
        match = TIMING.match(response.headers["server-timing"])
        assert match is not None, response.headers["server-timing"]
        storage_ms, n, total_ms = float(match[1]), int(match[2]), float(match[3])
        assert n == calls
        assert 0.0 <= storage_ms <= total_ms


async def test_a_change_made_through_the_dashboard_ends_shared_reads(
    local_storage: Storage,
) -> None:
    job_id = await local_storage.enqueue(Job("app.shared", {}))
    async with make_client(create_app(local_storage)) as c:
        first = await c.get("/jobs?state=enqueued&fragment=1")
        assert f'data-job-id="{job_id}"' in first.text
        response = await c.post(f"/api/v1/jobs/{job_id}:delete", headers={"X-QML-Request": "1"})
        assert response.status_code == 200
        second = await c.get("/jobs?state=enqueued&fragment=1")
        assert f'data-job-id="{job_id}"' not in second.text


async def test_filtered_lists_follow_cursors_through_every_state(storage: Storage) -> None:
    # the listing reads one scan per state and merges them: the pages must be
    # exactly the matching jobs, newest first, however the filters combine
    await seed_states(storage, queue="work")
    await seed_states(storage, queue="other")
    everything = []
    cursor = None
    while True:
        page = await storage.list_jobs(JobQuery(limit=1000, cursor=cursor))
        everything += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    queries = [
        JobQuery(queue="work", limit=2),
        JobQuery(queue="work", states=frozenset({JobState.PROCESSING}), limit=1),
        JobQuery(method="app.work1", limit=1),
        JobQuery(states=frozenset({JobState.PROCESSING, JobState.FAILED}), limit=2),
        JobQuery(queue="other", method="app.work0", limit=1),
        JobQuery(queue="work", limit=3, ascending=True),
    ]
    for q in queries:
        expected = [
            j.id
            for j in sorted(everything, key=lambda j: j.id, reverse=not q.ascending)
            if (q.queue is None or j.queue == q.queue)
            and (q.method is None or j.method == q.method)
            and (q.states is None or j.state in q.states)
        ]
        got: list[str] = []
        cursor = None
        while True:
            page = await storage.list_jobs(replace(q, cursor=cursor))
            assert len(page.items) <= q.limit
            got += [j.id for j in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert got == expected, q
        assert expected, q
