"""``qml bench``."""

from __future__ import annotations

import click

from .common import run, storage_option


@click.command("bench")
@click.option(
    "--jobs",
    "-n",
    type=click.IntRange(1, 10_000_000),
    default=10_000,
    show_default=True,
    help="Jobs to enqueue and drain.",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Slots per worker process.",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes (memory:// runs one server in this process).",
)
@click.option("--latency", is_flag=True, help="Also measure enqueue-to-start latency (W3).")
@storage_option
def bench_cmd(jobs: int, workers: int, processes: int, latency: bool, storage_url: str) -> None:
    """Measure enqueue rate, drain throughput and (with --latency) start latency."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ..bench import run_bench

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("draining", total=jobs)

        def progress(done: int) -> None:
            bar.update(task, completed=min(done, jobs))

        result = run(lambda: run_bench(storage_url, jobs, workers, processes, latency, progress))
    for line in result.lines():
        click.echo(line)
