"""qml on Redis (logical DB 7, reserved for qml by the harness)."""

from __future__ import annotations

from harness.adapter import redis_flushdb, redis_url  # type: ignore[import-not-found]
from qml_common import QmlBase, noop, registry  # noqa: F401  (registry: the worker's app)

DB = 7


class QmlRedis(QmlBase):
    backend = "redis"
    url = redis_url(DB)
    notes = QmlBase.notes + (
        "; Lua scripts as one function library (FCALL); an idle worker is handed new jobs"
        " by the enqueue script;"
        " worker on uvloop"
    )
    loop = "uvloop"  # measured: -7 % CPU per job, -10 % start latency (docs/benchmarks.md)

    async def setup(self) -> None:
        redis_flushdb(DB)
        await self.open()

    async def reset(self) -> None:
        redis_flushdb(DB)


ADAPTER = QmlRedis()
