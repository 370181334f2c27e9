"""Jobs for ``qml worker tests.chaos.jobs:registry``.

Each execution appends a ``start`` and an ``end`` record to an audit file of
its own process (``$QML_CHAOS_AUDIT/audit-<pid>.jsonl``), written with
``O_APPEND`` and fsync'd before the job goes on: an audit independent of
qml's storage that survives ``kill -9`` of the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from qml import WorkerContext, WorkerRegistry

registry = WorkerRegistry()
_lock = threading.Lock()


def audit(ctx: WorkerContext, event: str, **extra: Any) -> None:
    """Append one fsync'd record about this execution."""
    record = {
        "ev": event,
        "job": ctx.job_id,
        "attempt": ctx.attempt,
        "token": ctx.job.lease_token,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    line = (json.dumps(record) + "\n").encode()
    path = os.path.join(os.environ["QML_CHAOS_AUDIT"], f"audit-{os.getpid()}.jsonl")
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


@registry.job("work")
async def work(ctx: WorkerContext, ms: float) -> str:
    """Runs ``ms`` milliseconds (on the event loop)."""
    audit(ctx, "start")
    status = "cancelled"
    try:
        await asyncio.sleep(ms / 1000)
        status = "ok"
    finally:
        if status == "cancelled" and ctx.cancelled.is_set():
            status = f"cancelled:{ctx.cancelled.reason}"
        audit(ctx, "end", status=status)
    return "done"


@registry.job("steps")
async def steps(ctx: WorkerContext, n: int) -> str:
    """Runs ``n`` steps of 100 ms: a pause (SIGSTOP) does not count as progress,
    so a resumed zombie still has work left when it learns its lease is gone."""
    audit(ctx, "start")
    status = "cancelled"
    try:
        for _ in range(n):
            await asyncio.sleep(0.1)
            if ctx.cancelled.is_set():
                status = f"stopped:{ctx.cancelled.reason}"
                return "stopped"
        status = "ok"
    finally:
        if status == "cancelled" and ctx.cancelled.is_set():
            status = f"cancelled:{ctx.cancelled.reason}"
        audit(ctx, "end", status=status)
    return "done"


@registry.job("hog")
async def hog(ctx: WorkerContext, seconds: float) -> str:
    """Keeps the event loop busy (blocking sleep in bursts of 100 ms, as CPU-bound
    code in an ``async def`` would) for ``seconds``."""
    audit(ctx, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)  # noqa: ASYNC251 (blocks the loop on purpose)
    audit(ctx, "end", status="ok")
    return "done"
