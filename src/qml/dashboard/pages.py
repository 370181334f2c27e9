"""Server-rendered HTML pages (Jinja2, autoescaped; no job value is ever marked safe).

Each page renders its content through one template; with ``?fragment=1`` only
that content is returned, which is how the browser refreshes a page live
(one rendering path for the first render and for updates).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from .. import __version__
from ..errors import JobNotFoundError
from ..job import JobState
from ..storage.requests import MinuteStat
from .api import find_jobs, job_query
from .context import Ctx, DashboardContext
from .error_groups import SCAN_LIMIT, group_errors
from .operations import Operation
from .views import to_json_text, truncate

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def fmt_age(seconds: float | None) -> str:
    """``75.2`` → ``1m 15s``; None → an em dash."""
    if seconds is None:
        return "—"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_when(value: str | None) -> str:
    """An ISO time as ``2026-11-27 12:00:01 UTC``."""
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def path_quote(value: object) -> str:
    """Quote a value for one URL path segment (``/`` included)."""
    return quote(str(value), safe="")


def state_label(value: str) -> str:
    try:
        return JobState(value).label
    except ValueError:
        return value


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=fmt_age, when=fmt_when, pathq=path_quote, state_label=state_label)
    return env


ENV = make_environment()
ASSET_VERSION = _asset_version()

#: Which time column a job list shows, per state filter.
TIME_COLUMN = {
    "enqueued": ("enqueued_at", "Enqueued"),
    "scheduled": ("run_at", "Runs at"),
    "processing": ("started_at", "Started"),
    "succeeded": ("finished_at", "Finished"),
    "failed": ("finished_at", "Failed at"),
    "awaiting_retry": ("run_at", "Next retry"),
    "deleted": ("updated_at", "Deleted at"),
}

router = APIRouter(include_in_schema=False)


def root_of(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


async def render(
    request: Request,
    ctx: DashboardContext,
    content: str,
    *,
    page: str,
    title: str,
    status_code: int = 200,
    before: str | None = None,
    **data: Any,
) -> HTMLResponse:
    """Render ``content`` inside the chrome, or alone for ``?fragment=1``."""
    root = root_of(request)
    stats = await ctx.storage.stats(history_minutes=1)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "fragment"]
    live_url = request.url.path + ("?" + urlencode(query) if query else "")
    values = {
        "root": root,
        "api": root + "/api/v1",
        "page": page,
        "title": title,
        "read_only": ctx.read_only,
        "counts": {s.value: n for s, n in stats.counts.items()},
        "states": list(JobState),
        "live_url": live_url,
        "asset_version": ASSET_VERSION,
        "version": __version__,
        "backend": ctx.storage.backend_name,
        "content_template": content,
        "before_template": before,
        **data,
    }
    fragment = request.query_params.get("fragment") == "1"
    template = ENV.get_template(content if fragment else "base.html")
    return HTMLResponse(
        template.render(values),
        status_code=status_code,
        headers={"cache-control": "no-store"},
    )


#: History chart windows: minutes shown -> minutes per bar.
HISTORY_WINDOWS = {60: 1, 360: 5, 1440: 15}
CHART_W, CHART_H = 720, 120


def history_chart(history: list[MinuteStat], step: int) -> dict[str, Any]:
    """Bars of an SVG chart (stacked: failed at the bottom, succeeded above)."""
    buckets: list[tuple[datetime, int, int]] = []
    for i in range(0, len(history), step):
        chunk = history[i : i + step]
        buckets.append(
            (chunk[0].minute, sum(m.succeeded for m in chunk), sum(m.failed for m in chunk))
        )
    peak = max([1] + [ok + fail for _, ok, fail in buckets])
    width = CHART_W / max(1, len(buckets))
    bars = []
    for i, (minute, ok, fail) in enumerate(buckets):
        fail_h = CHART_H * fail / peak
        ok_h = CHART_H * ok / peak
        bars.append(
            {
                "x": round(i * width, 2),
                "w": round(max(width - 1, 0.5), 2),
                "ok_y": round(CHART_H - fail_h - ok_h, 2),
                "ok_h": round(ok_h, 2),
                "fail_y": round(CHART_H - fail_h, 2),
                "fail_h": round(fail_h, 2),
                "label": f"{minute:%H:%M}: {ok} succeeded, {fail} failed",
            }
        )
    return {"bars": bars, "peak": peak, "width": CHART_W, "height": CHART_H}


@router.get("/", response_class=HTMLResponse)
async def overview(
    request: Request, ctx: Ctx, history: Annotated[int, Query()] = 60
) -> HTMLResponse:
    now = ctx.storage.now()
    minutes = history if history in HISTORY_WINDOWS else 60
    stats = await ctx.storage.stats(history_minutes=minutes)
    queues = [ctx.views.queue(q, now) for q in await ctx.storage.queues()]
    servers = [
        ctx.views.server(s, now, ctx.server_dead_after) for s in await ctx.storage.list_servers()
    ]
    return await render(
        request,
        ctx,
        "overview.html",
        page="overview",
        title="Overview",
        chart=history_chart(stats.history, HISTORY_WINDOWS[minutes]),
        history_minutes=minutes,
        history_labels={60: "1 h", 360: "6 h", 1440: "24 h"},
        history_step=HISTORY_WINDOWS[minutes],
        history_ok=sum(m.succeeded for m in stats.history),
        history_failed=sum(m.failed for m in stats.history),
        queues=queues,
        servers=servers,
        show_queue_actions=False,
        health={
            "servers": {k: sum(s["status"] == k for s in servers) for k in ("ok", "late", "dead")},
            "paused": sum(q["paused"] for q in queues),
            "oldest_age": max(
                (q["oldest_age_seconds"] for q in queues if q["oldest_age_seconds"] is not None),
                default=None,
            ),
        },
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    ctx: Ctx,
    state: str | None = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    method: Annotated[str | None, Query(max_length=200)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    error: Annotated[str | None, Query(pattern=r"^[0-9a-f]{12}$")] = None,
) -> HTMLResponse:
    page = await find_jobs(ctx, job_query(state, queue, method, text, cursor, limit), error)
    filters = {
        "state": state,
        "queue": queue,
        "method": method,
        "text": text,
        "error": error,
        "cursor": cursor,
    }
    base = {k: v for k, v in filters.items() if v and k != "cursor"}
    if limit != 50:
        base["limit"] = str(limit)
    path = root_of(request) + "/jobs"
    next_url = (
        f"{path}?{urlencode({**base, 'cursor': page.next_cursor})}" if page.next_cursor else None
    )
    first_url = f"{path}?{urlencode(base)}" if base else path
    time_field, time_label = TIME_COLUMN.get(state or "", ("created_at", "Created"))
    bulk_filter = {k: v for k, v in filters.items() if v and k != "cursor"}
    description = " ".join(f"{k}:{v}" if k != "text" else f'"{v}"' for k, v in bulk_filter.items())
    title = state_label(state) if state else "Jobs"
    return await render(
        request,
        ctx,
        "jobs.html",
        page="jobs",
        title=f"{title} jobs" if state else title,
        before="jobs_filters.html",
        jobs=[ctx.views.job_summary(j) for j in page.items],
        filters=filters,
        next_url=next_url,
        first_url=first_url,
        time_field=time_field,
        time_label=time_label,
        bulk_filter_json=to_json_text(bulk_filter),
        bulk_filter_text=description or "all jobs",
    )


@router.get("/jobs/{job_id:path}", response_class=HTMLResponse)
async def job_page(request: Request, ctx: Ctx, job_id: str) -> HTMLResponse:
    job = await ctx.storage.get(job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    view = ctx.views.job_detail(job)
    return await render(
        request,
        ctx,
        "job.html",
        page="jobs",
        title=f"Job {job.id}",
        job=view,
        args_json=to_json_text(view["args"], indent=2),
        result_json=to_json_text(view["result"], indent=2),
        meta_json=to_json_text(view["meta"], indent=2),
    )


@router.get("/queues", response_class=HTMLResponse)
async def queues_page(request: Request, ctx: Ctx) -> HTMLResponse:
    now = ctx.storage.now()
    queues = [ctx.views.queue(q, now) for q in await ctx.storage.queues()]
    return await render(
        request,
        ctx,
        "queues.html",
        page="queues",
        title="Queues",
        queues=queues,
        show_queue_actions=True,
    )


@router.get("/recurring", response_class=HTMLResponse)
async def recurring_page(request: Request, ctx: Ctx) -> HTMLResponse:
    now = ctx.storage.now()
    templates = []
    for t in await ctx.storage.list_recurring():
        view = ctx.views.recurring(t, now)
        view["args_preview"] = truncate(to_json_text(view["args"])) or ""
        templates.append(view)
    return await render(
        request, ctx, "recurring.html", page="recurring", title="Recurring", templates=templates
    )


@router.get("/servers", response_class=HTMLResponse)
async def servers_page(request: Request, ctx: Ctx) -> HTMLResponse:
    now = ctx.storage.now()
    servers = [
        ctx.views.server(s, now, ctx.server_dead_after) for s in await ctx.storage.list_servers()
    ]
    return await render(
        request, ctx, "servers.html", page="servers", title="Servers", servers=servers
    )


def operation_view(op: Operation) -> dict[str, Any]:
    view = op.to_dict()
    view["bar_max"] = max(1, op.total)
    view["bar_value"] = op.total if op.status.value == "completed" else min(op.done, op.total)
    view["percent"] = int(op.progress * 100)
    view["final"] = op.is_final
    return view


@router.get("/operations", response_class=HTMLResponse)
async def operations_page(request: Request, ctx: Ctx) -> HTMLResponse:
    operations = [operation_view(op) for op in ctx.operations.list()]
    return await render(
        request,
        ctx,
        "operations.html",
        page="operations",
        title="Operations",
        operations=operations,
    )


@router.get("/errors", response_class=HTMLResponse)
async def errors_page(request: Request, ctx: Ctx) -> HTMLResponse:
    report = await group_errors(ctx.storage, scan_limit=SCAN_LIMIT)
    return await render(
        request,
        ctx,
        "errors.html",
        page="errors",
        title="Errors",
        report=report.to_dict(),
    )


@router.get("/favicon.ico")
async def favicon() -> Response:
    return FileResponse(
        STATIC_DIR / "favicon.svg",
        media_type="image/svg+xml",
        headers={"cache-control": "public, max-age=86400"},
    )
