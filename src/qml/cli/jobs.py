"""``qml enqueue``, ``qml jobs …`` and ``qml stats``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
import orjson

from ..clock import ensure_aware
from ..errors import ConfigurationError
from ..job import Job, JobState
from ..storage.requests import JobQuery
from .common import EXIT_USAGE, fail, open_storage, run, storage_option

STATE_NAMES = {s.value: s for s in JobState} | {s.label.lower(): s for s in JobState}


def parse_state(value: str) -> JobState:
    state = STATE_NAMES.get(value.lower().replace("-", "_"))
    if state is None:
        fail(f"unknown state {value!r}; one of: {', '.join(s.value for s in JobState)}", EXIT_USAGE)
    assert state is not None
    return state


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.command("enqueue")
@click.argument("method")
@click.option("--args", "args_json", default="{}", show_default=True, help="Job arguments as JSON.")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--delay", type=float, default=None, help="Run after this many seconds.")
@click.option("--at", "at", default=None, help="Run at this ISO 8601 time.")
@click.option("--max-retries", type=int, default=None)
@storage_option
def enqueue_cmd(
    method: str,
    args_json: str,
    queue: str,
    priority: int,
    delay: float | None,
    at: str | None,
    max_retries: int | None,
    storage_url: str,
) -> None:
    """Enqueue METHOD with JSON arguments; print the new job id."""
    try:
        args = orjson.loads(args_json)
    except orjson.JSONDecodeError as exc:
        fail(f"--args is not valid JSON: {exc}", EXIT_USAGE)
    if delay is not None and at is not None:
        fail("give either --delay or --at, not both", EXIT_USAGE)
    run_at: datetime | None = None
    if at is not None:
        try:
            run_at = ensure_aware(datetime.fromisoformat(at))
        except ValueError:
            fail(f"--at is not an ISO 8601 time: {at!r}", EXIT_USAGE)
    elif delay is not None:
        from datetime import UTC, timedelta

        run_at = datetime.now(UTC) + timedelta(seconds=delay)

    async def body() -> str:
        storage = await open_storage(storage_url)
        try:
            return await storage.enqueue(
                Job(
                    method,
                    args,
                    queue=queue,
                    priority=priority,
                    run_at=run_at,
                    max_retries=max_retries,
                )
            )
        finally:
            await storage.close()

    click.echo(run(body))


@click.group("jobs")
def jobs_group() -> None:
    """List, show, retry and delete jobs."""


@jobs_group.command("list")
@click.option("--state", default=None, help="Only jobs in this state.")
@click.option("--queue", default=None)
@click.option("--method", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
def jobs_list(
    state: str | None,
    queue: str | None,
    method: str | None,
    limit: int,
    as_json: bool,
    storage_url: str,
) -> None:
    """List jobs, newest first."""
    states = frozenset({parse_state(state)}) if state else None

    async def body() -> list[Job]:
        storage = await open_storage(storage_url)
        try:
            page = await storage.list_jobs(
                JobQuery(states=states, queue=queue, method=method, limit=limit)
            )
            return page.items
        finally:
            await storage.close()

    items = run(body)
    if as_json:
        _print_json([j.to_dict() for j in items])
        return
    from rich.console import Console  # the CLI's tables load rich only when drawn
    from rich.table import Table

    table = Table("id", "state", "queue", "method", "attempts", "created", "error")
    for j in items:
        table.add_row(
            j.id,
            j.state.label,
            j.queue,
            j.method,
            str(j.attempts),
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            (j.error or "")[:60],
        )
    Console().print(table)


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
def jobs_show(job_id: str, as_json: bool, storage_url: str) -> None:
    """Show one job with its state history."""

    async def body() -> Job:
        storage = await open_storage(storage_url)
        try:
            return await storage.get_job(job_id)
        finally:
            await storage.close()

    job = run(body)
    data = job.to_dict()
    if as_json:
        _print_json(data)
        return
    from rich.console import Console

    console = Console()
    for key in (
        "id",
        "method",
        "state",
        "queue",
        "priority",
        "attempts",
        "max_retries",
        "created_at",
        "started_at",
        "finished_at",
        "run_at",
        "expires_at",
        "error_type",
        "error",
    ):
        if data.get(key) is not None:
            console.print(f"[bold]{key:>12}[/bold]  {data[key]}", markup=True, highlight=False)
    console.print(f"[bold]{'args':>12}[/bold]  {orjson.dumps(job.args).decode()}", highlight=False)
    if job.result is not None:
        console.print(
            f"[bold]{'result':>12}[/bold]  {orjson.dumps(job.result).decode()}", highlight=False
        )
    console.print("[bold]     history[/bold]")
    for h in job.history:
        console.print(
            f"    {h.at.isoformat()}  {h.state.label:<14} {h.reason or ''} {h.server_id or ''}",
            highlight=False,
        )
    if job.traceback:
        console.print(job.traceback, highlight=False, markup=False)


def _action(name: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("job_id")
    @storage_option
    def cmd(job_id: str, storage_url: str) -> None:
        async def body() -> Job:
            storage = await open_storage(storage_url)
            try:
                if name == "retry":
                    return await storage.requeue(job_id, reason="retried from the CLI")
                if name == "delete":
                    return await storage.delete(job_id, reason="deleted from the CLI")
                if name == "cancel":
                    return await storage.request_cancel(job_id)
                raise ConfigurationError(name)
            finally:
                await storage.close()

        job = run(body)
        click.echo(f"{job.id} {job.state.label}")

    return cmd


jobs_group.add_command(_action("retry", "Requeue a Failed, Succeeded, Deleted or waiting job."))
jobs_group.add_command(_action("delete", "Delete a job (soft delete; it expires later)."))
jobs_group.add_command(_action("cancel", "Cancel a job (a running job is told to stop)."))


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
def stats_cmd(as_json: bool, storage_url: str) -> None:
    """Counts by state and by queue."""

    async def body() -> tuple[Any, Any]:
        storage = await open_storage(storage_url)
        try:
            return await storage.stats(history_minutes=10), await storage.queues()
        finally:
            await storage.close()

    stats, queues = run(body)
    if as_json:
        _print_json(
            {
                "counts": {s.value: n for s, n in stats.counts.items()},
                "queues": {
                    q.name: {
                        "counts": {s.value: n for s, n in q.counts.items()},
                        "paused": q.paused,
                        "oldest_enqueued_at": q.oldest_enqueued_at.isoformat()
                        if q.oldest_enqueued_at
                        else None,
                    }
                    for q in queues
                },
                "history": [
                    {"minute": m.minute.isoformat(), "succeeded": m.succeeded, "failed": m.failed}
                    for m in stats.history
                ],
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("queue", *[s.label for s in JobState], "paused")
    for q in queues:
        table.add_row(q.name, *[str(q.counts[s]) for s in JobState], "yes" if q.paused else "")
    table.add_row("[bold]all[/bold]", *[f"[bold]{stats.counts[s]}[/bold]" for s in JobState], "")
    Console().print(table)
