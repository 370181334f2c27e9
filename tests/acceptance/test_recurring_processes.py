"""Recurring templates fired by several `qml worker` processes without a leader.

Every available backend runs at once (the load is a few jobs a second), each
with 4 server processes and 5 templates firing every second for 60 seconds.
One server stops itself (SIGSTOP) right after claiming templates and is
resumed only after its claims expired and another server took over: still
every (template, tick) has exactly one job, none missing, none duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from qml import Storage, StorageInstance
from qml.recurring import schedule_recurring
from qml.storage.requests import JobQuery, MisfirePolicy

from .backends import backend_urls
from .helpers import start_worker, stop, wait_exit

pytestmark = pytest.mark.timeout(400)

DURATION = float(os.environ.get("QML_RECURRING_TEST_SECONDS", "60"))
TEMPLATES = 5
PROCESSES = 4
CLAIM_SECONDS = 3.0


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "?"
    return data[data.rfind(b")") + 2 :].split()[0].decode()


async def _all_jobs(storage: Storage) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = await storage.list_jobs(JobQuery(method="noop", cursor=cursor, limit=1000))
        out += [(j.meta["recurring"], j.meta["tick"]) for j in page.items]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def _run_backend(name: str, url: str, tmp_path: Path) -> str | None:
    """Run the scenario on one backend; return a failure description or None."""
    storage = await StorageInstance.from_url(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(TEMPLATES):
            await schedule_recurring(
                storage, f"every-second-{i}", "* * * * * *", "noop", misfire=MisfirePolicy.FIRE_ALL
            )
        exec_db = tmp_path / f"exec-{name}.db"
        common = (
            "--workers",
            "4",
            "--poll-interval",
            "0.5",
            "--recurring-poll-interval",
            "0.5",
            "--recurring-claim-seconds",
            str(CLAIM_SECONDS),
            "--no-cleanup",
        )
        os.environ["QML_FAULTS"] = "recurring.claimed=stop"
        try:
            procs.append(
                start_worker(
                    url, exec_db, *common, "--name", f"{name}-0", log=tmp_path / f"{name}-0.log"
                )
            )
        finally:
            del os.environ["QML_FAULTS"]
        started = time.monotonic()
        deadline = started + 60
        while _state(procs[0].pid) != "T":
            if time.monotonic() > deadline or procs[0].poll() is not None:
                return f"{name}: the first server never stopped itself after a claim"
            await asyncio.sleep(0.05)
        for i in range(1, PROCESSES):
            procs.append(
                start_worker(
                    url, exec_db, *common, "--name", f"{name}-{i}", log=tmp_path / f"{name}-{i}.log"
                )
            )
        # keep it stopped well past its claims' expiry, while the others take over
        await asyncio.sleep(CLAIM_SECONDS * 3)
        os.kill(procs[0].pid, signal.SIGCONT)
        await asyncio.sleep(max(0.0, DURATION - (time.monotonic() - started)))
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            code = await asyncio.to_thread(wait_exit, p, 60)
            if code != 0:
                return f"{name}: a server exited with {code}"
        jobs = await _all_jobs(storage)
        per_tick = Counter(jobs)
        dups = [k for k, n in per_tick.items() if n > 1]
        if dups:
            return f"{name}: duplicate ticks {dups[:5]}"
        missing: list[str] = []
        for i in range(TEMPLATES):
            ticks = sorted(
                datetime.fromisoformat(t) for tid, t in per_tick if tid == f"every-second-{i}"
            )
            if len(ticks) < DURATION * 0.6:
                return f"{name}: template {i} fired only {len(ticks)} ticks in {DURATION} s"
            expected = int((ticks[-1] - ticks[0]).total_seconds()) + 1
            if expected != len(ticks):
                have = set(ticks)
                missing += [
                    f"{i}@{(ticks[0] + timedelta(seconds=s)).isoformat()}"
                    for s in range(expected)
                    if ticks[0] + timedelta(seconds=s) not in have
                ][:5]
        if missing:
            return f"{name}: missing ticks {missing[:10]}"
        return None
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            stop(p, 10)
        await storage.close()


async def test_every_tick_fires_exactly_once_across_servers_and_a_paused_claim_holder(
    tmp_path: Path,
) -> None:
    urls = backend_urls(tmp_path)
    results = await asyncio.gather(*(_run_backend(n, u, tmp_path) for n, u in urls.items()))
    failures = [r for r in results if r is not None]
    assert not failures, failures
