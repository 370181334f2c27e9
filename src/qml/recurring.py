"""Recurring (cron) templates: define, pause, trigger, and turn due ticks into jobs.

Templates live in storage and are shared by every server on it. There is no
leader: a server claims a due template (the claim expires, so a server that
dies mid-claim is taken over), enqueues the job(s) for its tick(s) and parks
the template at its next tick, all guarded by the claim token. Each tick's job
carries the deduplication key ``recurring:<id>:<tick>``, which storage refuses
twice, so even a claim holder paused past its claim cannot fire a tick again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .clock import utcnow
from .cron import CronSchedule
from .errors import ConfigurationError, JobNotFoundError
from .job import Job
from .storage.base import Storage
from .storage.requests import MisfirePolicy, RecurringClaim, RecurringTemplate

#: How late a tick may be picked up and still count as on time (not missed).
DEFAULT_MISFIRE_GRACE = 5.0


def tick_key(template_id: str, tick: datetime) -> str:
    """The deterministic identity of one tick's job."""
    return f"recurring:{template_id}:{tick.strftime('%Y-%m-%dT%H:%M:%SZ')}"


async def schedule_recurring(
    storage: Storage,
    template_id: str,
    cron: str,
    method: str,
    args: Any = None,
    queue: str = "default",
    *,
    timezone: str = "UTC",
    misfire: MisfirePolicy | str = MisfirePolicy.FIRE_ONCE,
    max_catchup: int = 100,
    priority: int = 0,
    max_retries: int | None = None,
    now: datetime | None = None,
) -> RecurringTemplate:
    """Create or update a template. An invalid cron expression or time zone raises
    :class:`ConfigurationError` here, not later."""
    schedule = CronSchedule.parse(cron, timezone)
    try:
        policy = MisfirePolicy(misfire)
    except ValueError:
        raise ConfigurationError(
            f"misfire must be one of {', '.join(p.value for p in MisfirePolicy)}"
        ) from None
    if max_catchup < 1:
        raise ConfigurationError("max_catchup must be >= 1")
    existing = await storage.get_recurring(template_id)
    at = now or utcnow()
    next_run = schedule.next_after(at)
    if (
        existing is not None
        and existing.cron == schedule.expression
        and existing.timezone == timezone
        and existing.next_run_at is not None
    ):
        next_run = existing.next_run_at
    template = RecurringTemplate(
        id=template_id,
        cron=schedule.expression,
        method=method,
        args={} if args is None else args,
        queue=queue,
        timezone=timezone,
        misfire=policy,
        max_catchup=max_catchup,
        priority=priority,
        max_retries=max_retries,
        paused=existing.paused if existing is not None else False,
        next_run_at=next_run,
    )
    await storage.upsert_recurring(template)
    stored = await storage.get_recurring(template_id)
    assert stored is not None
    return stored


async def set_paused(
    storage: Storage, template_id: str, paused: bool, now: datetime | None = None
) -> RecurringTemplate:
    """Pause or resume; a resumed template continues from its next tick after now
    (ticks during the pause are not caught up)."""
    template = await storage.get_recurring(template_id)
    if template is None:
        raise JobNotFoundError(f"recurring:{template_id}")
    if not paused and template.paused:
        template.next_run_at = CronSchedule.parse(template.cron, template.timezone).next_after(
            now or utcnow()
        )
        template.paused = False
        await storage.upsert_recurring(template)
    else:
        await storage.set_recurring_paused(template_id, paused)
    result = await storage.get_recurring(template_id)
    assert result is not None
    return result


def template_job(template: RecurringTemplate, tick: datetime | None, trigger: str) -> Job:
    """The job a template creates for ``tick`` (or for a manual trigger)."""
    meta: dict[str, Any] = {"recurring": template.id, "trigger": trigger}
    if tick is not None:
        meta["tick"] = tick.isoformat()
    return Job(
        template.method,
        template.args,
        queue=template.queue,
        priority=template.priority,
        max_retries=template.max_retries,
        dedup_key=tick_key(template.id, tick) if tick is not None else None,
        meta=meta,
    )


async def trigger_recurring(storage: Storage, template_id: str) -> str:
    """Enqueue one run of a template now (``trigger=manual``); return the job id."""
    template = await storage.get_recurring(template_id)
    if template is None:
        raise JobNotFoundError(f"recurring:{template_id}")
    return await storage.enqueue(template_job(template, None, "manual"))


def ticks_to_fire(
    template: RecurringTemplate,
    schedule: CronSchedule,
    now: datetime,
    grace: float = DEFAULT_MISFIRE_GRACE,
) -> list[datetime]:
    """Which due ticks to enqueue, by the template's misfire policy.

    Due ticks are ``next_run_at`` and every later tick up to ``now``. The newest
    due tick is on time if it is at most ``grace`` seconds old; every other due
    tick was missed (no server ran it in time).
    """
    first = template.next_run_at
    if first is None or first > now:
        return []
    due = [first, *schedule.ticks_between(first, now, limit=max(template.max_catchup, 1))]
    if template.misfire is MisfirePolicy.FIRE_ALL:
        return due[-template.max_catchup :]
    newest = due[-1]
    if template.misfire is MisfirePolicy.SKIP:
        return [newest] if now - newest <= timedelta(seconds=grace) else []
    return [newest]


async def fire_claim(
    storage: Storage, claim: RecurringClaim, grace: float = DEFAULT_MISFIRE_GRACE
) -> int:
    """Enqueue the jobs for a claimed template's due ticks and park it at its
    next tick after the storage's ``now``. Returns how many jobs were offered
    (duplicates of ticks already fired are skipped by storage)."""
    template = claim.template
    schedule = CronSchedule.parse(template.cron, template.timezone)
    ticks = ticks_to_fire(template, schedule, claim.now, grace)
    jobs = [template_job(template, tick, "schedule") for tick in ticks]
    parked = await storage.park_recurring(
        claim,
        next_run_at=schedule.next_after(claim.now),
        last_run_at=ticks[-1] if ticks else None,
        jobs=jobs,
    )
    return len(jobs) if parked else 0
