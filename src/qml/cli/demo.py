"""``qml demo``: a server on the embedded SQLite storage running sample jobs,
their progress shown live until every one is final."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..config import ServerConfig
from ..job import Job, JobState
from ..retry import RetryPolicy
from ..server import BackgroundJobServer
from ..storage.base import Storage
from ..storage.factory import mask_url
from ..worker import WorkerContext, WorkerRegistry
from .common import open_storage, run

STYLE = {
    JobState.ENQUEUED: "cyan",
    JobState.SCHEDULED: "blue",
    JobState.PROCESSING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.AWAITING_RETRY: "magenta",
    JobState.DELETED: "dim",
}

demo_registry = WorkerRegistry()


@demo_registry.job("demo.send_welcome_email")
async def send_welcome_email(to: str) -> str:
    """Succeeds at once."""
    await asyncio.sleep(0.3)
    return f"sent to {to}"


@demo_registry.job("demo.resize_image", retry_policy=RetryPolicy(base_delay=1.0, jitter=0))
def resize_image(ctx: WorkerContext, path: str) -> dict[str, int]:
    """Fails on its first attempt, succeeds on the retry (sync: runs in a thread)."""
    if ctx.attempt == 1:
        raise ConnectionError("image service unavailable (first attempt fails on purpose)")
    for pct in (25, 50, 75, 100):
        ctx.progress(pct)
        time.sleep(0.1)
    return {"width": 640, "height": 480}


@demo_registry.job("demo.nightly_report")
async def nightly_report(kind: str) -> str:
    """Scheduled a few seconds ahead."""
    await asyncio.sleep(0.2)
    return f"{kind} report ready"


@demo_registry.job(
    "demo.charge_card", retry_policy=RetryPolicy(max_retries=1, base_delay=1.0, jitter=0)
)
async def charge_card(amount: int) -> None:
    """Fails for good: one retry, then Failed."""
    raise ValueError(f"card declined for amount {amount} (always fails, on purpose)")


def _table(storage_url: str, jobs: list[Job], elapsed: float) -> Table:
    table = Table(
        title=f"qml demo on {mask_url(storage_url)}  ({elapsed:.1f} s)", title_justify="left"
    )
    for col in ("job", "state", "attempts", "note"):
        table.add_column(col)
    for job in jobs:
        note = job.error or ""
        if job.state is JobState.SUCCEEDED:
            note = f"result: {job.result}"
        elif job.state is JobState.SCHEDULED and job.run_at:
            wait = (job.run_at - datetime.now(UTC)).total_seconds()
            note = f"runs in {max(0.0, wait):.1f} s"
        table.add_row(
            job.method, f"[{STYLE[job.state]}]{job.state.label}[/]", str(job.attempts), note[:70]
        )
    return table


#: Where the demo serves the dashboard when that port is free (else any free port).
DASHBOARD_ADDRESS = "127.0.0.1:8765"


async def start_dashboard(storage: Storage, console: Console) -> Any | None:
    """Serve the dashboard on loopback during the demo, if the ``dashboard``
    extra is installed (``QML_DEMO_DASHBOARD=0`` turns it off); None otherwise."""
    if os.environ.get("QML_DEMO_DASHBOARD", "1") == "0":
        return None
    try:
        from ..dashboard import DashboardServer
    except ImportError:
        console.print("[dim](install the 'dashboard' extra to watch this in a browser)[/]")
        return None
    server = DashboardServer(storage)
    for address in (DASHBOARD_ADDRESS, "127.0.0.1:0"):
        try:
            await server.start(address)
        except OSError:
            continue
        console.print(f"Dashboard: [bold]{server.url}/[/]  (served while the demo runs)")
        return server
    return None


async def _demo(storage_url: str, timeout: float) -> int:
    storage: Storage = await open_storage(storage_url)
    demo_registry.storage = storage
    ids = [
        await send_welcome_email.enqueue("ada@example.com"),
        await resize_image.enqueue("/images/cat.png"),
        await nightly_report.options(at=datetime.now(UTC) + timedelta(seconds=3)).enqueue("daily"),
        await charge_card.enqueue(4200),
    ]
    config = ServerConfig(
        "demo-server", worker_count=4, polling_interval=0.5, scheduler_interval=0.25
    )
    server = BackgroundJobServer(config, storage, demo_registry)
    console = Console()
    dashboard = await start_dashboard(storage, console)
    start = time.monotonic()
    await server.start()
    jobs: list[Job] = []
    try:
        with Live(console=console, refresh_per_second=8) as live:
            while time.monotonic() - start < timeout:
                jobs = [await storage.get_job(i) for i in ids]
                live.update(_table(storage_url, jobs, time.monotonic() - start))
                if all(j.is_final for j in jobs):
                    break
                await asyncio.sleep(0.2)
    finally:
        await server.stop()
        if dashboard is not None:
            await dashboard.stop()
        await storage.close()
    console.print()
    done = sum(j.is_final for j in jobs)
    console.print(
        f"{done}/{len(ids)} demo jobs finished: "
        f"{sum(j.state is JobState.SUCCEEDED for j in jobs)} succeeded, "
        f"{sum(j.state is JobState.FAILED for j in jobs)} failed (on purpose). "
        "Inspect them with `qml jobs list` and `qml jobs show ID`."
    )
    return 0 if done == len(ids) else 1


def run_demo(storage_url: str, timeout: float) -> None:
    logging.basicConfig(level=logging.WARNING)
    code = 1
    with contextlib.suppress(KeyboardInterrupt):
        code = run(lambda: _demo(storage_url, timeout))
    raise SystemExit(code)
