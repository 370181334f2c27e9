"""``qml``: run workers, enqueue and inspect jobs, run the demo."""

from __future__ import annotations

import click

from .. import __version__
from .bench import bench_cmd
from .dashboard import dashboard_cmd
from .jobs import enqueue_cmd, jobs_group, stats_cmd
from .recurring import recurring_group, scheduler_cmd
from .worker import worker_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qml")
def cli() -> None:
    """qml: background job processing.

    Storage is chosen with --storage or QML_STORAGE_URL (default: the embedded
    SQLite file sqlite:///qml.db).
    """


cli.add_command(worker_cmd)
cli.add_command(enqueue_cmd)
cli.add_command(jobs_group)
cli.add_command(stats_cmd)
cli.add_command(bench_cmd)
cli.add_command(recurring_group)
cli.add_command(scheduler_cmd)
cli.add_command(dashboard_cmd)


@cli.command("demo")
@click.option(
    "--storage",
    "storage_url",
    envvar="QML_STORAGE_URL",
    default="sqlite:///qml.db",
    show_default=True,
    help="Storage URL for the demo.",
)
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Give up after this many seconds.",
)
def demo_cmd(storage_url: str, timeout: float) -> None:
    """Run a server on the embedded SQLite storage with sample jobs, shown live."""
    from .demo import run_demo

    run_demo(storage_url, timeout)


def main() -> None:
    cli(prog_name="qml")
