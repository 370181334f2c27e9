"""A recurring template damaged straight in storage (edited by hand, a bad
restore) must not stop the others from being listed, claimed and fired."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from qml.config import ServerConfig
from qml.job import JobState
from qml.serialization import CorruptPayload
from qml.server.recurring import RecurringJobPoller
from qml.storage.base import Storage
from qml.storage.requests import JobQuery, RecurringTemplate


async def damage(storage: Storage, template_id: str) -> None:
    """Write undecodable arguments (Redis: the whole spec) into one template."""
    backend = storage.backend_name
    if backend == "sqlite":
        import sqlite3

        lite = sqlite3.connect(storage.path, timeout=30)  # type: ignore[attr-defined]
        try:
            with lite:
                n = lite.execute(
                    "UPDATE qml_recurring SET args = 'not json' WHERE id = ?", (template_id,)
                ).rowcount
        finally:
            lite.close()
    elif backend == "postgres":
        import asyncpg

        from qml.storage.postgres import quote_ident

        cfg = storage.config  # type: ignore[attr-defined]
        table = f"{quote_ident(cfg.schema_name)}.{quote_ident(cfg.table_name + '_recurring')}"
        con = await asyncpg.connect(cfg.database_url)
        try:  # valid for PostgreSQL's json type, out of range for any decoder
            status = await con.execute(
                f"UPDATE {table} SET args = '1e999'::json WHERE id = $1", template_id
            )
        finally:
            await con.close()
        n = int(status.split()[-1])
    elif backend == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(storage.config.url)  # type: ignore[attr-defined]
        try:
            key = storage.keys.recurring_key(template_id)  # type: ignore[attr-defined]
            n = 1 if await client.exists(key) else 0
            await client.hset(key, "spec", b"{not json")
        finally:
            await client.aclose()
    else:
        pytest.skip(f"no raw write for {backend}")
    assert n == 1


async def test_a_damaged_template_does_not_stop_the_others(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    due = datetime.now(UTC) - timedelta(seconds=1)
    for tid in ("a-before", "broken", "z-after"):
        await storage.upsert_recurring(
            RecurringTemplate(tid, "*/5 * * * * *", "tick", {"t": tid}, next_run_at=due)
        )
    await damage(storage, "broken")

    listed = {t.id: t for t in await storage.list_recurring()}
    assert {"a-before", "z-after"} <= set(listed)
    if "broken" in listed:  # SQLite, PostgreSQL: listed with a marker for its args
        assert isinstance(listed["broken"].args, CorruptPayload)

    poller = RecurringJobPoller(storage, ServerConfig("srv-1"))
    with caplog.at_level(logging.WARNING):
        await poller.run_once()
    assert poller.fired == 2
    page = await storage.list_jobs(JobQuery(states=frozenset({JobState.ENQUEUED})))
    assert sorted(j.args["t"] for j in page.items) == ["a-before", "z-after"]
    assert "broken" in caplog.text
