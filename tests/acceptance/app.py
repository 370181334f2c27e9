"""Jobs used by the multi-process acceptance tests (run by `qml worker`).

Every execution is recorded by the job itself in a side table
(`$QML_TEST_EXEC_DB`, a separate SQLite file), so tests count executions
independently of qml's own bookkeeping.
"""

from __future__ import annotations

import os
import sqlite3
import time

from qml import WorkerContext, WorkerRegistry

registry = WorkerRegistry()


def _record(job_id: str, attempt: int, event: str) -> None:
    path = os.environ["QML_TEST_EXEC_DB"]
    for _ in range(200):
        try:
            con = sqlite3.connect(path, timeout=30)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(
                    "CREATE TABLE IF NOT EXISTS executions "
                    "(job_id TEXT, attempt INTEGER, pid INTEGER, event TEXT, at REAL)"
                )
                con.execute(
                    "INSERT INTO executions VALUES (?, ?, ?, ?, ?)",
                    (job_id, attempt, os.getpid(), event, time.time()),
                )
                con.commit()
                return
            finally:
                con.close()
        except sqlite3.OperationalError:
            time.sleep(0.01)
    raise RuntimeError("could not record execution")


@registry.job("record")
def record(ctx: WorkerContext, n: int) -> int:
    """Records one execution and returns its argument."""
    _record(ctx.job_id, ctx.attempt, "run")
    return n


@registry.job("hang_first")
def hang_first(ctx: WorkerContext, seconds: float) -> str:
    """First attempt records itself and hangs (to be killed); later attempts finish."""
    _record(ctx.job_id, ctx.attempt, "start")
    if ctx.attempt == 1:
        time.sleep(seconds)
    _record(ctx.job_id, ctx.attempt, "end")
    return "done"


@registry.job("sleepy")
async def sleepy(ctx: WorkerContext, seconds: float) -> str:
    """Sleeps, then records its end."""
    import asyncio

    _record(ctx.job_id, ctx.attempt, "start")
    await asyncio.sleep(seconds)
    _record(ctx.job_id, ctx.attempt, "end")
    return "slept"


@registry.job("noop")
def noop() -> None:
    """Does nothing (recurring tick jobs)."""
