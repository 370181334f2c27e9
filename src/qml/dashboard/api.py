"""The REST API under ``/api/v1``: the same reads and actions as the pages.

Reads never change state; actions are POST (or DELETE) and pass the CSRF rules
of :mod:`qml.dashboard.security`. Errors are ``application/problem+json``:
404 unknown job or template, 409 a transition the state machine forbids,
403 refused by the security rules, 422 invalid input.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from .. import recurring as recurring_ops
from ..errors import InvalidTransitionError, JobNotFoundError
from ..job import JobState
from ..storage.requests import JobQuery, Page
from .context import Ctx, DashboardContext
from .schemas import (
    JobDetail,
    JobPage,
    Problem,
    QueueOut,
    RecurringOut,
    ServerOut,
    StatsOut,
    TriggerOut,
)

_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_PROBLEM, "description": "Authentication required"},
    403: {**_PROBLEM, "description": "Refused by the access rules"},
    422: {**_PROBLEM, "description": "Invalid input"},
}
JOB_READ_ERRORS = {**READ_ERRORS, 404: {**_PROBLEM, "description": "No such job"}}
ACTION_ERRORS = {
    **JOB_READ_ERRORS,
    409: {**_PROBLEM, "description": "The job's state does not allow this action"},
}

router = APIRouter(prefix="/api/v1")

_STATE_NAMES = "|".join([s.value for s in JobState] + [s.label for s in JobState])
#: A job id, queue name or template id in a path (storage refuses NUL and line breaks).
NAME = Path(pattern=r"^[^\x00\r\n]+$", min_length=1, max_length=200)
JobId = Annotated[str, NAME]
Name = Annotated[str, NAME]

#: One or more states (values like ``awaiting_retry`` or labels like ``AwaitingRetry``).
STATES_PATTERN = f"^({_STATE_NAMES})(,({_STATE_NAMES}))*$"


def parse_states(value: str | None) -> frozenset[JobState] | None:
    """``failed`` or ``failed,awaiting_retry`` (values or labels) to states."""
    if not value:
        return None
    by_name = {s.value: s for s in JobState} | {s.label.lower(): s for s in JobState}
    out = set()
    for part in value.split(","):
        key = part.strip().lower()
        if not key:
            continue
        if key not in by_name:
            raise HTTPException(422, f"unknown state {part.strip()!r}")
        out.add(by_name[key])
    return frozenset(out) or None


def job_query(
    state: str | None,
    queue: str | None,
    method: str | None,
    text: str | None,
    cursor: str | None,
    limit: int,
) -> JobQuery:
    return JobQuery(
        states=parse_states(state),
        queue=queue or None,
        method=method or None,
        text=text or None,
        cursor=cursor or None,
        limit=limit,
    )


async def find_jobs(ctx: DashboardContext, query: JobQuery, error: str | None) -> Page:
    """``list_jobs``, narrowed to one error group when ``error`` is a fingerprint."""
    if error:
        from .error_groups import list_group_jobs

        return await list_group_jobs(ctx.storage, query, error)
    return await ctx.storage.list_jobs(query)


# ---------------------------------------------------------------------- reads
@router.get("/stats", response_model=StatsOut, responses=READ_ERRORS, tags=["stats"])
async def get_stats(ctx: Ctx, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    """Counts by state and by queue, and succeeded/failed per minute."""
    stats = await ctx.storage.stats(history_minutes=minutes)
    return {
        "counts": {s.value: n for s, n in stats.counts.items()},
        "by_queue": {
            q: {s.value: n for s, n in c.items()} for q, c in sorted(stats.by_queue.items())
        },
        "total": stats.total,
        "history": [
            {"minute": m.minute.isoformat(), "succeeded": m.succeeded, "failed": m.failed}
            for m in stats.history
        ],
    }


@router.get("/jobs", response_model=JobPage, responses=READ_ERRORS, tags=["jobs"])
async def list_jobs(
    ctx: Ctx,
    state: Annotated[
        str | None, Query(description="State(s), comma separated", pattern=STATES_PATTERN)
    ] = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    method: Annotated[str | None, Query(max_length=200)] = None,
    text: Annotated[
        str | None, Query(max_length=200, description="Substring of args/id/error")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    error: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{12}$", description="Jobs of this error group (fingerprint)"),
    ] = None,
) -> dict[str, Any]:
    """A page of jobs, newest first; follow ``next_cursor`` for the next page."""
    page = await find_jobs(ctx, job_query(state, queue, method, text, cursor, limit), error)
    return {
        "items": [ctx.views.job_summary(j) for j in page.items],
        "next_cursor": page.next_cursor,
    }


async def _job(ctx: DashboardContext, job_id: str) -> dict[str, Any]:
    job = await ctx.storage.get(job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    return ctx.views.job_detail(job)


@router.get(
    "/jobs/{job_id:path}", response_model=JobDetail, responses=JOB_READ_ERRORS, tags=["jobs"]
)
async def get_job(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """One job with its args, result, error, traceback and state history."""
    return await _job(ctx, job_id)


@router.get("/queues", response_model=list[QueueOut], responses=READ_ERRORS, tags=["queues"])
async def list_queues(ctx: Ctx) -> list[dict[str, Any]]:
    """Every queue with counts, oldest Enqueued job age and paused flag."""
    now = ctx.storage.now()
    return [ctx.views.queue(q, now) for q in await ctx.storage.queues()]


@router.get(
    "/recurring", response_model=list[RecurringOut], responses=READ_ERRORS, tags=["recurring"]
)
async def list_recurring(ctx: Ctx) -> list[dict[str, Any]]:
    """Recurring templates with their next fire times."""
    now = ctx.storage.now()
    return [ctx.views.recurring(t, now) for t in await ctx.storage.list_recurring()]


@router.get("/servers", response_model=list[ServerOut], responses=READ_ERRORS, tags=["servers"])
async def list_servers(ctx: Ctx) -> list[dict[str, Any]]:
    """Registered servers with heartbeat age and busy slots."""
    now = ctx.storage.now()
    return [
        ctx.views.server(s, now, ctx.server_dead_after) for s in await ctx.storage.list_servers()
    ]


# ---------------------------------------------------------------------- job actions
def _ensure(moved: bool, job_state: JobState, action: str) -> None:
    if not moved:
        raise InvalidTransitionError(f"a {job_state.label} job cannot be {action}")


@router.post(
    "/jobs/{job_id:path}:retry", response_model=JobDetail, responses=ACTION_ERRORS, tags=["jobs"]
)
async def retry_job(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """Requeue a Failed, Succeeded, Deleted, AwaitingRetry or Scheduled job now."""
    await ctx.storage.requeue(job_id, reason="retried from the dashboard")
    return await _job(ctx, job_id)


@router.post(
    "/jobs/{job_id:path}:run-now",
    response_model=JobDetail,
    responses=ACTION_ERRORS,
    tags=["jobs"],
)
async def run_job_now(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """Enqueue a Scheduled or AwaitingRetry job now instead of at its run time."""
    job = await ctx.storage.get_job(job_id)
    moved = await ctx.storage.move(
        [job_id],
        JobState.ENQUEUED,
        reason="run now from the dashboard",
        allowed_from={JobState.SCHEDULED, JobState.AWAITING_RETRY},
    )
    _ensure(bool(moved), job.state, "run now")
    return await _job(ctx, job_id)


@router.post(
    "/jobs/{job_id:path}:delete", response_model=JobDetail, responses=ACTION_ERRORS, tags=["jobs"]
)
async def delete_job(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """Soft-delete a job (any state but Processing)."""
    await ctx.storage.delete(job_id, reason="deleted from the dashboard")
    return await _job(ctx, job_id)


@router.post(
    "/jobs/{job_id:path}:cancel", response_model=JobDetail, responses=ACTION_ERRORS, tags=["jobs"]
)
async def cancel_job(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """Ask a Processing job to stop, or delete a job that has not started."""
    await ctx.storage.request_cancel(job_id)
    return await _job(ctx, job_id)


# ---------------------------------------------------------------------- queue actions
async def _queue(ctx: DashboardContext, name: str) -> dict[str, Any]:
    now = ctx.storage.now()
    for q in await ctx.storage.queues():
        if q.name == name:
            return ctx.views.queue(q, now)
    return {
        "name": name,
        "counts": {s.value: 0 for s in JobState},
        "oldest_enqueued_at": None,
        "oldest_age_seconds": None,
        "paused": name in await ctx.storage.paused_queues(),
    }


@router.post(
    "/queues/{name:path}:pause", response_model=QueueOut, responses=READ_ERRORS, tags=["queues"]
)
async def pause_queue(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Stop servers from taking jobs of this queue (persisted)."""
    await ctx.storage.pause_queue(name)
    return await _queue(ctx, name)


@router.post(
    "/queues/{name:path}:resume", response_model=QueueOut, responses=READ_ERRORS, tags=["queues"]
)
async def resume_queue(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Let servers take jobs of this queue again."""
    await ctx.storage.resume_queue(name)
    return await _queue(ctx, name)


# ---------------------------------------------------------------------- recurring actions
RECURRING_ERRORS = {**READ_ERRORS, 404: {**_PROBLEM, "description": "No such template"}}


async def _template(ctx: DashboardContext, template_id: str) -> dict[str, Any]:
    t = await ctx.storage.get_recurring(template_id)
    if t is None:
        raise JobNotFoundError(f"recurring:{template_id}")
    return ctx.views.recurring(t, ctx.storage.now())


@router.post(
    "/recurring/{template_id:path}:trigger",
    response_model=TriggerOut,
    responses=RECURRING_ERRORS,
    tags=["recurring"],
)
async def trigger_recurring(ctx: Ctx, template_id: Name) -> dict[str, Any]:
    """Enqueue one run of the template now (the job records ``trigger=manual``)."""
    return {"job_id": await recurring_ops.trigger_recurring(ctx.storage, template_id)}


@router.post(
    "/recurring/{template_id:path}:pause",
    response_model=RecurringOut,
    responses=RECURRING_ERRORS,
    tags=["recurring"],
)
async def pause_recurring(ctx: Ctx, template_id: Name) -> dict[str, Any]:
    """Stop the template from firing until resumed."""
    await recurring_ops.set_paused(ctx.storage, template_id, True)
    return await _template(ctx, template_id)


@router.post(
    "/recurring/{template_id:path}:resume",
    response_model=RecurringOut,
    responses=RECURRING_ERRORS,
    tags=["recurring"],
)
async def resume_recurring(ctx: Ctx, template_id: Name) -> dict[str, Any]:
    """Resume the template from its next tick after now."""
    await recurring_ops.set_paused(ctx.storage, template_id, False)
    return await _template(ctx, template_id)


@router.delete(
    "/recurring/{template_id:path}",
    status_code=204,
    responses=RECURRING_ERRORS,
    tags=["recurring"],
)
async def remove_recurring(ctx: Ctx, template_id: Name) -> None:
    """Remove the template (jobs it already created stay)."""
    if not await ctx.storage.remove_recurring(template_id):
        raise JobNotFoundError(f"recurring:{template_id}")


# ---------------------------------------------------------------------- live feed
@router.websocket("/ws")
async def live_feed(websocket: WebSocket) -> None:
    """Counts pushed as they change: ``{"op": "stats", "seq": n, "counts": …}``."""
    ctx: DashboardContext = websocket.app.state.qml
    await websocket.accept()
    sub = ctx.hub.subscribe()

    async def drain_incoming() -> None:
        # clients send nothing we act on; reading notices a disconnect promptly
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    reader = asyncio.create_task(drain_incoming())
    try:
        await websocket.send_json({"op": "hello", "tick": ctx.hub.tick})
        while not reader.done():
            getter = asyncio.ensure_future(sub.next())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
                break
            await websocket.send_json(getter.result())
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ctx.hub.unsubscribe(sub)
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close()
