"""Several `qml worker` processes on one storage: exactly-once execution in the
normal case, re-runs after `kill -9`, and graceful stop on SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qml import Job, JobState, LeaseLostError, Storage, StorageInstance
from qml.storage.requests import Lease

from .backends import available_backends, backend_urls
from .helpers import executions, start_worker, stop, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(params=available_backends())
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each available backend."""
    return backend_urls(tmp_path)[request.param]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


async def _open(url: str) -> AsyncIterator[Storage]:
    s = await StorageInstance.from_url(url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    async for s in _open(storage_url):
        yield s


@pytest.fixture
async def sqlite_storage(sqlite_url: str) -> AsyncIterator[Storage]:
    async for s in _open(sqlite_url):
        yield s


async def test_four_processes_run_every_job_exactly_once(
    storage: Storage, storage_url: str, tmp_path: Path
) -> None:
    # 2,000 jobs on SQLite (one host), 10,000 on the networked backends
    n = 2000 if storage_url.startswith("sqlite") else 10_000
    ids: list[str] = []
    for start in range(0, n, 500):
        ids += await storage.enqueue_many(
            [Job("record", {"n": i}) for i in range(start, start + 500)]
        )
    exec_db = tmp_path / "exec.db"
    proc = start_worker(
        storage_url,
        exec_db,
        "--processes",
        "4",
        "--workers",
        "8",
        "--burst",
        log=tmp_path / "worker.log",
    )
    try:
        code = proc.wait(480)
    finally:
        stop(proc)
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
    counts = executions(exec_db)
    assert set(counts) == set(ids), f"lost: {len(set(ids) - set(counts))}"
    assert max(counts.values()) == 1, f"duplicates: {[k for k, v in counts.items() if v > 1][:5]}"
    assert await storage.count(JobState.SUCCEEDED) == n


async def test_kill_9_mid_job_is_rerun_and_late_write_refused(
    storage: Storage, storage_url: str, tmp_path: Path
) -> None:
    exec_db = tmp_path / "exec.db"
    job_id = await storage.enqueue(Job("hang_first", {"seconds": 600}))
    first = start_worker(
        storage_url, exec_db, "--workers", "1", "--lease", "2", "--poll-interval", "0.2"
    )
    try:

        async def started() -> bool:
            return executions(exec_db, "start")[job_id] == 1

        await wait_until(started, 60, "the first attempt to start")
        held = await storage.get_job(job_id)
        assert held.state is JobState.PROCESSING and held.lease_token is not None
        old = Lease(held, held.lease_token, held.lease_expires_at or datetime.now(UTC))
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        stop(first)

    second = start_worker(
        storage_url, exec_db, "--workers", "1", "--lease", "2", "--poll-interval", "0.2"
    )
    try:

        async def finished() -> bool:
            return (await storage.get_job(job_id)).state is JobState.SUCCEEDED

        await wait_until(finished, 90, "another process to re-run the job")
    finally:
        assert stop(second) == 0
    job = await storage.get_job(job_id)
    assert job.attempts == 2
    assert job.crashes == 1
    assert executions(exec_db, "start")[job_id] == 2
    assert executions(exec_db, "end")[job_id] == 1
    with pytest.raises(LeaseLostError):
        await storage.complete(old, "late write from the killed attempt")
    assert (await storage.get_job(job_id)).result == "done"


async def test_sigterm_lets_running_jobs_finish(
    sqlite_storage: Storage, sqlite_url: str, tmp_path: Path
) -> None:
    storage, storage_url = sqlite_storage, sqlite_url
    exec_db = tmp_path / "exec.db"
    ids = await storage.enqueue_many([Job("sleepy", {"seconds": 2.0}) for _ in range(10)])
    proc = start_worker(storage_url, exec_db, "--workers", "10", "--shutdown-timeout", "60")
    try:

        async def all_running() -> bool:
            return await storage.count(JobState.PROCESSING) == 10

        await wait_until(all_running, 60, "10 running jobs")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    finally:
        stop(proc)
    jobs = [await storage.get_job(i) for i in ids]
    assert all(j.state is JobState.SUCCEEDED for j in jobs), [j.state for j in jobs]
    assert all(executions(exec_db, "end")[i] == 1 for i in ids)


async def test_sigterm_releases_jobs_past_the_shutdown_timeout(
    sqlite_storage: Storage, sqlite_url: str, tmp_path: Path
) -> None:
    storage, storage_url = sqlite_storage, sqlite_url
    exec_db = tmp_path / "exec.db"
    ids = await storage.enqueue_many([Job("sleepy", {"seconds": 600}) for _ in range(10)])
    proc = start_worker(storage_url, exec_db, "--workers", "10", "--shutdown-timeout", "1")
    try:

        async def all_running() -> bool:
            return await storage.count(JobState.PROCESSING) == 10

        await wait_until(all_running, 60, "10 running jobs")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    jobs = [await storage.get_job(i) for i in ids]
    assert all(j.state is JobState.ENQUEUED for j in jobs), [j.state for j in jobs]
    assert all(j.attempts == 0 for j in jobs)
    assert all(j.history[-1].reason == "shutdown" for j in jobs)


async def test_second_sigterm_releases_at_once(
    sqlite_storage: Storage, sqlite_url: str, tmp_path: Path
) -> None:
    storage, storage_url = sqlite_storage, sqlite_url
    exec_db = tmp_path / "exec.db"
    await storage.enqueue_many([Job("sleepy", {"seconds": 600}) for _ in range(3)])
    log = tmp_path / "worker.log"
    proc = start_worker(
        storage_url, exec_db, "--workers", "3", "--shutdown-timeout", "600", log=log
    )
    try:

        async def all_running() -> bool:
            return await storage.count(JobState.PROCESSING) == 3

        await wait_until(all_running, 60, "3 running jobs")
        proc.send_signal(signal.SIGTERM)

        async def first_handled() -> bool:
            # two SIGTERMs sent before the first is handled merge into one
            started = executions(exec_db, "start").total() == 3
            return started and "received SIGTERM: stopping" in log.read_text()

        await wait_until(first_handled, 30, "the first SIGTERM to be handled")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    assert await storage.count(JobState.ENQUEUED) == 3
