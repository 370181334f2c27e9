"""Writes straight into a backend's storage, bypassing every check of qml: how
tests damage rows the way a hand edit or a bad restore would. Each returns how
many rows (keys) it found to change."""

from __future__ import annotations

from typing import Any

from qml import Storage


def sqlite_update(storage: Storage, sql: str, params: tuple[Any, ...]) -> int:
    """Run one ``UPDATE`` on the SQLite file of ``storage`` from a connection of its own."""
    import sqlite3

    lite = sqlite3.connect(storage.path, timeout=30)  # type: ignore[attr-defined]
    try:
        with lite:
            return lite.execute(sql, params).rowcount
    finally:
        lite.close()


async def postgres_update(storage: Storage, table_suffix: str, sql: str, *args: Any) -> int:
    """Run one ``UPDATE`` on a table of ``storage``'s schema (``{table}`` in ``sql``;
    the job table plus ``table_suffix``) from a connection of its own."""
    import asyncpg

    from qml.storage.postgres import quote_ident

    cfg = storage.config  # type: ignore[attr-defined]
    table = f"{quote_ident(cfg.schema_name)}.{quote_ident(cfg.table_name + table_suffix)}"
    con = await asyncpg.connect(cfg.database_url)
    try:
        status = await con.execute(sql.format(table=table), *args)
    finally:
        await con.close()
    return int(status.split()[-1])


async def redis_hset(storage: Storage, key: str, field: str, value: bytes) -> int:
    """Set one field of a hash of ``storage`` from a client of its own (1 if the hash existed)."""
    from redis.asyncio import Redis

    client = Redis.from_url(storage.config.url)  # type: ignore[attr-defined]
    try:
        found = 1 if await client.exists(key) else 0
        await client.hset(key, field, value)
    finally:
        await client.aclose()
    return found
