"""Recurring (cron) templates: persisted in storage, shared by every server on
it, fired without a leader and never twice for one tick.

Two servers run against one SQLite file; a template fires every second (the
6-field cron form, seconds first). Each tick creates exactly one job.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter

from qml import BackgroundJobServer, ServerConfig, StorageInstance, WorkerRegistry
from qml.storage.requests import JobQuery

registry = WorkerRegistry()


@registry.job("generate_report")
async def generate_report(kind: str) -> str:
    return f"{kind} report"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = StorageInstance.sqlite(os.path.join(tmp, "jobs.db"))
        await storage.open()
        servers = [
            BackgroundJobServer(
                ServerConfig(f"server-{i}", recurring_poll_interval=0.2), storage, registry
            )
            for i in (1, 2)
        ]
        # cron: sec min hour day month dow (the 5-field form works too)
        await servers[0].schedule_recurring(
            "every-second", "* * * * * *", "generate_report", {"kind": "heartbeat"}
        )
        await servers[0].schedule_recurring(
            "daily-report",
            "0 0 9 * * *",
            "generate_report",
            {"kind": "daily"},
            timezone="Europe/Oslo",
        )
        for s in servers:
            await s.start()
        await asyncio.sleep(3.5)
        for s in servers:
            await s.stop()
        for t in await servers[0].list_recurring():
            print(f"{t.id:<13} cron={t.cron!r:<16} tz={t.timezone:<12} next={t.next_run_at}")
        page = await storage.list_jobs(JobQuery(method="generate_report", limit=100))
        ticks = Counter(j.meta["tick"] for j in page.items)
        print(
            f"{len(ticks)} ticks fired by two servers, each exactly once: "
            f"{all(n == 1 for n in ticks.values())}"
        )
        assert ticks
        assert all(n == 1 for n in ticks.values())
        job_id = await servers[0].trigger_recurring("daily-report")
        print(f"triggered daily-report now: job {job_id}")
        await servers[0].remove_recurring("every-second")
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
