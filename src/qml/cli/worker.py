"""``qml worker MODULE:ATTR``: run a server, or N supervised server processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

import click

from ..config import ServerConfig, default_server_name
from ..server import BackgroundJobServer
from ..storage.factory import mask_url
from .common import EXIT_USAGE, LOOPS, fail, load_app, open_storage, run, storage_option

log = logging.getLogger("qml.cli")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


async def _watch_supervisor(on_signal: Callable[[int], None]) -> None:
    """In a supervised child: stop gracefully once the supervisor is gone."""
    from .supervisor import SUPERVISOR_ENV

    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected:
        return
    while os.getppid() == int(expected):
        await asyncio.sleep(1.0)
    log.warning("supervisor %s is gone; stopping", expected)
    on_signal(signal.SIGTERM)


@click.command("worker")
@click.argument("app")
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Concurrent jobs per process.",
)
@click.option(
    "--queues",
    "-q",
    default="default",
    show_default=True,
    help="Comma-separated queues, highest priority first.",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes under one supervisor that restarts crashed ones.",
)
@click.option("--name", default=None, help="Server name (default host:pid).")
@click.option("--burst", is_flag=True, help="Exit 0 once no job is ready.")
@click.option(
    "--shutdown-timeout",
    type=float,
    default=25.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM.",
)
@click.option(
    "--lease",
    "lease_seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Lease length in seconds (renewed by heartbeats).",
)
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Fallback polling interval in seconds.",
)
@click.option("--fetch-batch-size", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--no-scheduler", is_flag=True, help="Do not activate due jobs or recover leases.")
@click.option("--no-cleanup", is_flag=True, help="Do not delete expired jobs.")
@click.option("--no-recurring", is_flag=True, help="Do not fire recurring templates.")
@click.option(
    "--recurring-poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between looks for due recurring templates.",
)
@click.option(
    "--recurring-claim-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="How long a claimed template is held before another server may take it.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--loop",
    "event_loop",
    envvar="QML_LOOP",
    default="asyncio",
    show_default=True,
    type=click.Choice(LOOPS),
    help="Event loop of the worker; uvloop needs the extra qml-jobs[uvloop].",
)
@storage_option
def worker_cmd(
    app: str,
    workers: int,
    queues: str,
    processes: int,
    name: str | None,
    burst: bool,
    shutdown_timeout: float,
    lease_seconds: float,
    poll_interval: float,
    fetch_batch_size: int,
    no_scheduler: bool,
    no_cleanup: bool,
    no_recurring: bool,
    recurring_poll_interval: float,
    recurring_claim_seconds: float,
    log_level: str,
    event_loop: str,
    storage_url: str,
) -> None:
    """Run jobs registered in APP (MODULE:ATTR naming a WorkerRegistry)."""
    setup_logging(log_level)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    if not queue_list:
        fail("--queues needs at least one queue name", EXIT_USAGE)
    if processes > 1:
        from .supervisor import Supervisor

        argv = list(sys.argv[1:])
        code = Supervisor(argv, processes, name or default_server_name()).run()
        sys.exit(code)
    # A stop signal that arrives while the app loads or storage opens ends the
    # worker cleanly (exit 0) before it takes any job.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    registry = load_app(app)
    try:
        config = ServerConfig(
            server_name=name or default_server_name(),
            worker_count=workers,
            queues=queue_list,
            fetch_batch_size=fetch_batch_size,
            polling_interval=poll_interval,
            lease_seconds=lease_seconds,
            shutdown_timeout=shutdown_timeout,
            enable_scheduler=not no_scheduler,
            enable_cleanup=not no_cleanup,
            enable_recurring=not no_recurring,
            recurring_poll_interval=recurring_poll_interval,
            recurring_claim_seconds=recurring_claim_seconds,
        )
    except Exception as exc:
        fail(str(exc), EXIT_USAGE)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        signals = 0
        stop_tasks: list[asyncio.Task[None]] = []
        server: BackgroundJobServer | None = None

        def on_signal(signum: int) -> None:
            nonlocal signals
            if server is None:
                early.append(signum)
                return
            signals += 1
            force = signals > 1
            log.warning(
                "received %s: %s",
                signal.Signals(signum).name,
                "releasing running jobs now"
                if force
                else f"stopping (running jobs get {config.shutdown_timeout:.0f} s)",
            )
            stop_tasks.append(asyncio.create_task(server.stop(force=force)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        storage = None if early else await open_storage(storage_url)
        if early or storage is None:
            if storage is not None:
                await storage.close()
            log.warning("received %s before starting: exiting", signal.Signals(early[0]).name)
            return
        registry.storage = registry.storage or storage
        server = BackgroundJobServer(config, storage, registry, burst=burst)
        log.info(
            "qml worker %s: %d job(s) registered, storage %s, %d slot(s), queues %s, %s loop%s",
            config.server_name,
            len(registry),
            mask_url(storage_url),
            workers,
            ",".join(queue_list),
            type(loop).__module__.split(".")[0],  # asyncio or uvloop
            " (burst)" if burst else "",
        )
        watchdog = asyncio.create_task(_watch_supervisor(on_signal))
        try:
            await server.run()
            for t in stop_tasks:
                await t
            watchdog.cancel()
        finally:
            await storage.close()

    run(body, event_loop)
    # The server has stopped cleanly; a late second signal must not turn exit 0 into
    # death by signal while the interpreter shuts down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
