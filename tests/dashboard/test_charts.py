"""Overview charts: the server-rendered SVG history chart and the throughput
figures the live (canvas) chart is fed with over the change feed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from qml.dashboard import create_app
from qml.dashboard.hub import snapshot
from qml.dashboard.pages import CHART_H, history_chart
from qml.job import Job
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, MinuteStat, Outcome

from .conftest import make_client
from .support import make_failed


async def finish_some(storage: Storage, succeeded: int, failed: int) -> None:
    await storage.enqueue_many(Job("app.ok", {"i": i}, queue="chart") for i in range(succeeded))
    leases = await storage.claim(ClaimRequest("s", ["chart"], limit=succeeded))
    assert all(await storage.finish([Outcome.succeed(lease, None, ttl=3600) for lease in leases]))
    if failed:
        await make_failed(storage, failed, queue="chart-f", error=ErrorInfo("E", "x"))


def test_history_chart_stacks_and_scales_bars() -> None:
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    history = [
        MinuteStat(t0 + timedelta(minutes=i), ok, fail)
        for i, (ok, fail) in enumerate([(0, 0), (6, 2), (3, 0), (1, 1)])
    ]
    chart = history_chart(history, 1)
    assert chart["peak"] == 8
    bars = chart["bars"]
    assert len(bars) == 4
    assert bars[0]["ok_h"] == bars[0]["fail_h"] == 0
    tallest = bars[1]
    assert tallest["ok_h"] + tallest["fail_h"] == CHART_H
    assert tallest["fail_y"] == CHART_H - tallest["fail_h"]
    assert tallest["ok_y"] == tallest["fail_y"] - tallest["ok_h"]
    assert tallest["label"] == "12:01: 6 succeeded, 2 failed"
    wide = history_chart(history, 2)
    assert [b["label"] for b in wide["bars"]] == [
        "12:00: 6 succeeded, 2 failed",
        "12:02: 4 succeeded, 1 failed",
    ]


async def test_overview_renders_the_history_chart(local_storage: Storage) -> None:
    await finish_some(local_storage, 4, 2)
    async with make_client(create_app(local_storage)) as client:
        page = (await client.get("/")).text
        svg = page[page.index('data-testid="history-chart"') : page.index("</svg>")]
        assert len(re.findall(r'<rect class="ok"', svg)) == 1
        assert len(re.findall(r'<rect class="fail"', svg)) == 1
        assert "4 succeeded, 2 failed" in svg
        assert 'data-testid="history-ok">4<' in page
        assert 'data-testid="live-chart"' in page
        for window, step in ((360, 5), (1440, 15), (7, 1)):
            r = await client.get("/", params={"history": window})
            assert r.status_code == 200
            assert f"({step} min per bar)" in r.text
            assert "4 succeeded, 2 failed" in r.text


async def test_feed_snapshot_carries_per_minute_throughput(local_storage: Storage) -> None:
    first = await snapshot(local_storage)
    await finish_some(local_storage, 3, 1)
    second = await snapshot(local_storage)
    t1, t2 = first["throughput"], second["throughput"]
    assert set(t2) == {
        "minute",
        "succeeded",
        "failed",
        "prev_minute",
        "prev_succeeded",
        "prev_failed",
    }

    def done(t: dict[str, int]) -> int:
        return t["succeeded"] + t["prev_succeeded"]

    assert done(t2) - done(t1) == 3
    assert t2["failed"] + t2["prev_failed"] - t1["failed"] - t1["prev_failed"] == 1
    assert t2["prev_minute"] < t2["minute"]
