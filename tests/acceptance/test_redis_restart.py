"""A Redis server with AOF (appendfsync always), restarted in the middle of a
2,000-job run worked by two `qml worker` processes: no acknowledged job is
lost, the workers reconnect by themselves and finish the run."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import pytest

from qml import Job, JobState, StorageInstance

from ..conftest import services_required
from .helpers import executions, start_worker, stop, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="redis-py not installed")
async def test_workers_survive_a_redis_restart_with_aof(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if services_required():
            pytest.fail("redis-server is required (QML_REQUIRE_SERVICES=1)")
        pytest.skip("redis-server is not installed")
    from ..backends.test_redis import RedisServer

    server = RedisServer(
        shutil.which("redis-server") or "redis-server",
        tmp_path / "redis",
        ("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    )
    server.start()
    url = f"{server.url}?key_prefix=restart"
    exec_db = tmp_path / "exec.db"
    procs = []
    storage = await StorageInstance.from_url(url)
    try:
        ids = []
        for start in range(0, 2000, 500):
            ids += await storage.enqueue_many(
                [Job("record", {"n": i}) for i in range(start, start + 500)]
            )
        await storage.close()
        procs = [
            start_worker(
                url,
                exec_db,
                "--workers",
                "8",
                "--poll-interval",
                "0.2",
                "--lease",
                "5",
                log=tmp_path / f"w{i}.log",
            )
            for i in range(2)
        ]

        async def some_done() -> bool:
            return len(executions(exec_db)) >= 300

        await wait_until(some_done, 120, "300 executions before the restart")
        await asyncio.to_thread(server.stop)  # SHUTDOWN NOSAVE: only the AOF survives
        await asyncio.to_thread(server.start)
        storage = await StorageInstance.from_url(url)

        async def all_done() -> bool:
            return await storage.count(JobState.SUCCEEDED) == 2000

        await wait_until(all_done, 300, "all 2,000 jobs to succeed after the restart")
        assert await storage.count() == 2000
        counts = executions(exec_db)
        assert set(counts) == set(ids)  # every acknowledged job ran
        # re-runs happen only for jobs whose acknowledgement fell in the outage
        assert sum(n - 1 for n in counts.values()) <= 2 * 8
    finally:
        for p in procs:
            assert stop(p, 60) == 0
        await storage.close()
        server.stop()
