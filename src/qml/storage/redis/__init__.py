"""Redis storage (needs the ``redis`` extra: ``pip install 'qml-jobs[redis]'``).

Importing this package without redis-py raises :class:`MissingDependencyError`;
``import qml`` never imports it.
"""

from __future__ import annotations

from ...errors import MissingDependencyError

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

from .config import RedisConfig
from .storage import RedisStorage

__all__ = ["RedisConfig", "RedisStorage"]
