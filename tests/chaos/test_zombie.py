"""Scenario 4, zombie fencing: the holder of a running job is paused
(SIGSTOP) for twice its lease; another worker re-claims the job; once resumed
(SIGCONT) the zombie's heartbeat and completion are refused, it stops the
job, and exactly one final state is recorded."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qml import Job, JobState, LeaseLostError, Storage
from qml.storage.requests import Lease

from .harness import analyze, final_states, load_audit, record_figures, start_worker, stop

pytestmark = pytest.mark.timeout(300)

LEASE = 2.0


async def _until(what: str, timeout: float, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_paused_holder_is_fenced(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    audit_dir = tmp_path / "audit"
    common = ["--lease", str(LEASE), "--poll-interval", "0.2", "--workers", "2"]
    # "steps": 40 steps of 100 ms, about 4 s of work not counting the pause, so the
    # resumed zombie still runs it when its heartbeat is refused; "work": a 2 s
    # wall-clock sleep that ends during the pause, so the resumed zombie tries to
    # record its completion at once.
    steps_id = await storage.enqueue(Job("steps", {"n": 40}))
    wall_id = await storage.enqueue(Job("work", {"ms": 2000}))
    ids = [steps_id, wall_id]
    zombie = start_worker(url, audit_dir, *common, log=tmp_path / "zombie.log")
    other = None

    def runs(pid: int, ended: bool = False) -> int:
        return sum(
            1 for e in load_audit(audit_dir) if (e.pid == pid) and (e.end is not None or not ended)
        )

    try:

        async def running() -> bool:
            return runs(zombie.pid) == 2

        await _until("both jobs to start", 60, running)
        olds = []
        for job_id in ids:
            held = await storage.get_job(job_id)
            assert held.lease_token is not None
            olds.append(Lease(held, held.lease_token, held.lease_expires_at or datetime.now(UTC)))
        lease_end = {o.job.id: o.expires_at.timestamp() for o in olds}
        zombie.send_signal(signal.SIGSTOP)
        paused_at = time.time()
        other = start_worker(url, audit_dir, *common, log=tmp_path / "other.log")
        other_pid = other.pid

        async def reclaimed() -> bool:
            return runs(other_pid) == 2

        await _until("another worker to re-claim the jobs", 30, reclaimed)
        await asyncio.sleep(max(0.0, paused_at + 2 * LEASE - time.time()))
        # the zombie's tokens are fenced: heartbeat and completion refused
        replies = await storage.extend_leases([(o.job.id, o.token) for o in olds], LEASE)
        assert not any(r.held for r in replies)
        with pytest.raises(LeaseLostError):
            await storage.complete(olds[0], "late write")
        zombie.send_signal(signal.SIGCONT)

        async def zombie_stopped() -> bool:
            return runs(zombie.pid, ended=True) == 2

        await _until("the zombie to end its executions", 30, zombie_stopped)

        async def done() -> bool:
            states = [(await storage.get_job(i)).state for i in ids]
            return all(state is JobState.SUCCEEDED for state in states)

        await _until("the jobs to succeed", 60, done)
        await asyncio.sleep(LEASE)  # time for a late zombie write to land, if any
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
        zombie_code = stop(zombie)
        other_code = stop(other) if other is not None else 0
    assert zombie_code == 0 and other_code == 0
    execs = load_audit(audit_dir)
    final = await final_states(storage, ids)
    rep = analyze(ids, final, execs, {zombie.pid: paused_at})
    record_figures("zombie", backend, rep)
    assert not rep.lost and not rep.unaudited and not rep.dup and not rep.overlap, rep.summary()
    for job_id in ids:
        first, second = (e for e in execs if e.job_id == job_id)
        assert first.pid == zombie.pid, first
        if job_id == steps_id:
            # Stopped on resuming, by its own server: the lease's end passed
            # during the pause (lease_expired), or a renewal was refused first.
            stops = ("stopped:lease_expired", "cancelled:lease_expired")
            assert first.status in (*stops, "stopped:lease_lost", "cancelled:lease_lost"), first
        assert second.pid == other_pid and second.status == "ok"
        assert second.token != first.token and second.attempt == first.attempt + 1
        # Recovery follows the lease: never before the end the zombie's lease had
        # when it was paused (its last renewal may precede the pause by up to a
        # renewal interval, so paused_at + LEASE is not a bound).
        assert second.start >= lease_end[job_id], (second.start, lease_end[job_id])
        job = await storage.get_job(job_id)
        assert job.state is JobState.SUCCEEDED and job.attempts == second.attempt
        finals = [h for h in job.history if h.state in (JobState.SUCCEEDED, JobState.FAILED)]
        assert len(finals) == 1, job.history
    log = (tmp_path / "zombie.log").read_text()
    assert "lease lost" in log or "lease not renewed in time" in log, log
