"""Chaos harness: worker processes, real faults, and an analyzer over the
independent audit that the jobs of :mod:`tests.chaos.jobs` write.

Figures (see docs/reliability.md):

* **lost**: enqueued ids that never reached a final state (Succeeded/Failed);
* **dup**: executions beyond the one whose outcome was recorded, not excused by
  a lease lost to a kill, a crash or a pause of the process that held it;
* **overlap**: two executions of one job, with distinct lease tokens, whose
  ``[start, end]`` intervals meet, where an execution of a faulted process ends
  at the fault (its lease was no longer honoured after it);
* **recovery**: from a fault to the moment the storage found the lease expired
  and put the job back (``lease_expired`` in its history); **reclaim**: from a
  fault to the start of the job's next execution (includes any crash backoff
  and the wait behind the rest of the queue).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from qml import JobState, Storage

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.chaos.jobs:registry"
FINAL = (JobState.SUCCEEDED, JobState.FAILED)


@dataclass
class Execution:
    job_id: str
    attempt: int
    token: str
    pid: int
    start: float
    end: float | None = None
    status: str | None = None


@dataclass
class Report:
    jobs: int = 0
    executions: int = 0
    lost: list[str] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)
    reruns: int = 0
    excused: int = 0
    dup: list[Execution] = field(default_factory=list)
    overlap: list[tuple[Execution, Execution]] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)
    reclaim: list[float] = field(default_factory=list)

    def p(self, q: float, xs: list[float] | None = None) -> float:
        """A percentile of the recovery times (or of ``xs``); 0 when empty."""
        xs = sorted(self.recovery if xs is None else xs)
        if not xs:
            return 0.0
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def summary(self) -> str:
        return (
            f"jobs={self.jobs} executions={self.executions} lost={len(self.lost)}"
            f" unaudited={len(self.unaudited)} reruns={self.reruns} excused={self.excused}"
            f" dup={len(self.dup)} overlap={len(self.overlap)}"
            f" recovery_p50={self.p(0.5):.2f}s p99={self.p(0.99):.2f}s"
            f" max={max(self.recovery, default=0.0):.2f}s"
            f" reclaim_p50={self.p(0.5, self.reclaim):.2f}s"
            f" p99={self.p(0.99, self.reclaim):.2f}s"
        )


def load_audit(audit_dir: Path) -> list[Execution]:
    """Executions from every process's audit file, joined by lease token."""
    by_token: dict[str, Execution] = {}
    ends: list[dict[str, object]] = []
    for path in sorted(audit_dir.glob("audit-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a torn last line of a killed process
            rec = json.loads(line)
            if rec["ev"] == "start":
                by_token[rec["token"]] = Execution(
                    rec["job"], rec["attempt"], rec["token"], rec["pid"], rec["t"]
                )
            else:
                ends.append(rec)
    for rec in ends:
        ex = by_token[str(rec["token"])]
        ex.end = float(rec["t"])  # type: ignore[arg-type]
        ex.status = str(rec.get("status"))
    return sorted(by_token.values(), key=lambda e: e.start)


class Final(NamedTuple):
    """What the storage finally says of one job."""

    state: JobState
    attempts: int
    expired: list[float]  # when its lease was found expired (storage clock)


async def final_states(storage: Storage, ids: list[str]) -> dict[str, Final]:
    out = {}
    for job_id in ids:
        job = await storage.get_job(job_id)
        expired = [h.at.timestamp() for h in job.history if h.reason == "lease_expired"]
        out[job_id] = Final(job.state, job.attempts, expired)
    return out


def analyze(
    ids: list[str],
    final: dict[str, Final],
    execs: list[Execution],
    faults: dict[int, float],
) -> Report:
    """``faults``: pid -> time it was killed, crashed or paused."""
    rep = Report(jobs=len(ids), executions=len(execs))
    per_job: dict[str, list[Execution]] = defaultdict(list)
    for ex in execs:
        per_job[ex.job_id].append(ex)
    for job_id in ids:
        state, attempts, expired = final[job_id]
        runs = per_job.get(job_id, [])
        if state not in FINAL:
            rep.lost.append(job_id)
            continue
        acked = [e for e in runs if e.attempt == attempts and e.status == "ok"]
        if state is JobState.SUCCEEDED and len(acked) != 1:
            rep.unaudited.append(job_id)
        rep.reruns += max(0, len(runs) - 1)
        for i, ex in enumerate(runs):
            if ex in acked:
                continue
            if ex.pid in faults:
                rep.excused += 1
                orphaned = max(faults[ex.pid], ex.start)
                found = [t for t in expired if t >= ex.start]
                if found:
                    rep.recovery.append(found[0] - orphaned)
                later = [e.start for e in runs[i + 1 :]]
                if later:
                    rep.reclaim.append(later[0] - orphaned)
            else:
                rep.dup.append(ex)
        for i, a in enumerate(runs):
            for b in runs[i + 1 :]:
                if a.token != b.token and b.start < _end(a, faults) and a.start < _end(b, faults):
                    rep.overlap.append((a, b))
    return rep


def _end(ex: Execution, faults: dict[int, float]) -> float:
    end = ex.end if ex.end is not None else float("inf")
    return min(end, faults.get(ex.pid, float("inf")))


# ---------------------------------------------------------------- processes
def worker_env(audit_dir: Path, faults: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("QML_FAULTS", None)
    if faults:
        env["QML_FAULTS"] = faults
    env["QML_CHAOS_AUDIT"] = str(audit_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def start_worker(
    storage_url: str,
    audit_dir: Path,
    *args: str,
    faults: str | None = None,
    log: Path | None = None,
    app: str = APP,
) -> subprocess.Popen[bytes]:
    """``qml worker tests.chaos.jobs:registry`` (or another ``app``) with extra CLI args."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "qml", "worker", app, "--storage", storage_url]
    cmd += ["--log-level", "warning", *args]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(audit_dir, faults),
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else None,
        )
    finally:
        if not isinstance(out, int):
            out.close()


def children(pid: int) -> list[int]:
    """Live child pids of ``pid`` (the supervisor's worker processes)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def kill9(pid: int) -> float:
    """SIGKILL ``pid``; returns the time of the kill."""
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    return at


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM and wait; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a process to exit by itself; returns the time it was seen gone."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {proc.pid} did not exit within {timeout} s")
        time.sleep(0.02)
    return time.time()


async def wait_final(storage: Storage, n: int, timeout: float) -> None:
    """Wait until ``n`` jobs of this (isolated) store are final; fail after ``timeout``."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        done = await storage.count(JobState.SUCCEEDED) + await storage.count(JobState.FAILED)
        if done >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{n - done} job(s) not final after {timeout} s")
        await asyncio.sleep(0.2)


def record_figures(scenario: str, backend: str, rep: Report, extra: str = "") -> None:
    """Append the figures of one run to $QML_CHAOS_RESULTS (if set)."""
    path = os.environ.get("QML_CHAOS_RESULTS")
    if not path:
        return
    row = {
        "scenario": scenario,
        "backend": backend,
        "at": time.time(),
        "summary": f"{rep.summary()} {extra}".strip(),
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
