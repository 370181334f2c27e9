"""A tiny registry for the browser test that runs a real ``qml worker`` process:
``python -m qml worker tests.dashboard.worker_app:registry``."""

from __future__ import annotations

from qml.worker import WorkerRegistry

registry = WorkerRegistry()


@registry.job("ui.noop")
async def noop(n: int = 0) -> int:
    """Does nothing; its result is its argument."""
    return n
