"""Helpers for tests that run `qml worker` processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker_env(exec_db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QML_TEST_EXEC_DB"] = str(exec_db)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def start_worker(
    storage_url: str, exec_db: Path, *args: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `qml worker tests.acceptance.app:registry` with extra CLI args."""
    cmd = [
        sys.executable,
        "-m",
        "qml",
        "worker",
        "tests.acceptance.app:registry",
        "--storage",
        storage_url,
        "--log-level",
        "warning",
        *args,
    ]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(exec_db),
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else None,
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def executions(exec_db: Path, event: str = "run") -> Counter[str]:
    """Executions per job id recorded by the jobs themselves."""
    if not exec_db.exists():
        return Counter()
    con = sqlite3.connect(exec_db, timeout=30)
    try:
        try:
            rows = con.execute("SELECT job_id FROM executions WHERE event = ?", (event,)).fetchall()
        except sqlite3.OperationalError:
            return Counter()
        return Counter(r[0] for r in rows)
    finally:
        con.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async predicate until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM (once) and wait; SIGKILL if it does not exit within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    return wait_exit(proc, timeout)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """Wait for an exit already asked for; SIGKILL after ``timeout``."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
