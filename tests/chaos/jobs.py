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


# ------------------------------------------------------------ retries, poison, deploys
import signal  # noqa: E402

from qml import RetryPolicy  # noqa: E402

#: The retry policy of ``flaky``: four retries, 0.5 s doubling, ±10 % jitter.
FLAKY_POLICY = RetryPolicy(max_retries=4, base_delay=0.5, factor=2.0, jitter=0.1)


@registry.job("flaky", retry_policy=FLAKY_POLICY)
async def flaky(ctx: WorkerContext, k: int, ms: float = 0) -> str:
    """Runs ``ms`` milliseconds, then fails if this is one of its first ``k``
    counted attempts (attempts that ended with an outcome, not in a crash of
    their process); succeeds after that."""
    audit(ctx, "start")
    await asyncio.sleep(ms / 1000)
    if ctx.attempt - ctx.job.crashes <= k:
        audit(ctx, "end", status="fail")
        raise RuntimeError(f"failing on purpose ({k} time(s) in all)")
    audit(ctx, "end", status="ok")
    return "done"


@registry.job("poison")
async def poison(ctx: WorkerContext, how: str) -> str:
    """Kills its own process: ``exit`` (``os._exit(137)``) or ``kill`` (SIGKILL)."""
    audit(ctx, "start")
    if how == "exit":
        os._exit(137)
    os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(60)  # never reached: the signal ends the process
    return "survived"


#: The registry of a newer release: everything of ``registry`` plus ``next_only``.
registry_next = WorkerRegistry()
for _method in registry.methods:
    registry_next.register(registry.get(_method))


@registry_next.job("next_only")
async def next_only(ctx: WorkerContext, ms: float) -> str:
    """A method only the newer release knows."""
    audit(ctx, "start")
    await asyncio.sleep(ms / 1000)
    audit(ctx, "end", status="ok")
    return "done"


@registry.job("gil_hog")
async def gil_hog(ctx: WorkerContext, seconds: float) -> str:
    """Keeps the event loop and the GIL busy for ``seconds``: back-to-back sorts
    of a large list, each holding the GIL for a burst (a C call with no switch)."""
    import random

    audit(ctx, "start")
    data = [random.random() for _ in range(500_000)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sorted(data)
    audit(ctx, "end", status="ok")
    return "done"
