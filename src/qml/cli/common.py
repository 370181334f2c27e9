"""Shared helpers of the CLI: storage from options, app loading, errors."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import click

from ..errors import JobNotFoundError, QmlError
from ..storage.base import Storage
from ..storage.factory import DEFAULT_URL, StorageInstance
from ..worker import WorkerRegistry

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

storage_option = click.option(
    "--storage",
    "storage_url",
    envvar="QML_STORAGE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Storage URL: memory://, sqlite:///path, redis://…, postgresql://…",
)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print one clear error line and exit."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


#: Event loops ``qml worker --loop`` accepts.
LOOPS = ("asyncio", "uvloop")


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the named event loop (None: asyncio's own).

    ``uvloop`` (extra ``qml-jobs[uvloop]``) cut a Redis worker's CPU per job by
    about 7 % and its enqueue-to-start p50 by about 10 % (docs/benchmarks.md);
    it changed nothing measurable on PostgreSQL.
    """
    if loop == "asyncio":
        return None
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            fail("--loop uvloop needs uvloop: pip install 'qml-jobs[uvloop]'", EXIT_USAGE)
        return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)
    fail(f"unknown event loop {loop!r} (choose from {', '.join(LOOPS)})", EXIT_USAGE)
    raise AssertionError("unreachable")


def run(coro_fn: Callable[[], Awaitable[T]], loop: str = "asyncio") -> T:
    """Run an async CLI body, turning qml errors into one line and an exit code."""
    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            return runner.run(_wrap(coro_fn))
    except JobNotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except QmlError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.strerror or exc}")
    raise AssertionError("unreachable")


async def _wrap(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return await coro_fn()


async def open_storage(url: str) -> Storage:
    return await StorageInstance.from_url(url)


def load_app(spec: str) -> WorkerRegistry:
    """Import ``MODULE:ATTR`` (the current directory is on the path) and return
    the :class:`WorkerRegistry` it names (or a callable returning one)."""
    if ":" not in spec:
        fail(f"app must be MODULE:ATTR (e.g. myapp.jobs:registry), got {spec!r}", EXIT_USAGE)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import module {module_name!r}: {exc}", EXIT_USAGE)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            fail(f"module {module_name!r} has no attribute {attr!r}", EXIT_USAGE)
    if not isinstance(obj, WorkerRegistry) and callable(obj):
        obj = obj()
    if not isinstance(obj, WorkerRegistry):
        fail(f"{spec} is a {type(obj).__name__}, not a WorkerRegistry", EXIT_USAGE)
    registry: WorkerRegistry = obj
    return registry
