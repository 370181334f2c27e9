"""Scenario 10, graceful stop: SIGTERM to a worker with every slot busy. It
claims nothing more, lets the jobs that end within ``shutdown_timeout`` finish,
gives the others back without counting an attempt and exits 0; a second SIGTERM
gives them back at once. Times are reported, not asserted (safety nets only)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from qml import Job, JobState, Storage

from .harness import Report, load_audit, record_figures, start_worker, stop, wait_exit
from .tools import wait_ready

CLAIM_GRACE = 1.0  # no claim later than this after the signal
MARGIN = 0.5  # jobs ending this close to the deadline may go either way


async def _wait_started(audit_dir: Path, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(load_audit(audit_dir)) < n:
        assert time.monotonic() < deadline, "not every job started"
        await asyncio.sleep(0.1)


async def _graceful(
    backend: str,
    url: str,
    storage: Storage,
    tmp_path: Path,
    n: int,
    max_s: int,
    timeout: float,
    twice: bool,
) -> None:
    rng = random.Random(10)
    audit_dir = tmp_path / "audit"
    ms = {}
    for _ in range(n):
        d = rng.randint(1000, max_s * 1000)
        ms[await storage.enqueue(Job("work", {"ms": d}))] = d
    worker = start_worker(
        url, audit_dir, "--workers", str(n), "--fetch-batch-size", str(n),
        "--shutdown-timeout", str(timeout), "--poll-interval", "0.2",
        log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        await wait_ready(storage, [worker])
        await _wait_started(audit_dir, n, 60)
        # waiting work that a stopping worker must leave alone
        extra = await storage.enqueue_many([Job("work", {"ms": 100}) for _ in range(n // 2)])
        await asyncio.sleep(0.5)
        signalled = time.time()
        worker.send_signal(signal.SIGTERM)
        second = None
        if twice:
            await asyncio.sleep(1.0)
            second = time.time()
            worker.send_signal(signal.SIGTERM)
        exited = wait_exit(worker, timeout + 60)
    finally:
        code = stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-3000:]

    execs = load_audit(audit_dir)
    cutoff = second if second is not None else signalled + timeout
    finished = released = ambiguous = 0
    late_starts = [e for e in execs if e.start > signalled]
    for ex in execs:
        job = await storage.get_job(ex.job_id)
        due = ex.start + ms[ex.job_id] / 1000
        assert ex.status in ("ok", "cancelled:shutdown"), ex
        if ex.status == "ok":
            finished += 1
            assert job.state is JobState.SUCCEEDED and job.attempts == 1, job
            assert due <= cutoff + MARGIN, (ex, due - cutoff)
        else:
            released += 1
            assert job.state is JobState.ENQUEUED and job.attempts == 0, job
            assert job.history[-1].reason == "shutdown", job.history
            assert due >= cutoff - MARGIN, (ex, due - cutoff)
        ambiguous += abs(due - cutoff) < MARGIN
    claims_after = [
        (j, h.at.timestamp() - signalled)
        for j in list(ms) + extra
        for h in (await storage.get_job(j)).history
        if h.state is JobState.PROCESSING and h.at.timestamp() > signalled + CLAIM_GRACE
    ]
    for job_id in extra:
        job = await storage.get_job(job_id)
        assert job.state is JobState.ENQUEUED and job.attempts == 0, job
    last_end = max((e.end or 0.0) for e in execs) - signalled
    rep = Report(jobs=n, executions=len(execs))
    figures = (
        f"timeout={timeout:g}s twice={twice} finished={finished} released={released}"
        f" near_deadline={ambiguous} starts_after_signal={len(late_starts)}"
        f" claims_after_1s={len(claims_after)} last_job_end={last_end:.2f}s"
        f" exit_after_signal={exited - signalled:.2f}s"
        + (f" exit_after_second={exited - second:.2f}s" if second is not None else "")
    )
    print(f"graceful stop on {backend}: {figures}")
    record_figures(f"graceful_stop{' twice' if twice else ''}", backend, rep, figures)
    assert len(execs) == n, "a job ran twice or never started"
    assert not late_starts and not claims_after, (late_starts, claims_after)
    assert finished and (released or twice), figures  # both outcomes were exercised
    # generous safety nets only: the figures above are the measurement
    assert exited - signalled <= timeout + 30
    if second is not None:
        assert exited - second <= 30


@pytest.mark.timeout(300)
@pytest.mark.parametrize("twice", [False, True], ids=["sigterm", "sigterm_twice"])
async def test_graceful_stop(store: tuple[str, str, Storage], tmp_path: Path, twice: bool) -> None:
    backend, url, storage = store
    await _graceful(backend, url, storage, tmp_path, 20, 10, 5.0, twice)


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("twice", [False, True], ids=["sigterm", "sigterm_twice"])
async def test_graceful_stop_full(
    store: tuple[str, str, Storage], tmp_path: Path, twice: bool
) -> None:
    backend, url, storage = store
    n = int(os.environ.get("QML_CHAOS_STOP_JOBS", "200"))
    await _graceful(backend, url, storage, tmp_path, n, 60, 25.0, twice)
