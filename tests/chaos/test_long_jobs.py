"""Scenario 3, long jobs are not rescued: a job that runs for many leases, or
keeps its worker's event loop and the GIL busy for longer than its lease, must
not be recovered and run again elsewhere while its holder is alive (leases are
renewed from a thread of their own, see qml.server.leases)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from qml import Job, JobState, Storage, StorageInstance

from ..acceptance.backends import backend_urls
from .harness import (
    FINAL,
    analyze,
    final_states,
    load_audit,
    record_figures,
    start_worker,
    stop,
    wait_final,
)

pytestmark = pytest.mark.timeout(300)

LEASE = 1.0


async def test_loop_hogging_job_is_not_rescued(
    store: tuple[str, str, Storage], tmp_path: Path
) -> None:
    backend, url, storage = store
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


class LongRun(NamedTuple):
    jobs: int
    seconds: float
    lease: float | None  # None: the default lease (30 s)


async def _long_jobs_with_gil_hog(tmp_path: Path, run: LongRun) -> None:
    """On every backend at once: 4 worker processes, one of them running a job
    that holds the event loop and the GIL in bursts for most of the run, take
    ``run.jobs`` jobs of ``run.seconds`` each; none may be rescued or run twice."""
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    urls = backend_urls(tmp_path)
    stores = {name: await StorageInstance.from_url(url) for name, url in urls.items()}
    procs: list[subprocess.Popen[bytes]] = []
    ids: dict[str, list[str]] = {}
    hogs: dict[str, str] = {}
    share = run.jobs // 4  # jobs per process
    try:
        common = ["--poll-interval", "0.5", "--no-cleanup"]
        if run.lease is not None:
            common += ["--lease", str(run.lease)]
        for name, url in urls.items():
            audit_dir = tmp_path / f"audit-{name}"
            # Process 0 takes its share from queue "a" and, with its one spare
            # slot, the hog; the others share queue "default".
            first = ["--queues", "a,hog", "--workers", str(share + 1)]
            procs.append(
                start_worker(url, audit_dir, *common, *first, log=tmp_path / f"{name}.log")
            )
            for _ in range(3):
                rest = ["--workers", str(share)]
                procs.append(
                    start_worker(url, audit_dir, *common, *rest, log=tmp_path / f"{name}.log")
                )
            long = {"ms": run.seconds * 1000}
            ids[name] = await stores[name].enqueue_many(
                [Job("work", long, queue="a") for _ in range(share)]
                + [Job("work", long) for _ in range(run.jobs - share)]
            )
        for name, store in stores.items():
            await _until(store, lambda n: n >= run.jobs, "every job to start")
            hogs[name] = await store.enqueue(
                Job("gil_hog", {"seconds": run.seconds - 5}, queue="hog")
            )
        for store in stores.values():
            await _until(store, lambda n: n == run.jobs + 1, "the hog to start")
        for store in stores.values():
            await wait_final(store, run.jobs + 1, timeout=run.seconds * 3 + 120)
    finally:
        for proc in procs:
            stop(proc)
        for store in stores.values():
            await store.close()
    for name, url in urls.items():
        async with await StorageInstance.from_url(url) as store:
            every = [*ids[name], hogs[name]]
            final = await final_states(store, every)
            execs = load_audit(tmp_path / f"audit-{name}")
            rep = analyze(every, final, execs, {})
            record_figures("long_jobs_gil_hog", name, rep, f"lease={run.lease or 30}")
            rescued = [i for i in every if final[i].expired]
            assert not rescued, (name, len(rescued), rep.summary())
            assert not rep.lost and not rep.dup and not rep.overlap, (name, rep.summary())
            assert rep.executions == len(every), (name, rep.summary())
            assert all(f.state is JobState.SUCCEEDED and f.attempts == 1 for f in final.values())


async def _until(storage: Storage, ok: Callable[[int], bool], what: str) -> None:
    """Wait until the number of Processing jobs satisfies ``ok``."""
    deadline = time.monotonic() + 120
    while not ok(await storage.count(JobState.PROCESSING)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(600)
async def test_long_jobs_with_gil_hog(tmp_path: Path) -> None:
    """Short version: 40 jobs of a minute, a 5 s lease (each job spans 12 leases)."""
    await _long_jobs_with_gil_hog(tmp_path, LongRun(jobs=40, seconds=60, lease=5))


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
async def test_long_jobs_with_gil_hog_full(tmp_path: Path) -> None:
    """40 jobs of 3 minutes with the default lease, then with a 5 s lease."""
    await _long_jobs_with_gil_hog(tmp_path / "default", LongRun(jobs=40, seconds=180, lease=None))
    await _long_jobs_with_gil_hog(tmp_path / "short", LongRun(jobs=40, seconds=180, lease=5))
