"""Embedded schema installation patterns: custom schema and table names, the
rendered ``install.sql`` for review, manual and conditional migration, and two
installations side by side in one schema.

Needs ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
everything lives in the schema ``qml_example_custom``, dropped at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os

import asyncpg

from qml import Job, JobState
from qml.storage.postgres import (
    PostgresConfig,
    PostgresStorage,
    quote_ident,
    render_install_sql,
)
from qml.storage.requests import ClaimRequest

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "qml_example_custom"


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    billing = PostgresConfig(
        DATABASE_URL, schema_name=SCHEMA, table_name="billing_jobs", auto_migrate=False
    )
    # Names are always quoted identifiers, so unusual ones work too.
    reports = billing.with_table_name('reports "v2"')

    # 1. Review what would be installed (e.g. hand it to a DBA).
    sql = render_install_sql(billing)
    tables = [
        line.split()[2].rsplit(".", 1)[1].strip('"')
        for line in sql.splitlines()
        if line.startswith("CREATE TABLE")
    ]
    print(
        f"install.sql for {SCHEMA}.billing_jobs: {len(sql.splitlines())} lines, "
        f"tables {', '.join(tables)}"
    )

    storages = [PostgresStorage(billing), PostgresStorage(reports)]
    try:
        for storage in storages:
            await storage.open()  # auto_migrate=False: nothing installed yet
            assert not await storage.schema_exists()
            # 2. Migrate only when needed (or when forced by the operator).
            should_migrate = not await storage.schema_exists() or bool(
                os.environ.get("FORCE_MIGRATION")
            )
            if should_migrate:
                applied = await storage.migrate()
                print(f"{storage.names.table}: applied migrations {applied}")
            assert await storage.migrate_if_needed() is False
            status = await storage.schema_status()
            print(
                f"{storage.names.table}: schema version {status.current}, "
                f"up to date: {status.up_to_date}"
            )

        # 3. The two installations share the schema but not their jobs.
        billing_store, reports_store = storages
        await billing_store.enqueue_many([Job("invoice", {"n": n}) for n in range(3)])
        await reports_store.enqueue(Job("monthly_report"))
        (lease,) = await reports_store.claim(ClaimRequest("example", ["default"], 10))
        await reports_store.complete(lease, {"pages": 12})
        print(
            f"billing jobs: {await billing_store.get_job_count('default')}, "
            f"reports succeeded: {await reports_store.count(JobState.SUCCEEDED)}"
        )
        assert await billing_store.count(JobState.ENQUEUED) == 3
        assert await reports_store.count() == 1
    finally:
        for storage in storages:
            await storage.close()
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
