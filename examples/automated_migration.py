"""Automated migrations with the embedded schema: three strategies and a health check.

* development: the storage installs or upgrades its schema when it opens;
* production: ``auto_migrate`` off, the deployment step migrates explicitly
  (several servers migrating at once is safe: exactly one installs);
* testing: minimal pool, schema installed on open, dropped afterwards.

Needs ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
each strategy works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from enum import Enum
from typing import Any

import asyncpg

from qml import Job, StorageUnavailableError
from qml.storage.postgres import PostgresConfig, PostgresStorage, quote_ident

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


class MigrationStrategy(Enum):
    DEVELOPMENT = "development"  # auto-install the embedded schema
    PRODUCTION = "production"  # manual control: migrate during deployment
    TESTING = "testing"  # minimal resources


class DatabaseManager:
    """Opens storage according to a strategy, with retries and a health check."""

    def __init__(self, database_url: str, strategy: MigrationStrategy, schema: str) -> None:
        self.strategy = strategy
        config = PostgresConfig(database_url, schema_name=schema)
        if strategy is MigrationStrategy.DEVELOPMENT:
            config = config.with_auto_migrate(True).with_max_connections(10)
        elif strategy is MigrationStrategy.PRODUCTION:
            config = (
                config.with_auto_migrate(False).with_max_connections(20).with_min_connections(2)
            )
        else:
            config = config.with_auto_migrate(True).with_max_connections(2).with_min_connections(1)
        self.storage = PostgresStorage(config)

    async def connect(self, attempts: int = 5, delay: float = 0.5) -> None:
        """Open the storage, retrying while the database is unreachable."""
        for attempt in range(1, attempts + 1):
            try:
                await self.storage.open()
                return
            except StorageUnavailableError as exc:
                if attempt == attempts:
                    raise
                print(f"  database not reachable ({exc}); retry {attempt}/{attempts}")
                await asyncio.sleep(delay * attempt)

    async def ensure_schema(self) -> bool:
        """Install or upgrade the schema if needed; True if anything was applied."""
        return await self.storage.migrate_if_needed()

    async def health_check(self) -> dict[str, Any]:
        """Schema present and current, and a basic read works."""
        status = await self.storage.schema_status()
        if not (await self.storage.schema_exists()):
            raise RuntimeError("schema missing")
        return {
            "schema_version": status.current,
            "up_to_date": status.up_to_date,
            "synchronous_commit": self.storage.synchronous_commit,
            "jobs_in_default": await self.storage.get_job_count("default"),
        }

    async def close(self) -> None:
        await self.storage.close()


async def drop_schemas(*schemas: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    schemas = {s: f"qml_example_{s.value}" for s in MigrationStrategy}
    await drop_schemas(*schemas.values())
    try:
        for strategy, schema in schemas.items():
            print(f"[{strategy.value}] schema {schema}")
            if strategy is MigrationStrategy.PRODUCTION:
                # Deployment step: four servers start at once, each tries to migrate.
                managers = [DatabaseManager(DATABASE_URL, strategy, schema) for _ in range(4)]
                for m in managers:
                    await m.connect()
                    assert not await m.storage.schema_exists()
                applied = await asyncio.gather(*(m.ensure_schema() for m in managers))
                print(f"  concurrent migrations applied by {sum(applied)} of {len(applied)}")
                assert sum(applied) == 1
                for m in managers[1:]:
                    await m.close()
                manager = managers[0]
            else:
                manager = DatabaseManager(DATABASE_URL, strategy, schema)
                await manager.connect()  # auto_migrate installs the schema here
                assert await manager.ensure_schema() is False  # already current
            await manager.storage.enqueue(Job("noop", {"strategy": strategy.value}))
            health = await manager.health_check()
            print(f"  health: {health}")
            assert health["up_to_date"] and health["jobs_in_default"] == 1
            await manager.close()
    finally:
        await drop_schemas(*schemas.values())
    print("all strategies healthy; schemas dropped")


if __name__ == "__main__":
    asyncio.run(main())
