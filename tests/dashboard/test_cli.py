"""``qml dashboard`` as users run it: a process serving a storage URL."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from qml.storage.base import Storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(url: str, proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def test_qml_dashboard_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "QML_STORAGE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qml", "dashboard", "--port", str(port), "--read-only"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        page = httpx.get(url + "/")
        assert page.status_code == 200
        assert 'data-testid="read-only"' in page.text
        r = httpx.post(url + "/api/v1/queues/default:pause", headers={"X-QML-Request": "1"})
        assert r.status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"qml dashboard on {url}/" in err


def test_qml_dashboard_with_token(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "QML_STORAGE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "QML_DASHBOARD_TOKEN": "cli-token-123",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "qml", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        assert httpx.get(url + "/api/v1/stats").status_code == 401
        ok = httpx.get(url + "/api/v1/stats", headers={"Authorization": "Bearer cli-token-123"})
        assert ok.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_demo_serves_the_dashboard_while_it_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    env.pop("QML_DEMO_DASHBOARD", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qml", "demo", "--storage", f"sqlite:///{tmp_path / 'demo.db'}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/", first)
        assert match, first
        url = match.group(1)
        assert httpx.get(url + "/healthz", timeout=5).json()["status"] == "ok"
        assert httpx.get(url + "/", timeout=5).status_code == 200
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "4/4 demo jobs finished" in out
    with pytest.raises(httpx.TransportError):  # stopped with the demo
        httpx.get(url + "/healthz", timeout=2)


async def test_demo_runs_without_the_dashboard_extra(
    monkeypatch: pytest.MonkeyPatch, memory_storage: Storage
) -> None:
    from qml.cli.demo import start_dashboard

    out = io.StringIO()
    monkeypatch.setitem(sys.modules, "qml.dashboard", None)  # the extra is missing
    assert await start_dashboard(memory_storage, Console(file=out)) is None
    assert "install the 'dashboard' extra" in out.getvalue()
    monkeypatch.delitem(sys.modules, "qml.dashboard")
    monkeypatch.setenv("QML_DEMO_DASHBOARD", "0")
    assert await start_dashboard(memory_storage, Console(file=io.StringIO())) is None
