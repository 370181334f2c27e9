"""Scenario 6, storage crash and restart, mid-run, while a producer process
keeps enqueueing:

* PostgreSQL (a cluster of its own, :class:`~tests.chaos.servers.PgCluster`):
  ``pg_ctl stop -m immediate``, then start (crash recovery from the WAL);
* Redis (:class:`~tests.chaos.servers.RedisServer`, ``appendfsync always``):
  ``SHUTDOWN NOSAVE``, then start (the append-only file is loaded);
* SQLite: the storage lives in the processes that open the file, so its crash
  is ``kill -9`` of every one of them (workers and producer), then a restart.

Every job whose enqueue returned is present and succeeds; an enqueue during
the outage fails with a :class:`~qml.errors.StorageError` (nothing else); a
job whose outcome was recorded is never run again (no execution starts after
its final state in the storage's history, which holds exactly one); re-runs
come only from executions in flight across the outage. The time for
throughput to come back to 80 % of its rate before the crash is reported.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from qml import Job, JobState, Storage, StorageInstance

from ..acceptance.backends import available_backends
from ..conftest import services_required
from .harness import (
    FINAL,
    ROOT,
    children,
    final_states,
    kill9,
    load_audit,
    record_figures,
    start_worker,
    stop,
    worker_env,
)
from .outage import Window, analyze_outage, read_produced, throughput_recovery
from .servers import PgCluster, RedisServer, pg_bindir

#: An execution may start this long after the recorded final state only
#: through clock jitter between the storage and the worker (same host).
EPSILON = 0.05
NOT_FINAL = tuple(s for s in JobState if s not in FINAL)


@dataclass
class Crash:
    processes: int
    slots: int
    backlog: int  # enqueued before the workers start
    produced: int  # enqueued by the producer while they run
    rate: float  # the producer's jobs per second
    min_ms: int
    max_ms: int
    lease: float
    crash_at: float  # share of the backlog that succeeds before the crash
    down_for: float
    timeout: float
    #: Seconds within which throughput must be back to 80 % (full size only).
    throughput_bound: float | None = None


SHORT = Crash(2, 10, 600, 400, 40.0, 0, 20, 5.0, 0.25, 2.0, 240.0)


class Backend:
    """One storage to crash: its URL, and how to crash and restart it."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.pg: PgCluster | None = None
        self.redis: RedisServer | None = None
        if name == "postgres":
            if pg_bindir() is None:
                _unavailable("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
            self.pg = PgCluster().init()
            self.url = f"{self.pg.url}?qml_schema=chaos"
        elif name == "redis":
            try:
                self.redis = RedisServer().start()
            except RuntimeError as exc:
                _unavailable(str(exc))
            self.url = f"{self.redis.url}?key_prefix=chaos"
        else:
            self.url = f"sqlite:///{tmp_path / 'qml.db'}"

    def crash(self) -> float:
        if self.pg is not None:
            return self.pg.crash()
        assert self.redis is not None
        return self.redis.crash()

    def restart(self) -> float:
        if self.pg is not None:
            self.pg.start()
        else:
            assert self.redis is not None
            self.redis.start()
        return time.time()

    def close(self) -> None:
        for server in (self.pg, self.redis):
            if server is not None:
                server.close()


def _unavailable(what: str) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} required (QML_REQUIRE_SERVICES=1) but not available", pytrace=False)
    pytest.skip(f"{what} not available")


def start_producer(url: str, out: Path, jobs: int, c: Crash, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "tests.chaos.producer", url, str(out), "--jobs", str(jobs),
        "--rate", str(c.rate), "--min-ms", str(c.min_ms), "--max-ms", str(c.max_ms),
    ]  # fmt: skip
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=worker_env(out.parent), stdout=fh, stderr=subprocess.STDOUT
        )


async def _until_quiet(storage: Storage, timeout: float) -> None:
    """Wait until no job of the store is left in a non-final state."""
    deadline = time.monotonic() + timeout
    while True:
        left = 0
        for state in NOT_FINAL:
            left += await storage.count(state)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{left} job(s) not final after {timeout} s")
        await asyncio.sleep(0.2)


@dataclass
class Outcome:
    ids: list[str]  # every id whose enqueue returned
    down: float
    back: float
    faults: dict[int, float]


async def _run(
    name: str, be: Backend, storage: Storage, tmp_path: Path, c: Crash
) -> tuple[Outcome, Storage]:
    """Run the workers and the producer, crash the storage, wait for the end;
    returns the ids and times, and a storage to read the results with."""
    rng = random.Random(3)
    audit_dir = tmp_path / "audit"
    out = tmp_path / "produced.jsonl"
    wlog, plog = tmp_path / "workers.log", tmp_path / "producer.log"
    common = [
        "--processes", str(c.processes), "--workers", str(c.slots), "--lease", str(c.lease),
        "--poll-interval", "0.2",
    ]  # fmt: skip
    audit_dir.mkdir()
    sup: subprocess.Popen[bytes] | None = None
    prod: subprocess.Popen[bytes] | None = None
    faults: dict[int, float] = {}
    try:
        ids: list[str] = []
        for start in range(0, c.backlog, 500):
            batch = range(start, min(c.backlog, start + 500))
            ids += await storage.enqueue_many(
                [Job("work", {"ms": rng.randint(c.min_ms, c.max_ms)}) for _ in batch]
            )
        sup = start_worker(be.url, audit_dir, *common, log=wlog)
        prod = start_producer(be.url, out, c.produced, c, plog)
        while await storage.count(JobState.SUCCEEDED) < c.crash_at * c.backlog:
            assert sup.poll() is None, wlog.read_text()[-3000:]
            await asyncio.sleep(0.05)
        if name == "sqlite":  # the storage is in these processes: crash them all
            for pid in [sup.pid, prod.pid, *children(sup.pid)]:
                faults[pid] = kill9(pid)
            down = min(faults.values())
            sup.wait(10)
            prod.wait(10)
            await asyncio.sleep(c.down_for)
            back = time.time()
            sup = start_worker(be.url, audit_dir, *common, log=wlog)
            left = c.produced - len(read_produced(out).ok)
            prod = start_producer(be.url, out, left, c, plog)
        else:
            down = be.crash()
            await asyncio.sleep(c.down_for)
            back = be.restart()
            # this process's own connections died with the server: read with fresh ones
            await storage.close()
            storage = await StorageInstance.from_url(be.url)
        while prod.poll() is None:
            await asyncio.sleep(0.2)
        assert prod.returncode == 0, plog.read_text()[-3000:]
        await _until_quiet(storage, c.timeout)
    finally:
        code = stop(sup) if sup is not None else 0
        if prod is not None:
            stop(prod)
    assert code == 0, wlog.read_text()[-3000:]
    return Outcome(ids + read_produced(out).ok, down, back, faults), storage


async def _storage_crash(name: str, tmp_path: Path, c: Crash) -> None:
    be = Backend(name, tmp_path)
    try:
        storage = await StorageInstance.from_url(be.url)
        try:
            run, storage = await _run(name, be, storage, tmp_path, c)
            await _check(name, storage, tmp_path, run, c)
        finally:
            await storage.close()
    finally:
        be.close()


async def _check(name: str, storage: Storage, tmp_path: Path, run: Outcome, c: Crash) -> None:
    produced = read_produced(tmp_path / "produced.jsonl")
    every = run.ids
    missing = [i for i in every if await storage.get(i) is None]
    assert not missing, f"{len(missing)} job(s) whose enqueue returned are gone"
    execs = load_audit(tmp_path / "audit")
    final = await final_states(storage, every)
    rep = analyze_outage(every, final, execs, [Window(run.down, run.back)], run.faults)
    # a recorded final state is the last word: one in the history, nothing after it
    after_ack: list[str] = []
    starts: dict[str, list[float]] = {}
    for e in execs:
        starts.setdefault(e.job_id, []).append(e.start)
    for job_id in every:
        job = await storage.get_job(job_id)
        finals = [h for h in job.history if h.state in FINAL]
        assert len(finals) == 1, (job_id, job.history)
        if any(t > finals[0].at.timestamp() + EPSILON for t in starts.get(job_id, [])):
            after_ack.append(job_id)
    landed = len([i for i in produced.maybe if await storage.get(i) is not None])
    base, recovered = throughput_recovery(execs, run.down, run.back)
    errors = sorted({e.split(":", 1)[0] for e in produced.failed})
    extra = (
        f"down={run.back - run.down:.2f}s enqueued={len(every)}"
        f" enqueue_errors={len(produced.failed)} {errors}"
        f" failed_batches_landed={landed}/{len(produced.maybe)}"
        f" after_ack_reruns={len(after_ack)} rate_before={base:.0f}/s"
        f" back_to_80%={'never' if recovered is None else f'{recovered:.2f}s'}"
    )
    summary = f"{rep.summary()} {extra}"
    print(f"storage crash on {name}: {summary}")
    record_figures("storage_crash", name, rep, extra)
    assert not rep.lost, summary
    assert not rep.unaudited, summary
    assert not rep.dup, summary
    assert not rep.overlap, summary
    assert not after_ack, (summary, after_ack[:10])
    assert all(state is JobState.SUCCEEDED for state, *_ in final.values()), summary
    if name != "sqlite":
        # the producer met the outage (rate × downtime ≫ 1): every failure a StorageError
        assert produced.failed, summary
        assert set(errors) <= {"StorageError", "StorageUnavailableError"}, summary
    if c.throughput_bound is not None:
        assert recovered is not None and recovered <= c.throughput_bound, summary


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", available_backends())
async def test_storage_crash(backend: str, tmp_path: Path) -> None:
    await _storage_crash(backend, tmp_path, SHORT)


@pytest.mark.chaos_full
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("backend", available_backends())
async def test_storage_crash_full(backend: str, tmp_path: Path) -> None:
    jobs = int(os.environ.get("QML_CHAOS_CRASH_JOBS", "10000"))
    full = Crash(2, 10, jobs * 7 // 10, jobs * 3 // 10, 100.0, 0, 20, 5.0, 0.25, 5.0, 1800.0, 15.0)
    await _storage_crash(backend, tmp_path, full)
