"""``qml recurring …`` and ``qml scheduler``."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import click
import orjson

from .. import recurring
from ..config import ServerConfig, default_server_name
from ..cron import CronSchedule
from ..errors import JobNotFoundError
from ..storage.requests import MisfirePolicy, RecurringTemplate
from .common import EXIT_USAGE, fail, open_storage, run, storage_option


def template_dict(t: RecurringTemplate) -> dict[str, object]:
    return {
        "id": t.id,
        "cron": t.cron,
        "timezone": t.timezone,
        "method": t.method,
        "args": t.args,
        "queue": t.queue,
        "misfire": t.misfire.value,
        "max_catchup": t.max_catchup,
        "paused": t.paused,
        "next_run_at": t.next_run_at.isoformat() if t.next_run_at else None,
        "last_run_at": t.last_run_at.isoformat() if t.last_run_at else None,
        "last_job_id": t.last_job_id,
        "claimed_by": t.claimed_by,
    }


@click.group("recurring")
def recurring_group() -> None:
    """Manage recurring (cron) templates shared by every server on the storage."""


@recurring_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
def recurring_list(as_json: bool, storage_url: str) -> None:
    """List templates with their next and last run."""

    async def body() -> list[RecurringTemplate]:
        storage = await open_storage(storage_url)
        try:
            return await storage.list_recurring()
        finally:
            await storage.close()

    items = run(body)
    if as_json:
        click.echo(
            orjson.dumps([template_dict(t) for t in items], option=orjson.OPT_INDENT_2).decode()
        )
        return
    from rich.console import Console  # loaded only when a table is drawn
    from rich.table import Table

    table = Table("id", "cron", "tz", "method", "queue", "next run", "last run", "status")
    for t in items:
        table.add_row(
            t.id,
            t.cron,
            t.timezone,
            t.method,
            t.queue,
            t.next_run_at.strftime("%Y-%m-%d %H:%M:%S") if t.next_run_at else "",
            t.last_run_at.strftime("%Y-%m-%d %H:%M:%S") if t.last_run_at else "",
            "paused" if t.paused else "active",
        )
    Console().print(table)


@recurring_group.command("add")
@click.argument("template_id")
@click.argument("cron")
@click.argument("method")
@click.option("--args", "args_json", default="{}", show_default=True, help="Arguments as JSON.")
@click.option("--queue", default="default", show_default=True)
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option(
    "--misfire",
    type=click.Choice([p.value for p in MisfirePolicy]),
    default=MisfirePolicy.FIRE_ONCE.value,
    show_default=True,
)
@click.option("--max-catchup", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--priority", type=int, default=0, show_default=True)
@storage_option
def recurring_add(
    template_id: str,
    cron: str,
    method: str,
    args_json: str,
    queue: str,
    timezone: str,
    misfire: str,
    max_catchup: int,
    priority: int,
    storage_url: str,
) -> None:
    """Create or update template TEMPLATE_ID firing METHOD on CRON
    (6 fields with seconds first, or 5 fields)."""
    try:
        args = orjson.loads(args_json)
    except orjson.JSONDecodeError as exc:
        fail(f"--args is not valid JSON: {exc}", EXIT_USAGE)

    async def body() -> RecurringTemplate:
        storage = await open_storage(storage_url)
        try:
            return await recurring.schedule_recurring(
                storage,
                template_id,
                cron,
                method,
                args,
                queue,
                timezone=timezone,
                misfire=misfire,
                max_catchup=max_catchup,
                priority=priority,
            )
        finally:
            await storage.close()

    t = run(body)
    click.echo(f"{t.id}: next run {t.next_run_at.isoformat() if t.next_run_at else '-'}")


def _simple(name: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("template_id")
    @storage_option
    def cmd(template_id: str, storage_url: str) -> None:
        async def body() -> str:
            storage = await open_storage(storage_url)
            try:
                if name == "remove":
                    if not await storage.remove_recurring(template_id):
                        raise JobNotFoundError(f"recurring:{template_id}")
                    return f"{template_id} removed"
                if name == "trigger":
                    return await recurring.trigger_recurring(storage, template_id)
                t = await recurring.set_paused(storage, template_id, name == "pause")
                return f"{t.id} {'paused' if t.paused else 'active'}"
            finally:
                await storage.close()

        click.echo(run(body))

    return cmd


for _name, _help in (
    ("remove", "Remove a template."),
    ("pause", "Pause a template."),
    ("resume", "Resume a template from its next tick."),
    ("trigger", "Enqueue one run now; prints the job id."),
):
    recurring_group.add_command(_simple(_name, _help))


@recurring_group.command("next")
@click.argument("cron")
@click.option("--tz", "timezone", default="UTC", show_default=True)
@click.option("--count", type=click.IntRange(1, 1000), default=5, show_default=True)
def recurring_next(cron: str, timezone: str, count: int) -> None:
    """Preview the next fire times of CRON."""
    try:
        schedule = CronSchedule.parse(cron, timezone)
    except Exception as exc:
        fail(str(exc), EXIT_USAGE)
    for t in schedule.upcoming(datetime.now(UTC), count):
        click.echo(t.isoformat())


@click.command("scheduler")
@click.option("--name", default=None, help="Server name (default host:pid).")
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="How often to look for due templates and jobs.",
)
@click.option("--no-cleanup", is_flag=True, help="Do not delete expired jobs.")
@storage_option
def scheduler_cmd(
    name: str | None, poll_interval: float, no_cleanup: bool, storage_url: str
) -> None:
    """Run only the recurring poller, the due-job scheduler and cleanup (no jobs).
    Any number may run: templates are claimed, never led."""
    from ..server.recurring import RecurringJobPoller
    from ..server.service import PeriodicService
    from ..server.services import CleanupWorker, Scheduler
    from .worker import setup_logging

    setup_logging("info")
    config = ServerConfig(
        server_name=name or default_server_name(),
        recurring_poll_interval=poll_interval,
        scheduler_interval=poll_interval,
    )

    async def body() -> None:
        storage = await open_storage(storage_url)
        services: list[PeriodicService] = [
            RecurringJobPoller(storage, config),
            Scheduler(storage, config),
        ]
        if not no_cleanup:
            services.append(CleanupWorker(storage, config))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for svc in services:
            svc.start()
        try:
            await stop.wait()
        finally:
            for svc in services:
                await svc.stop()
            await storage.close()

    run(body)
