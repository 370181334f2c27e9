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

from ..raw_writes import postgres_update, redis_hset, sqlite_update


async def damage(storage: Storage, template_id: str) -> None:
    """Write undecodable arguments (Redis: the whole spec) into one template."""
    backend = storage.backend_name
    if backend == "sqlite":
        sql = "UPDATE qml_recurring SET args = 'not json' WHERE id = ?"
        n = sqlite_update(storage, sql, (template_id,))
    elif backend == "postgres":  # valid for PostgreSQL's json type, out of range for any decoder
        sql = "UPDATE {table} SET args = '1e999'::json WHERE id = $1"
        n = await postgres_update(storage, "_recurring", sql, template_id)
    elif backend == "redis":
        key = storage.keys.recurring_key(template_id)  # type: ignore[attr-defined]
        n = await redis_hset(storage, key, "spec", b"{not json")
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
