"""Scenario 2, crash points: a worker exits (``os._exit(137)``) at a fault
point; a clean worker then finishes the work once its lease ends."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from qml import Job, JobState, Storage

from .harness import (
    analyze,
    final_states,
    load_audit,
    record_figures,
    start_worker,
    stop,
    wait_exit,
    wait_final,
)

pytestmark = pytest.mark.timeout(300)

LEASE = "2"
N_SHORT = 20
STARTUP = 2.0
BEFORE_RUN = ("job.claimed", "job.running")  # the crash comes before the job runs


async def _crash_then_recover(
    backend: str, url: str, storage: Storage, tmp_path: Path, point: str, n: int
) -> None:
    audit_dir = tmp_path / "audit"
    ids = await storage.enqueue_many([Job("work", {"ms": 100}) for _ in range(n)])
    slots = str(n)
    common = ["--lease", LEASE, "--poll-interval", "0.2", "--workers", slots]
    faulty = start_worker(
        url, audit_dir, *common, "--fetch-batch-size", slots,
        faults=f"{point}=exit", log=tmp_path / "faulty.log",
    )  # fmt: skip
    try:
        crashed_at = wait_exit(faulty, 60)
    finally:
        stop(faulty)
    assert faulty.returncode == 137, (tmp_path / "faulty.log").read_text()[-2000:]
    clean = start_worker(url, audit_dir, *common, log=tmp_path / "clean.log")
    started = time.monotonic()
    try:
        await wait_final(storage, n, 90)
        # a SIGTERM before its signal handlers are set would kill it
        await asyncio.sleep(max(0.0, STARTUP - (time.monotonic() - started)))
    finally:
        assert stop(clean) == 0, (tmp_path / "clean.log").read_text()[-2000:]
    execs = load_audit(audit_dir)
    final = await final_states(storage, ids)
    rep = analyze(ids, final, execs, {faulty.pid: crashed_at})
    if point in BEFORE_RUN:  # nothing ran in the crashed process: time from its exit
        rep.recovery += [f.expired[0] - crashed_at for f in final.values() if f.expired]
        firsts: dict[str, float] = {}
        for ex in execs:
            firsts.setdefault(ex.job_id, ex.start)
        rep.reclaim += [t - crashed_at for t in firsts.values()]
    record_figures(f"crash:{point}", backend, rep)
    assert not rep.lost and not rep.unaudited and not rep.dup and not rep.overlap, rep.summary()
    assert all(state is JobState.SUCCEEDED for state, *_ in final.values())

    by_job: dict[str, list[int]] = {i: [] for i in ids}
    for k, ex in enumerate(execs):
        by_job[ex.job_id].append(k)
    first = [execs[ks[0]] for ks in by_job.values() if ks]
    faulty_runs = [ex for ex in first if ex.pid == faulty.pid]
    if point in BEFORE_RUN:
        # nothing ran in the crashed process; each job ran once, attempt 2
        assert not faulty_runs
        for job_id in ids:
            (only,) = (execs[k] for k in by_job[job_id])
            assert only.attempt == 2 and final[job_id][1] == 2
        return
    assert faulty_runs, "the faulty worker ran nothing"
    finished = [ex for ex in faulty_runs if ex.status == "ok"]
    assert finished, "no job finished in the faulty worker before the crash"
    for ex in faulty_runs:
        runs = [execs[k] for k in by_job[ex.job_id]]
        acked = final[ex.job_id][1] == ex.attempt
        if point == "job.after_ack" and acked:
            assert len(runs) == 1, f"re-run after its ack: {runs}"
            continue
        # before the ack (or not yet in the acked batch): exactly one re-run,
        # with a new token and the next attempt
        assert not (point == "job.before_ack" and acked), f"acked before the ack point: {ex}"
        assert len(runs) == 2, runs
        again = runs[1]
        assert again.token != ex.token and again.attempt == ex.attempt + 1
        assert again.pid != faulty.pid and again.status == "ok"
    if point == "job.after_ack":
        assert any(final[ex.job_id][1] == ex.attempt for ex in finished)


@pytest.mark.parametrize("point", ["job.claimed", "job.before_ack", "job.after_ack"])
async def test_crash_point(store: tuple[str, str, Storage], tmp_path: Path, point: str) -> None:
    backend, url, storage = store
    await _crash_then_recover(backend, url, storage, tmp_path, point, N_SHORT)


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("point", ["job.claimed", "job.running", "job.before_ack", "job.after_ack"])
async def test_crash_point_full(
    store: tuple[str, str, Storage], tmp_path: Path, point: str
) -> None:
    backend, url, storage = store
    n = int(os.environ.get("QML_CHAOS_CRASH_JOBS", "200"))
    await _crash_then_recover(backend, url, storage, tmp_path, point, n)
