"""The `qml` command: happy paths and one-line errors for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def qml(
    *args: str, url: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if url is not None:
        env["QML_STORAGE_URL"] = url
    proc = subprocess.run(
        [sys.executable, "-m", "qml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert text in lines[0]


def test_enqueue_list_show_retry_delete_stats(url: str) -> None:
    job_id = qml(
        "enqueue",
        "send_email",
        "--args",
        '{"to": "a@b.c"}',
        "--queue",
        "mail",
        "--priority",
        "3",
        url=url,
        check=True,
    ).stdout.strip()
    assert len(job_id) == 36
    listed = json.loads(qml("jobs", "list", "--json", url=url, check=True).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["queue"] == "mail" and listed[0]["priority"] == 3
    shown = json.loads(qml("jobs", "show", job_id, "--json", url=url, check=True).stdout)
    assert shown["args"] == {"to": "a@b.c"} and shown["state"] == "enqueued"
    assert "lease_token" not in shown
    human = qml("jobs", "show", job_id, url=url, check=True).stdout
    assert "send_email" in human and "Enqueued" in human
    assert "Deleted" in qml("jobs", "delete", job_id, url=url, check=True).stdout
    assert "Enqueued" in qml("jobs", "retry", job_id, url=url, check=True).stdout
    stats = json.loads(qml("stats", "--json", url=url, check=True).stdout)
    assert stats["counts"]["enqueued"] == 1
    assert stats["queues"]["mail"]["counts"]["enqueued"] == 1
    assert "mail" in qml("stats", url=url, check=True).stdout
    filtered = json.loads(
        qml("jobs", "list", "--state", "failed", "--json", url=url, check=True).stdout
    )
    assert filtered == []


def test_enqueue_scheduled_with_delay_and_at(url: str) -> None:
    job_id = qml("enqueue", "later", "--delay", "3600", url=url, check=True).stdout.strip()
    shown = json.loads(qml("jobs", "show", job_id, "--json", url=url, check=True).stdout)
    assert shown["state"] == "scheduled"
    job_id = qml(
        "enqueue", "later", "--at", "2999-01-01T00:00:00+00:00", url=url, check=True
    ).stdout.strip()
    shown = json.loads(qml("jobs", "show", job_id, "--json", url=url, check=True).stdout)
    assert shown["run_at"].startswith("2999-01-01")


def test_bad_json_is_one_line(url: str) -> None:
    assert_one_line_error(qml("enqueue", "m", "--args", "{nope", url=url), 2, "not valid JSON")


def test_bad_url_is_one_line() -> None:
    assert_one_line_error(qml("stats", url="mysql://x"), 1, "unsupported storage URL")
    assert_one_line_error(qml("stats", url="sqlite://relative.db"), 1, "three slashes")


def test_unknown_module_is_one_line(url: str) -> None:
    assert_one_line_error(
        qml("worker", "no_such_module_xyz:registry", url=url), 2, "cannot import module"
    )
    assert_one_line_error(
        qml("worker", "tests.acceptance.app:nothing", url=url), 2, "has no attribute"
    )
    assert_one_line_error(qml("worker", "no_colon", url=url), 2, "MODULE:ATTR")


def test_unknown_job_is_not_found(url: str) -> None:
    assert_one_line_error(qml("jobs", "show", "missing-id", url=url), 3, "not found")


def test_invalid_transition_is_one_line(url: str) -> None:
    job_id = qml("enqueue", "m", url=url, check=True).stdout.strip()
    assert_one_line_error(qml("jobs", "retry", job_id, url=url), 1, "cannot become Enqueued")


def test_bad_state_and_args(url: str) -> None:
    assert_one_line_error(qml("jobs", "list", "--state", "nonsense", url=url), 2, "unknown state")
    assert_one_line_error(
        qml(
            "enqueue",
            "m",
            "--args",
            '[1, 2, "x"]',
            "--priority",
            "1",
            "--delay",
            "1",
            "--at",
            "2030-01-01",
            url=url,
        ),
        2,
        "not both",
    )


def test_help_lists_commands() -> None:
    out = qml("--help", check=True).stdout
    for cmd in ("worker", "enqueue", "jobs", "stats", "demo"):
        assert cmd in out


def test_worker_burst_runs_jobs_and_exits_zero(url: str, tmp_path: Path) -> None:
    for i in range(5):
        qml("enqueue", "record", "--args", json.dumps({"n": i}), url=url, check=True)
    env_db = tmp_path / "exec.db"
    os.environ["QML_TEST_EXEC_DB"] = str(env_db)
    try:
        proc = qml("worker", "tests.acceptance.app:registry", "--burst", "--workers", "2", url=url)
    finally:
        del os.environ["QML_TEST_EXEC_DB"]
    assert proc.returncode == 0, proc.stderr
    assert "record" in proc.stderr and "wait" in proc.stderr and "run" in proc.stderr
    stats = json.loads(qml("stats", "--json", url=url, check=True).stdout)
    assert stats["counts"]["succeeded"] == 5


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_worker_runs_on_the_chosen_event_loop(url: str, tmp_path: Path, loop: str) -> None:
    pytest.importorskip(loop)
    for i in range(3):
        qml("enqueue", "record", "--args", json.dumps({"n": i}), url=url, check=True)
    os.environ["QML_TEST_EXEC_DB"] = str(tmp_path / "exec.db")
    try:
        proc = qml("worker", "tests.acceptance.app:registry", "--burst", "--loop", loop, url=url)
    finally:
        del os.environ["QML_TEST_EXEC_DB"]
    assert proc.returncode == 0, proc.stderr
    assert f", {loop} loop" in proc.stderr
    stats = json.loads(qml("stats", "--json", url=url, check=True).stdout)
    assert stats["counts"]["succeeded"] == 3


def test_an_unknown_event_loop_is_refused(url: str) -> None:
    proc = qml("worker", "tests.acceptance.app:registry", "--burst", "--loop", "tokio", url=url)
    assert proc.returncode == 2
    assert "tokio" in proc.stderr


def test_bench_reports_every_workload(tmp_path: Path) -> None:
    out = qml("bench", "--jobs", "300", "--latency", url="memory://", check=True).stdout
    for label in ("W1 enqueue one-by-one", "W1 enqueue batched", "W2 drain", "W3 enqueue->start"):
        assert label in out
    db = tmp_path / "bench.db"
    out = qml(
        "bench", "--jobs", "300", "--processes", "2", url=f"sqlite:///{db}", check=True
    ).stdout
    assert "2 process(es)" in out
    assert "W2 drain" in out


def test_a_stop_signal_while_the_app_loads_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM before the server starts (while the app is imported) ends the
    worker with exit 0 and without taking a job."""
    import signal
    import time

    marker = tmp_path / "loading"
    db = tmp_path / "early.db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["QML_TEST_MARKER"] = str(marker)
    qml("enqueue", "noop", url=f"sqlite:///{db}", check=True)
    app = "tests.cli.slow_app:registry"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qml", "worker", app, "--storage", f"sqlite:///{db}"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the app did not load"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "received SIGTERM before starting: exiting" in err
    jobs = json.loads(qml("jobs", "list", "--json", url=f"sqlite:///{db}", check=True).stdout)
    assert [j["state"] for j in jobs] == ["enqueued"]
