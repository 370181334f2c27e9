"""Browser test harness: Debian Chromium (installed with apt when missing) driven by
Playwright, and a dashboard served from a background event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qml.dashboard import DashboardServer
from qml.storage.base import Storage

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _required() -> bool:
    return os.environ.get("QML_REQUIRE_SERVICES", "") == "1"


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (QML_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(f"{reason}; browser tests skipped (QML_REQUIRE_SERVICES=1 makes this fail)")


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise OSError("not root and no sudo")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        [*prefix, "apt-get", *args], env=env, capture_output=True, text=True, timeout=900
    )


def ensure_chromium() -> str:
    """The path of Debian's Chromium, installing it with apt-get when missing.

    Never downloads a browser any other way (no ``playwright install``).
    """
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        _unavailable(f"{CHROMIUM} is missing and apt-get is not available")
    try:
        update = _apt("update")
        install = _apt("install", "-y", "chromium")
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"{CHROMIUM} is missing and apt-get could not run: {exc}")
        raise AssertionError("unreachable") from exc
    if install.returncode != 0 or not Path(CHROMIUM).exists():
        detail = (install.stderr or update.stderr).strip().splitlines()[-1:]
        _unavailable(f"apt-get install chromium failed: {' '.join(detail)}")
    return CHROMIUM


class LiveDashboard:
    """A storage and a :class:`DashboardServer` on an event loop in a helper thread,
    so synchronous Playwright tests can drive the browser while they seed and
    inspect storage with :meth:`call`."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="qml-ui-loop")
        self.storage: Storage
        self.server: DashboardServer
        self.url = ""

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the dashboard's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self) -> None:
        if self.backend == "memory":
            from qml.storage.memory import MemoryStorage

            self.storage = MemoryStorage()
        else:
            from qml.storage.sqlite import SqliteStorage

            self.storage = SqliteStorage(str(self.tmp_path / "ui.db"))
        await self.storage.open()
        self.server = DashboardServer(self.storage, tick=0.1)
        await self.server.start("127.0.0.1:0")
        self.url = self.server.url

    async def _close(self) -> None:
        await self.server.stop()
        await self.storage.close()

    def start(self) -> None:
        self.thread.start()
        self.call(self._open())

    def close(self) -> None:
        try:
            self.call(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
