"""Recurring templates: persistence, claim-and-park, claim expiry, tick deduplication."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from qml.errors import ConfigurationError, SerializationError
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import MisfirePolicy, RecurringClaim, RecurringTemplate

from .support import assert_recent, assert_time, utcnow


def template(
    tid: str = "report", next_run_at: datetime | None = None, **fields: object
) -> RecurringTemplate:
    t = RecurringTemplate(
        tid, "0 0 9 * * *", "generate_report", {"kind": "daily"}, next_run_at=next_run_at
    )
    for name, value in fields.items():
        setattr(t, name, value)
    return t


async def claim(
    storage: Storage,
    at: datetime,
    server: str = "srv-1",
    *,
    limit: int = 10,
    claim_seconds: float = 30.0,
) -> list[RecurringClaim]:
    return await storage.claim_due_recurring(
        server, limit=limit, claim_seconds=claim_seconds, now=at
    )


async def test_upsert_get_list_remove(storage: Storage) -> None:
    t0 = utcnow()
    full = RecurringTemplate(
        "b-nightly",
        "*/5 * * * *",
        "cleanup",
        {"deep": [1, {"x": None}]},
        queue="maint",
        timezone="Europe/Paris",
        misfire=MisfirePolicy.SKIP,
        max_catchup=3,
        priority=4,
        max_retries=2,
        paused=True,
        next_run_at=t0 + timedelta(minutes=5),
    )
    await storage.upsert_recurring(full)
    await storage.upsert_recurring(template("a-report", t0))
    got = await storage.get_recurring("b-nightly")
    assert got is not None
    assert (got.id, got.cron, got.method, got.args, got.queue, got.timezone) == (
        "b-nightly",
        "*/5 * * * *",
        "cleanup",
        {"deep": [1, {"x": None}]},
        "maint",
        "Europe/Paris",
    )
    assert (got.misfire, got.max_catchup, got.priority, got.max_retries, got.paused) == (
        MisfirePolicy.SKIP,
        3,
        4,
        2,
        True,
    )
    assert_time(got.next_run_at, t0 + timedelta(minutes=5))
    assert got.last_run_at is None and got.last_job_id is None
    assert got.claimed_by is None and got.claim_expires_at is None
    assert_recent(got.created_at)
    assert_recent(got.updated_at)
    assert [t.id for t in await storage.list_recurring()] == ["a-report", "b-nightly"]
    assert await storage.remove_recurring("a-report") is True
    assert await storage.remove_recurring("a-report") is False
    assert await storage.get_recurring("a-report") is None
    assert [t.id for t in await storage.list_recurring()] == ["b-nightly"]


async def test_upsert_replaces_and_keeps_created_at(storage: Storage) -> None:
    await storage.upsert_recurring(template())
    first = await storage.get_recurring("report")
    assert first is not None and first.created_at is not None
    await storage.upsert_recurring(template(cron="* * * * *", args={"kind": "hourly"}))
    got = await storage.get_recurring("report")
    assert got is not None
    assert (got.cron, got.args) == ("* * * * *", {"kind": "hourly"})
    assert_time(got.created_at, first.created_at)
    assert len(await storage.list_recurring()) == 1


async def test_upsert_validates(storage: Storage) -> None:
    with pytest.raises(ConfigurationError):
        await storage.upsert_recurring(template(""))
    with pytest.raises(ConfigurationError):
        await storage.upsert_recurring(template(method=""))
    with pytest.raises(ConfigurationError):
        await storage.upsert_recurring(template(queue=""))
    with pytest.raises(SerializationError):
        await storage.upsert_recurring(template(args={"x": object()}))
    assert await storage.list_recurring() == []


async def test_pause_a_template(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    assert await storage.set_recurring_paused("report", True) is True
    got = await storage.get_recurring("report")
    assert got is not None and got.paused is True
    assert await claim(storage, t0 + timedelta(seconds=1)) == []
    assert await storage.set_recurring_paused("report", False) is True
    assert len(await claim(storage, t0 + timedelta(seconds=1))) == 1
    assert await storage.set_recurring_paused("missing", True) is False


async def test_claim_due_takes_only_due_unclaimed_templates(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template("due", t0))
    await storage.upsert_recurring(template("future", t0 + timedelta(minutes=1)))
    await storage.upsert_recurring(template("never", None))
    await storage.upsert_recurring(template("paused", t0, paused=True))
    at = t0 + timedelta(seconds=5)
    claims = await claim(storage, at, claim_seconds=30)
    assert [c.template.id for c in claims] == ["due"]
    c = claims[0]
    assert c.token
    assert_time(c.now, at)
    assert_time(c.template.next_run_at, t0)
    got = await storage.get_recurring("due")
    assert got is not None and got.claimed_by is not None
    assert_time(got.claim_expires_at, at + timedelta(seconds=30))
    assert await claim(storage, at, server="srv-2") == []  # held


async def test_claim_due_respects_the_limit(storage: Storage) -> None:
    t0 = utcnow()
    for i in range(5):
        await storage.upsert_recurring(template(f"t{i}", t0))
    at = t0 + timedelta(seconds=1)
    first = await claim(storage, at, limit=2)
    second = await claim(storage, at, limit=2)
    third = await claim(storage, at, limit=2)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert len({c.template.id for c in first + second + third}) == 5
    assert await claim(storage, at) == []


async def test_park_enqueues_and_moves_to_the_next_tick(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (c,) = await claim(storage, t0 + timedelta(seconds=1))
    nxt = t0 + timedelta(days=1)
    job = Job("generate_report", {"kind": "daily"}, dedup_key=f"report:{t0.timestamp()}")
    assert await storage.park_recurring(c, next_run_at=nxt, last_run_at=t0, jobs=[job]) is True
    stored = await storage.get_job(job.id)
    assert (stored.state, stored.method, stored.args) == (
        JobState.ENQUEUED,
        "generate_report",
        {"kind": "daily"},
    )
    got = await storage.get_recurring("report")
    assert got is not None
    assert_time(got.next_run_at, nxt)
    assert_time(got.last_run_at, t0)
    assert got.last_job_id == job.id
    assert got.claimed_by is None and got.claim_expires_at is None
    assert await claim(storage, t0 + timedelta(hours=1)) == []  # next tick not due
    assert len(await claim(storage, nxt)) == 1
    # the used token cannot park again
    assert await storage.park_recurring(c, next_run_at=nxt, last_run_at=t0, jobs=[]) is False


async def test_park_without_jobs_or_next_tick(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (c,) = await claim(storage, t0)
    assert await storage.park_recurring(c, next_run_at=None, last_run_at=None, jobs=[]) is True
    got = await storage.get_recurring("report")
    assert got is not None
    assert got.next_run_at is None and got.last_run_at is None and got.claimed_by is None
    assert await claim(storage, t0 + timedelta(days=400)) == []
    assert await storage.count() == 0


async def test_an_expired_claim_is_taken_over(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (first,) = await claim(storage, t0, server="srv-1", claim_seconds=10)
    assert await claim(storage, t0 + timedelta(seconds=9), server="srv-2") == []
    (second,) = await claim(storage, t0 + timedelta(seconds=11), server="srv-2")
    assert second.token != first.token
    late = Job("generate_report", {"from": "srv-1"})
    nxt = t0 + timedelta(hours=1)
    assert (
        await storage.park_recurring(first, next_run_at=nxt, last_run_at=t0, jobs=[late]) is False
    )
    assert await storage.get(late.id) is None
    assert await storage.count() == 0
    got = await storage.get_recurring("report")
    assert got is not None and got.claimed_by is not None
    assert_time(got.next_run_at, t0)
    job = Job("generate_report", {"from": "srv-2"})
    assert await storage.park_recurring(second, next_run_at=nxt, last_run_at=t0, jobs=[job]) is True
    assert await storage.count() == 1


async def test_park_of_a_removed_template(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (c,) = await claim(storage, t0)
    await storage.remove_recurring("report")
    assert await storage.park_recurring(c, next_run_at=t0, last_run_at=t0, jobs=[Job("m")]) is False
    assert await storage.count() == 0


async def test_tick_jobs_are_deduplicated(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (c,) = await claim(storage, t0)
    first = Job("generate_report", dedup_key="report@tick-1")
    assert await storage.park_recurring(c, next_run_at=t0, last_run_at=t0, jobs=[first])
    (c,) = await claim(storage, t0 + timedelta(seconds=1))
    again = Job("generate_report", dedup_key="report@tick-1")
    other = Job("generate_report", dedup_key="report@tick-2")
    t1 = t0 + timedelta(seconds=1)
    assert await storage.park_recurring(c, next_run_at=t1, last_run_at=t1, jobs=[again, other])
    assert await storage.get(again.id) is None
    assert (await storage.get_job(other.id)).state is JobState.ENQUEUED
    assert await storage.count() == 2
    got = await storage.get_recurring("report")
    assert got is not None
    assert got.last_job_id == other.id
    assert_time(got.last_run_at, t1)
    (c,) = await claim(storage, t1)
    assert await storage.park_recurring(c, next_run_at=None, last_run_at=None, jobs=[again])
    got = await storage.get_recurring("report")
    assert got is not None and got.last_job_id == other.id  # nothing new was enqueued


async def test_upsert_keeps_the_claim_and_the_last_run(storage: Storage) -> None:
    t0 = utcnow()
    await storage.upsert_recurring(template(next_run_at=t0))
    (c,) = await claim(storage, t0)
    job = Job("generate_report")
    assert await storage.park_recurring(c, next_run_at=t0, last_run_at=t0, jobs=[job])
    (c,) = await claim(storage, t0 + timedelta(seconds=1), claim_seconds=60)
    held = await storage.get_recurring("report")
    assert held is not None
    await storage.upsert_recurring(template(cron="* * * * * *", next_run_at=t0))
    got = await storage.get_recurring("report")
    assert got is not None
    assert got.cron == "* * * * * *"
    assert got.claimed_by == held.claimed_by
    assert_time(got.claim_expires_at, t0 + timedelta(seconds=61))
    assert_time(got.last_run_at, t0)
    assert got.last_job_id == job.id
    assert await claim(storage, t0 + timedelta(seconds=2), server="srv-2") == []
    assert (
        await storage.park_recurring(
            c, next_run_at=t0 + timedelta(hours=1), last_run_at=None, jobs=[]
        )
        is True
    )
    got = await storage.get_recurring("report")
    assert got is not None
    assert_time(got.last_run_at, t0)  # not given: unchanged
    assert got.claimed_by is None
