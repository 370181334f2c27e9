"""`qml recurring …` and `qml scheduler`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_cli import ROOT, assert_one_line_error, qml


def test_recurring_add_list_pause_resume_trigger_remove(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = qml(
        "recurring",
        "add",
        "daily",
        "0 0 9 * * *",
        "make_report",
        "--args",
        '{"kind": "daily"}',
        "--tz",
        "Europe/Oslo",
        "--misfire",
        "skip",
        url=url,
        check=True,
    ).stdout
    assert out.startswith("daily: next run ")
    listed = json.loads(qml("recurring", "list", "--json", url=url, check=True).stdout)
    assert listed[0]["id"] == "daily"
    assert listed[0]["timezone"] == "Europe/Oslo"
    assert listed[0]["misfire"] == "skip"
    assert listed[0]["args"] == {"kind": "daily"}
    assert "paused" in qml("recurring", "pause", "daily", url=url, check=True).stdout
    assert "active" in qml("recurring", "resume", "daily", url=url, check=True).stdout
    job_id = qml("recurring", "trigger", "daily", url=url, check=True).stdout.strip()
    shown = json.loads(qml("jobs", "show", job_id, "--json", url=url, check=True).stdout)
    assert shown["meta"] == {"recurring": "daily", "trigger": "manual"}
    assert "daily" in qml("recurring", "list", url=url, check=True).stdout
    assert "removed" in qml("recurring", "remove", "daily", url=url, check=True).stdout
    assert_one_line_error(qml("recurring", "remove", "daily", url=url), 3, "not found")


def test_recurring_rejects_bad_cron_and_previews_ticks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert_one_line_error(
        qml("recurring", "add", "x", "every day", "m", url=url), 1, "invalid cron expression"
    )
    assert_one_line_error(
        qml("recurring", "add", "x", "* * * * *", "m", "--tz", "Nowhere/X", url=url), 1, "time zone"
    )
    ticks = qml(
        "recurring", "next", "0 30 1 * * *", "--tz", "America/New_York", "--count", "3", check=True
    ).stdout.split()
    assert len(ticks) == 3


def test_scheduler_fires_templates_without_running_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    qml("recurring", "add", "tick", "* * * * * *", "anything", url=url, check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "qml", "scheduler", "--storage", url, "--poll-interval", "0.2"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        jobs: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            jobs = json.loads(qml("jobs", "list", "--json", url=url, check=True).stdout)
            if len(jobs) >= 2:
                break
            time.sleep(0.3)
        assert len(jobs) >= 2
        assert all(j["state"] == "enqueued" for j in jobs)  # fired, not run
        assert {j["method"] for j in jobs} == {"anything"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        proc.stderr.close()
