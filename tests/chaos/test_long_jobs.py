"""Scenario 3 (short probe), long jobs are not rescued: a job that keeps its
worker's event loop busy for longer than its lease must not be recovered and
run again elsewhere while its holder is alive."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from qml import Job, JobState, Storage

from .harness import FINAL, analyze, final_states, load_audit, record_figures, start_worker, stop

pytestmark = pytest.mark.timeout(300)

LEASE = 1.0


@pytest.mark.xfail(
    strict=True,
    reason="heartbeats run on the job's event loop: a job hogging the loop for longer"
    " than its lease stops renewals, and the job is recovered and run again elsewhere",
)
async def test_loop_hogging_job_is_not_rescued(
    store: tuple[str, str, Storage], tmp_path: Path
) -> None:
    backend, url, storage = store
    if backend != "sqlite" and os.environ.get("QML_CHAOS_FULL") != "1":
        pytest.skip("the heartbeat runs in the server, the same on every backend: sqlite only")
    audit_dir = tmp_path / "audit"
    common = ["--lease", str(LEASE), "--poll-interval", "0.2", "--workers", "1"]
    job_id = await storage.enqueue(Job("hog", {"seconds": 3 * LEASE}))
    holder = start_worker(url, audit_dir, *common, log=tmp_path / "holder.log")
    other = None
    try:
        deadline = time.monotonic() + 60
        while not load_audit(audit_dir):
            assert time.monotonic() < deadline, "the job did not start"
            await asyncio.sleep(0.05)
        other = start_worker(url, audit_dir, *common, log=tmp_path / "other.log")
        deadline = time.monotonic() + 60
        while (await storage.get_job(job_id)).state not in FINAL:
            assert time.monotonic() < deadline, "the job did not finish"
            await asyncio.sleep(0.1)
        await asyncio.sleep(LEASE)
    finally:
        stop(holder)
        if other is not None:
            stop(other)
    execs = load_audit(audit_dir)
    rep = analyze([job_id], await final_states(storage, [job_id]), execs, {})
    record_figures("long_job_probe", backend, rep)
    job = await storage.get_job(job_id)
    assert job.state is JobState.SUCCEEDED, (job.state, job.attempts, rep.summary())
    assert rep.executions == 1, rep.summary()
    assert not rep.dup and not rep.overlap, rep.summary()
