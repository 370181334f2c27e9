"""PostgreSQL setup and operations: the schema installs itself, jobs are
enqueued (also inside an application transaction) and a server runs them.

Needs a PostgreSQL server: ``DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Everything is created in the
schema ``qml_example_simple`` and dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from qml import BackgroundJobServer, JobState, ServerConfig, StorageInstance, WorkerRegistry
from qml.storage.postgres import PostgresConfig, quote_ident

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "qml_example_simple"

registry = WorkerRegistry()


@registry.job("send_email")
async def send_email(to: str, subject: str) -> str:
    return f"sent {subject!r} to {to}"


async def main() -> None:
    config = (
        PostgresConfig.from_env()  # DATABASE_URL, QML_MAX_CONNECTIONS, ...
        .with_database_url(DATABASE_URL)
        .with_schema_name(SCHEMA)
        .with_auto_migrate(True)
        .with_max_connections(10)
    )
    storage = await StorageInstance.postgres(config)  # installs the schema on first use
    try:
        print(
            f"PostgreSQL storage ready (schema {SCHEMA}, version {storage.schema_version()}, "
            f"synchronous_commit={storage.synchronous_commit})"
        )
        registry.storage = storage
        ids = [await send_email.enqueue(f"user{i}@example.com", "welcome") for i in range(5)]

        # Transactional enqueue: the job exists if and only if the order is committed.
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            async with conn.transaction():
                order_id = await conn.fetchval("SELECT 42")  # the application's own write
                ids.append(
                    await storage.enqueue(
                        send_email.build("billing@example.com", f"order {order_id}"),
                        connection=conn,
                    )
                )
        finally:
            await conn.close()

        # A 60 s polling interval: jobs start at once anyway, woken by LISTEN/NOTIFY.
        server_config = ServerConfig("postgres-example", worker_count=4, polling_interval=60)
        async with BackgroundJobServer(server_config, storage, registry):
            late = await send_email.enqueue("late@example.com", "woken by NOTIFY")
            ids.append(late)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                jobs = [await storage.get_job(i) for i in ids]
                if all(job.is_final for job in jobs):
                    break
                await asyncio.sleep(0.05)
        jobs = [await storage.get_job(i) for i in ids]
        for job in jobs:
            print(f"{job.id}  {job.state.label:<9}  {job.result}")
        assert all(j.state is JobState.SUCCEEDED for j in jobs)
        stats = await storage.stats(history_minutes=1)
        print(
            f"succeeded: {stats.counts[JobState.SUCCEEDED]}, "
            f"jobs in 'default': {await storage.get_job_count('default')}"
        )
    finally:
        await storage.close()
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
