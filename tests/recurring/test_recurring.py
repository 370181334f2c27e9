"""Recurring templates on every backend: misfire policies, claim-and-park,
tick identity surviving cleanup, pause/resume/trigger. Time is moved with
explicit ``now`` so no test sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from qml import DuplicateJobError, Job, JobState, Storage
from qml.errors import ConfigurationError, JobNotFoundError
from qml.recurring import (
    fire_claim,
    schedule_recurring,
    set_paused,
    tick_key,
    trigger_recurring,
)
from qml.storage.base import CAP_DURABLE
from qml.storage.requests import JobQuery, MisfirePolicy

EVERY_MINUTE = "0 * * * * *"


def _t0() -> datetime:
    """A whole minute in the near future (so storage-clock backends agree)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now + timedelta(minutes=2)


async def _jobs(storage: Storage, method: str) -> list[Job]:
    page = await storage.list_jobs(JobQuery(method=method, limit=1000, ascending=True))
    return page.items


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(MisfirePolicy.FIRE_ONCE, 1), (MisfirePolicy.SKIP, 0), (MisfirePolicy.FIRE_ALL, 10)],
)
async def test_misfire_policy_after_ten_missed_ticks(
    storage: Storage, policy: MisfirePolicy, expected: int
) -> None:
    t0 = _t0()
    tpl = await schedule_recurring(
        storage,
        "report",
        EVERY_MINUTE,
        "make_report",
        {"k": 1},
        misfire=policy,
        now=t0 - timedelta(seconds=30),
    )
    assert tpl.next_run_at == t0
    # no server ran for ten ticks: t0 .. t0+9min are due, the newest 30 s ago
    late = t0 + timedelta(minutes=9, seconds=30)
    claims = await storage.claim_due_recurring("srv-a", now=late)
    assert [c.template.id for c in claims] == ["report"]
    fired = await fire_claim(storage, claims[0])
    jobs = await _jobs(storage, "make_report")
    assert fired == expected
    assert len(jobs) == expected
    if policy is MisfirePolicy.FIRE_ALL:
        assert [j.meta["tick"] for j in jobs] == [
            (t0 + timedelta(minutes=i)).isoformat() for i in range(10)
        ]
    if policy is MisfirePolicy.FIRE_ONCE:
        assert jobs[0].meta["tick"] == (t0 + timedelta(minutes=9)).isoformat()
        assert jobs[0].args == {"k": 1}
        assert jobs[0].meta["trigger"] == "schedule"
    after = await storage.get_recurring("report")
    assert after is not None
    assert after.next_run_at == t0 + timedelta(minutes=10)
    assert after.claimed_by is None


async def test_on_time_tick_fires_under_every_policy(storage: Storage) -> None:
    t0 = _t0()
    for policy in MisfirePolicy:
        await schedule_recurring(
            storage,
            f"t-{policy.value}",
            EVERY_MINUTE,
            f"m_{policy.value}",
            misfire=policy,
            now=t0 - timedelta(seconds=5),
        )
    claims = await storage.claim_due_recurring("srv", now=t0 + timedelta(seconds=1))
    assert len(claims) == 3
    for claim in claims:
        assert await fire_claim(storage, claim) == 1


async def test_max_catchup_caps_fire_all(storage: Storage) -> None:
    t0 = _t0()
    await schedule_recurring(
        storage,
        "cap",
        EVERY_MINUTE,
        "capped",
        misfire=MisfirePolicy.FIRE_ALL,
        max_catchup=3,
        now=t0 - timedelta(seconds=1),
    )
    (claim,) = await storage.claim_due_recurring("srv", now=t0 + timedelta(minutes=20))
    assert await fire_claim(storage, claim) == 3
    ticks = [j.meta["tick"] for j in await _jobs(storage, "capped")]
    assert ticks == [(t0 + timedelta(minutes=m)).isoformat() for m in (18, 19, 20)]


async def test_stale_claim_holder_cannot_fire_a_tick_again(storage: Storage) -> None:
    t0 = _t0()
    await schedule_recurring(storage, "r", EVERY_MINUTE, "tick", now=t0 - timedelta(seconds=1))
    (stale,) = await storage.claim_due_recurring(
        "paused-server", claim_seconds=10, now=t0 + timedelta(seconds=1)
    )
    # nobody else may claim while the claim holds
    assert await storage.claim_due_recurring("other", now=t0 + timedelta(seconds=5)) == []
    # the holder is paused past its claim; another server takes over and fires the tick
    (fresh,) = await storage.claim_due_recurring(
        "other", claim_seconds=10, now=t0 + timedelta(seconds=12)
    )
    assert await fire_claim(storage, fresh) == 1
    # the paused holder wakes up and tries to park: refused, nothing written
    assert await fire_claim(storage, stale) == 0
    jobs = await _jobs(storage, "tick")
    assert len(jobs) == 1
    # and even storage refuses a second job for the same tick identity
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("tick", dedup_key=tick_key("r", t0)))


async def test_tick_identity_outlives_cleanup_of_its_job(storage: Storage) -> None:
    t0 = _t0()
    await schedule_recurring(storage, "r", EVERY_MINUTE, "tick", now=t0 - timedelta(seconds=1))
    (claim,) = await storage.claim_due_recurring("a", now=t0 + timedelta(seconds=1))
    assert await fire_claim(storage, claim) == 1
    (job,) = await _jobs(storage, "tick")
    await storage.delete(job.id)
    removed = await storage.delete_expired(now=t0 + timedelta(days=30))
    assert removed == 1
    assert await storage.get(job.id) is None
    # the template is put back to the same tick (as a confused writer might); the tick
    # job is still refused
    tpl = await storage.get_recurring("r")
    assert tpl is not None
    tpl.next_run_at = t0
    await storage.upsert_recurring(tpl)
    (again,) = await storage.claim_due_recurring("b", now=t0 + timedelta(seconds=2))
    await fire_claim(storage, again)
    assert await _jobs(storage, "tick") == []


async def test_upsert_updates_and_keeps_next_tick(storage: Storage) -> None:
    t0 = _t0()
    first = await schedule_recurring(
        storage, "r", EVERY_MINUTE, "a", {"v": 1}, now=t0 - timedelta(seconds=1)
    )
    second = await schedule_recurring(
        storage, "r", EVERY_MINUTE, "b", {"v": 2}, queue="q", now=t0 - timedelta(seconds=1)
    )
    assert second.next_run_at == first.next_run_at
    assert (second.method, second.args, second.queue) == ("b", {"v": 2}, "q")
    assert len(await storage.list_recurring()) == 1
    changed = await schedule_recurring(
        storage, "r", "0 0 * * * *", "b", now=t0 - timedelta(seconds=1)
    )
    assert changed.cron == "0 0 * * * *"
    assert changed.next_run_at is not None
    assert changed.next_run_at.minute == 0


async def test_invalid_templates_are_rejected_at_schedule(storage: Storage) -> None:
    with pytest.raises(ConfigurationError, match="cron"):
        await schedule_recurring(storage, "bad", "not a cron", "m")
    with pytest.raises(ConfigurationError, match="time zone"):
        await schedule_recurring(storage, "bad", EVERY_MINUTE, "m", timezone="Nowhere/City")
    with pytest.raises(ConfigurationError, match="misfire"):
        await schedule_recurring(storage, "bad", EVERY_MINUTE, "m", misfire="sometimes")
    assert await storage.list_recurring() == []


async def test_pause_resume_trigger_remove(storage: Storage) -> None:
    t0 = _t0()
    await schedule_recurring(storage, "r", EVERY_MINUTE, "tick", now=t0 - timedelta(seconds=1))
    paused = await set_paused(storage, "r", True)
    assert paused.paused
    assert await storage.claim_due_recurring("a", now=t0 + timedelta(minutes=5)) == []
    resumed = await set_paused(storage, "r", False, now=t0 + timedelta(minutes=5, seconds=1))
    assert not resumed.paused
    assert resumed.next_run_at == t0 + timedelta(minutes=6)  # no catch-up of the pause
    job_id = await trigger_recurring(storage, "r")
    job = await storage.get_job(job_id)
    assert job.meta == {"recurring": "r", "trigger": "manual"}
    assert job.state is JobState.ENQUEUED
    assert await storage.remove_recurring("r")
    assert not await storage.remove_recurring("r")
    with pytest.raises(JobNotFoundError):
        await trigger_recurring(storage, "r")


@pytest.mark.requires(CAP_DURABLE)
async def test_templates_survive_reopen(
    storage: Storage, make_storage: Callable[..., Awaitable[Storage]]
) -> None:
    t0 = _t0()
    await schedule_recurring(
        storage,
        "keep",
        EVERY_MINUTE,
        "tick",
        {"a": [1, 2]},
        timezone="Europe/Oslo",
        misfire=MisfirePolicy.SKIP,
        now=t0 - timedelta(seconds=1),
    )
    await storage.close()
    other = await make_storage()
    tpl = await other.get_recurring("keep")
    assert tpl is not None
    assert (tpl.cron, tpl.args, tpl.timezone, tpl.misfire) == (
        EVERY_MINUTE,
        {"a": [1, 2]},
        "Europe/Oslo",
        MisfirePolicy.SKIP,
    )
    assert tpl.next_run_at == t0
