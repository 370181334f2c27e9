"""The dashboard at scale: Jobs page server time with 1,000,000 jobs, and storage
queries per second with 1 and 20 live tabs while a worker runs.

    python benchmarks/dashboard_scale.py pages --backend sqlite --jobs 1000000
    python benchmarks/dashboard_scale.py pages --backend postgres --jobs 1000000
    python benchmarks/dashboard_scale.py tabs --backend sqlite --seconds 20

``pages`` seeds the jobs through the storage's public operations only
(``enqueue_many`` in batches of 10,000, then ``claim`` + ``finish`` and
``move`` for the other states), then requests each kind of Jobs page
``--repeat`` times through the ASGI app and prints p50 / p95 of the server
time taken from the ``Server-Timing`` header (``app``: whole response,
``storage``: waiting for storage). SQLite runs in a temporary file; PostgreSQL
in its own schema (``qml_schema=qml_dash_bench_<pid>``), dropped afterwards.

``tabs`` serves the dashboard (uvicorn, default 0.5 s tick) while a worker
processes a steady stream of jobs, opens N WebSocket tabs (half on the
Overview, half on the Jobs page) that do what ``qml.js`` does (refetch the page
fragment whenever the counts change), and prints storage calls per second from
the dashboard's own counter, with shared reads on (default) and off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from qml.dashboard import DashboardServer, create_app
from qml.dashboard.app import dashboard_context
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, Outcome

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
METHODS = [
    "app.mail.send_email",
    "app.images.resize",
    "app.billing.charge_card",
    "app.sync.sync_user",
    "app.reports.build_report",
]
#: Jobs of these queues are claimed and finished while seeding; the others stay.
WORKED = ["default", "emails"]
IDLE = ["reports", "low"]
ERRORS = [
    ("TimeoutError", "smtp timeout after {n} s"),
    ("ValueError", "invalid card number for customer {n}"),
    ("ConnectionError", "connection reset by peer (attempt {n})"),
]
DAY = 86400.0
CHUNK = 10_000


# ---------------------------------------------------------------------- storage
@contextlib.asynccontextmanager
async def open_storage(backend: str, pg_url: str) -> AsyncIterator[Storage]:
    if backend == "sqlite":
        from qml.storage.sqlite import SqliteStorage

        with tempfile.TemporaryDirectory(prefix="qml-dash-bench-") as tmp:
            storage: Storage = SqliteStorage(str(Path(tmp) / "bench.db"), synchronous="NORMAL")
            await storage.open()
            try:
                yield storage
            finally:
                await storage.close()
        return
    if backend == "postgres":
        import asyncpg

        from qml.storage.postgres import PostgresStorage

        schema = f"qml_dash_bench_{os.getpid()}"
        sep = "&" if "?" in pg_url else "?"
        storage = PostgresStorage(f"{pg_url}{sep}qml_schema={schema}")
        await storage.open()
        try:
            yield storage
        finally:
            await storage.close()
            conn = await asyncpg.connect(pg_url)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        return
    if backend == "memory":
        from qml.storage.memory import MemoryStorage

        storage = MemoryStorage()
        await storage.open()
        yield storage
        await storage.close()
        return
    raise SystemExit(f"unknown backend {backend!r}")


def make_job(k: int, rng: random.Random) -> Job:
    r = k % 100
    method = METHODS[k % len(METHODS)]
    args: dict[str, Any] = {
        "user_id": k % 50_000,
        "template": rng.choice(["welcome", "invoice", "reset", "digest"]),
        "n": k,
    }
    if r < 10:  # Scheduled: due in 1 to 30 days
        when = timedelta(days=1 + k % 30)
        return Job(method, args, queue="default", run_at=datetime.now(UTC) + when)
    if r < 70:
        return Job(method, args, queue=WORKED[k % 2])
    return Job(method, args, queue=IDLE[k % 2])


async def seed(storage: Storage, n: int) -> dict[str, float]:
    """``n`` jobs: ~45 % Succeeded, 9 % Failed, 6 % AwaitingRetry, 10 % Scheduled,
    ~29 % Enqueued, ~1 % Deleted and a few Processing, interleaved in id order."""
    rng = random.Random(42)
    t0 = time.perf_counter()
    enqueue_s = finish_s = 0.0
    done = 0
    while done < n:
        size = min(CHUNK, n - done)
        jobs = [make_job(done + i, rng) for i in range(size)]
        t = time.perf_counter()
        ids = await storage.enqueue_many(jobs)
        enqueue_s += time.perf_counter() - t
        t = time.perf_counter()
        # claim and finish this chunk's worked jobs (60 % of it)
        claimed = 0
        while True:
            leases = await storage.claim(ClaimRequest("seed", WORKED, limit=1000))
            if not leases:
                break
            outcomes = []
            for lease in leases:
                claimed += 1
                u = rng.random()
                if u < 0.75:
                    outcomes.append(Outcome.succeed(lease, {"ok": True}, ttl=30 * DAY))
                else:
                    kind, text = rng.choice(ERRORS)
                    error = ErrorInfo(
                        kind,
                        text.format(n=rng.randint(1, 999)),
                        f'Traceback (most recent call last):\n  File "app.py", line 1\n{kind}\n',
                    )
                    if u < 0.90:
                        outcomes.append(Outcome.fail(lease, error, ttl=30 * DAY))
                    else:
                        outcomes.append(Outcome.retry(lease, error, delay=7 * DAY))
            await storage.finish(outcomes)
        # ~1 % of the chunk deleted (from the idle queues)
        idle_ids = [i for i, j in zip(ids, jobs, strict=True) if j.queue in IDLE]
        await storage.move(idle_ids[: size // 100], JobState.DELETED, reason="seed")
        finish_s += time.perf_counter() - t
        done += size
        if done % 100_000 == 0 or done == n:
            print(f"  seeded {done:,} jobs in {time.perf_counter() - t0:.0f} s", flush=True)
    # a few Processing jobs (leases held by a server that never finishes them)
    await storage.enqueue_many([Job(METHODS[0], {"user_id": i}, queue="busy") for i in range(20)])
    await storage.claim(ClaimRequest("seed", ["busy"], limit=20, lease_seconds=3600))
    return {"total_s": time.perf_counter() - t0, "enqueue_s": enqueue_s, "finish_s": finish_s}


# ---------------------------------------------------------------------- pages
TIMING = re.compile(r"(\w+);dur=([\d.]+)")
#: The cursor of the "Older" link of a Jobs page.
NEXT = re.compile(r'href="[^"]*(?:\?|&amp;)cursor=([^"&]+)"[^>]*data-testid="older"')


def server_times(response: httpx.Response) -> dict[str, float]:
    header = response.headers.get("server-timing", "")
    return {k: float(v) for k, v in TIMING.findall(header)}


def page_kinds(sample_id: str) -> list[tuple[str, dict[str, str], int]]:
    """(label, query, pages deep) of each Jobs page measured."""
    kinds: list[tuple[str, dict[str, str], int]] = [("all", {}, 1)]
    kinds += [(f"state={s.value}", {"state": s.value}, 1) for s in JobState]
    kinds += [
        ("queue=emails", {"queue": "emails"}, 1),
        ("queue=emails state=failed", {"queue": "emails", "state": "failed"}, 1),
        ("queue=emails state=processing", {"queue": "emails", "state": "processing"}, 1),
        ("method", {"method": "app.billing.charge_card"}, 1),
        ("method state=failed", {"method": "app.billing.charge_card", "state": "failed"}, 1),
        ("method state=processing", {"method": METHODS[0], "state": "processing"}, 1),
        ("text common", {"text": "invoice"}, 1),
        ("text error state=failed", {"text": "smtp timeout", "state": "failed"}, 1),
        ("text id prefix", {"text": sample_id[:13]}, 1),
        ("text no match", {"text": "no-such-value"}, 1),
        ("args.user_id:4242", {"text": '"user_id":4242,'}, 1),
        ("all, 10 pages deep", {}, 10),
        ("state=succeeded, 10 deep", {"state": "succeeded"}, 10),
        ("state=failed, 10 deep", {"state": "failed"}, 10),
        ("queue=low, 10 deep", {"queue": "low"}, 10),
    ]
    return kinds


async def measure_pages(storage: Storage, repeat: int) -> list[dict[str, Any]]:
    app = create_app(storage)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    sample = (await storage.list_jobs()).items
    sample_id = sample[-1].id if sample else "0"
    rows = []
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        for label, query, depth in page_kinds(sample_id):
            app_ms: list[float] = []
            storage_ms: list[float] = []
            for _ in range(repeat):
                params = dict(query)
                for _page in range(depth):
                    response = await c.get("/jobs", params=params)
                    if response.status_code != 200:
                        raise SystemExit(f"{label}: HTTP {response.status_code}")
                    times = server_times(response)
                    cursor = NEXT.search(response.text)
                    if _page == depth - 1:
                        app_ms.append(times["app"])
                        storage_ms.append(times["storage"])
                    if cursor is None:
                        break
                    params = {**query, "cursor": unquote(cursor[1])}
            rows.append(
                {
                    "page": label,
                    "n": len(app_ms),
                    "app_p50": percentile(app_ms, 50),
                    "app_p95": percentile(app_ms, 95),
                    "storage_p50": percentile(storage_ms, 50),
                    "storage_p95": percentile(storage_ms, 95),
                    "rows": response.text.count("data-job-id="),
                }
            )
            r = rows[-1]
            print(
                f"  {label:<32} p50 {r['app_p50']:7.1f} ms  p95 {r['app_p95']:7.1f} ms"
                f"  (storage p50 {r['storage_p50']:7.1f} / p95 {r['storage_p95']:7.1f} ms)"
                f"  rows {r['rows']}",
                flush=True,
            )
    return rows


def percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


async def run_pages(args: argparse.Namespace) -> dict[str, Any]:
    async with open_storage(args.backend, args.pg_url) as storage:
        print(f"{args.backend}: seeding {args.jobs:,} jobs", flush=True)
        took = await seed(storage, args.jobs)
        stats = await storage.stats(history_minutes=1)
        counts = {s.value: n for s, n in stats.counts.items() if n}
        print(f"  seed: {took['total_s']:.0f} s; counts {counts}", flush=True)
        print(f"{args.backend}: Jobs page, {args.repeat} requests each (server time)", flush=True)
        rows = await measure_pages(storage, args.repeat)
        out = {"backend": args.backend, "jobs": args.jobs, "seed": took, "counts": counts}
        out["pages"] = rows
        if args.vacuum and args.backend == "postgres":
            # The seed moved 600,000 jobs through Processing in minutes: until
            # (auto)vacuum runs, the Processing ranges of the indexes hold the
            # dead entries of those moves.
            import asyncpg

            storage_pg: Any = storage
            conn = await asyncpg.connect(storage_pg.config.database_url)
            try:
                await conn.execute(f"VACUUM ANALYZE {storage_pg.names.qualified_table}")
            finally:
                await conn.close()
            print(f"{args.backend}: after VACUUM ANALYZE", flush=True)
            out["pages_after_vacuum"] = await measure_pages(storage, args.repeat)
    return out


# ---------------------------------------------------------------------- tabs
class Tab:
    """What qml.js does: follow the feed, refetch the fragment when counts change."""

    def __init__(self, url: str, path: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.path = path
        self.http = http
        self.refetches = 0

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        digest = None
        async with connect(self.url) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("op") != "stats":
                    continue
                new = json.dumps([msg["counts"], msg["queues"], msg["paused"]], sort_keys=True)
                if digest is not None and new != digest:
                    sep = "&" if "?" in self.path else "?"
                    await self.http.get(self.path + sep + "fragment=1")
                    self.refetches += 1
                digest = new


async def measure_tabs(
    storage: Storage, tabs: int, seconds: float, shared: bool, rate: float
) -> dict[str, float]:
    from qml import BackgroundJobServer, ServerConfig, WorkerRegistry

    registry = WorkerRegistry()

    @registry.job("bench.work")
    async def work(i: int) -> None:
        await asyncio.sleep(0.01)

    server = DashboardServer(storage, shared_read_ttl=1.0 if shared else 0.0)
    await server.start("127.0.0.1:0")
    ctx = dashboard_context(server.app)
    worker = BackgroundJobServer(
        ServerConfig("bench-worker", worker_count=4, enable_recurring=False),
        storage,
        registry,
    )
    await worker.start()
    stop = asyncio.Event()

    async def producer() -> None:
        i = 0
        while not stop.is_set():
            await storage.enqueue_many([Job("bench.work", {"i": i + k}) for k in range(10)])
            i += 10
            await asyncio.sleep(10 / rate)

    ws_url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    async with httpx.AsyncClient(base_url=server.url) as http:
        paths = ["/", "/jobs"]
        open_tabs = [Tab(ws_url, paths[i % 2], http) for i in range(tabs)]
        tasks = [asyncio.create_task(t.run()) for t in open_tabs]
        prod = asyncio.create_task(producer())
        await asyncio.sleep(2.0)  # warm up
        calls0, reads0, t0 = ctx.storage_calls.total, ctx.hub.reads, time.perf_counter()
        by_op0 = dict(ctx.storage_calls.calls)
        refetch0 = sum(t.refetches for t in open_tabs)
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        calls = ctx.storage_calls.total - calls0
        ticks = ctx.hub.reads - reads0
        refetches = sum(t.refetches for t in open_tabs) - refetch0
        by_op = {k: v - by_op0.get(k, 0) for k, v in ctx.storage_calls.calls.items()}
        stop.set()
        for t in [*tasks, prod]:
            t.cancel()
        await asyncio.gather(*tasks, prod, return_exceptions=True)
    await worker.stop()
    await server.stop()
    return {
        "calls_per_s": calls / elapsed,
        "ticks": ticks,
        "calls_per_tick": calls / max(1, ticks),
        "refetches_per_s": refetches / elapsed,
        "by_op": {k: round(v / elapsed, 1) for k, v in sorted(by_op.items()) if v},  # type: ignore[dict-item]
    }


async def run_tabs(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for shared in (True, False):
        for tabs in args.tab_counts:
            async with open_storage(args.backend, args.pg_url) as storage:
                r = await measure_tabs(storage, tabs, args.seconds, shared, args.rate)
            results.append({"tabs": tabs, "shared": shared, **r})
            print(
                f"  {args.backend} tabs={tabs:<3} shared reads={'on ' if shared else 'off'}"
                f"  storage calls {r['calls_per_s']:6.1f}/s  ({r['calls_per_tick']:.1f} per"
                f" hub tick, {r['ticks']:.0f} ticks)  fragment refetches"
                f" {r['refetches_per_s']:.1f}/s  by op {r['by_op']}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pages = sub.add_parser("pages", help="Jobs page server time with many jobs")
    pages.add_argument("--jobs", type=int, default=1_000_000)
    pages.add_argument("--repeat", type=int, default=20)
    pages.add_argument(
        "--vacuum", action="store_true", help="postgres: measure again after VACUUM ANALYZE"
    )
    tabs = sub.add_parser("tabs", help="storage calls/s with 1 and 20 live tabs")
    tabs.add_argument("--seconds", type=float, default=20.0)
    tabs.add_argument("--tab-counts", type=int, nargs="+", default=[1, 20])
    tabs.add_argument("--rate", type=float, default=200.0, help="jobs enqueued per second")
    for p in (pages, tabs):
        p.add_argument("--backend", choices=["sqlite", "postgres", "memory"], default="sqlite")
        p.add_argument("--pg-url", default=os.environ.get("QML_BENCH_PG_URL", PG_URL))
        p.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    out = asyncio.run(run_pages(args)) if args.command == "pages" else asyncio.run(run_tabs(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
