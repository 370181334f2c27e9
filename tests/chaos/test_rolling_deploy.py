"""Scenario 9, rolling deploy: jobs of a method only the newer release knows.
Workers of the older release give them back with backoff and never fail or
discard them; once newer workers start, each job runs exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from qml import Job, JobState, Storage
from qml.job import FINAL_STATES

from .harness import analyze, final_states, load_audit, record_figures, start_worker, stop
from .tools import start_app_worker, wait_ready

NEXT_APP = "tests.chaos.jobs:registry_next"
#: Where a job nobody here can run may be: given back with a delay (Scheduled),
#: back in the queue, or claimed by an older worker about to give it back.
WAITING = (JobState.SCHEDULED, JobState.ENQUEUED, JobState.AWAITING_RETRY, JobState.PROCESSING)


async def _rolling(
    backend: str, url: str, storage: Storage, tmp_path: Path, n: int, old_for: float
) -> None:
    audit_dir = tmp_path / "audit"
    ids: list[str] = []
    for start in range(0, n, 500):
        ids += await storage.enqueue_many(
            [Job("next_only", {"ms": 20}) for _ in range(start, min(n, start + 500))]
        )
    common = ["--workers", "4", "--lease", "2", "--poll-interval", "0.2"]
    log = tmp_path / "workers.log"
    old = [start_worker(url, audit_dir, *common, log=log) for _ in range(2)]
    new: list[subprocess.Popen[bytes]] = []
    bad_states: list[dict[str, int]] = []
    checks = 0
    try:
        ready = await wait_ready(storage, old)
        while time.monotonic() - ready < old_for:
            # (counts per state are not one snapshot: only the final ones are checked)
            counts = {s.value: await storage.count(s) for s in FINAL_STATES}
            checks += 1
            if any(counts.values()):
                bad_states.append(counts)
            await asyncio.sleep(0.25)
        assert not load_audit(audit_dir), "an older worker ran a method it does not know"
        released = 0
        for job_id in ids:
            job = await storage.get_job(job_id)
            assert job.state in WAITING, job
            assert job.attempts <= 1, job  # a release gives its attempt back
            released += sum(1 for h in job.history if h.reason == "unknown_method")
        # the newer release rolls out beside the older one
        new = [start_app_worker(NEXT_APP, url, audit_dir, *common, log=log) for _ in range(2)]
        new_ready = await wait_ready(storage, new)
        new_ready_at = time.time()
        deadline = time.monotonic() + 120 + n  # a safety net: the drain time is a figure
        while await storage.count(JobState.SUCCEEDED) < n:
            assert time.monotonic() < deadline, "the newer workers did not run every job"
            await asyncio.sleep(0.2)
        drained = time.monotonic() - new_ready
    finally:
        codes = [stop(p) for p in old + new]
    assert all(c == 0 for c in codes), (codes, log.read_text()[-3000:])
    assert not bad_states, bad_states[:5]

    execs = load_audit(audit_dir)
    final = await final_states(storage, ids)
    rep = analyze(ids, final, execs, {})
    new_pids = {p.pid for p in new}
    runs: dict[str, int] = {}
    for ex in execs:
        runs[ex.job_id] = runs.get(ex.job_id, 0) + 1
        assert ex.pid in new_pids and ex.status == "ok", ex
    assert all(runs.get(i) == 1 for i in ids), [i for i in ids if runs.get(i) != 1][:5]
    assert all(f.state is JobState.SUCCEEDED and f.attempts == 1 for f in final.values())
    # claims the older workers still made (and gave back) once the newer ones ran
    stolen = 0
    for job_id in ids:
        job = await storage.get_job(job_id)
        stolen += sum(
            1
            for h in job.history
            if h.reason == "unknown_method" and h.at.timestamp() > new_ready_at
        )
    extra = (
        f"old_phase={old_for:g}s state_checks={checks} unknown_method_releases={released}"
        f" drain_after_new={drained:.2f}s released_after_new={stolen}"
    )
    print(f"rolling deploy on {backend}: {rep.summary()} {extra}")
    record_figures("rolling_deploy", backend, rep, extra)
    assert not rep.lost and not rep.dup and not rep.overlap and not rep.unaudited, rep.summary()
    # the older workers claimed jobs and gave them back (pausing between claims
    # that found nothing they can run, so they do not look at every job)
    assert released >= len(old), "the older workers never looked at the jobs"


@pytest.mark.timeout(300)
async def test_rolling_deploy(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    await _rolling(backend, url, storage, tmp_path, 100, 5.0)


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
async def test_rolling_deploy_full(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    n = int(os.environ.get("QML_CHAOS_DEPLOY_JOBS", "1000"))
    await _rolling(backend, url, storage, tmp_path, n, 30.0)
