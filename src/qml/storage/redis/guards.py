"""Checks run when a Redis storage opens: version, eviction policy, persistence.

Job data must not be evicted nor vanish on restart, so a Redis that may do
either gets a clear WARNING in the log; the fsync policy in force is logged
at INFO. Managed services often disable ``CONFIG``: then ``INFO`` is used and
what cannot be known is said so.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ...errors import StorageError
from .scripts import executor

log = logging.getLogger("qml.storage.redis")

MIN_VERSION = (5, 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _config_get(client: Redis, name: str) -> str | None:
    """One setting through ``CONFIG GET``; None when CONFIG is disabled or denied."""
    try:
        reply = await executor(client)("CONFIG", "GET", name)
    except ResponseError:
        return None
    if isinstance(reply, dict):
        values = [reply.get(name.encode(), reply.get(name))]
    else:
        values = list(reply)[1:2]
    return _text(values[0]) if values and values[0] is not None else None


async def check_server(client: Redis, where: str) -> None:
    """Refuse a Redis that is too old; warn about settings that can lose jobs."""
    server: dict[str, Any] = await executor(client)("INFO", "server")
    version = _text(server.get("redis_version", "0.0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_VERSION:
        raise StorageError(f"Redis {version} at {where} is too old: qml needs Redis >= 5.0")

    policy = await _config_get(client, "maxmemory-policy")
    appendonly = await _config_get(client, "appendonly")
    fsync = await _config_get(client, "appendfsync")
    save = await _config_get(client, "save")
    config_readable = policy is not None
    if not config_readable:
        memory: dict[str, Any] = await executor(client)("INFO", "memory")
        persistence: dict[str, Any] = await executor(client)("INFO", "persistence")
        policy = _text(memory.get("maxmemory_policy", "unknown"))
        appendonly = "yes" if str(persistence.get("aof_enabled", "0")) == "1" else "no"

    extra = {"action": "redis_startup_check", "redis": where}
    if policy != "noeviction":
        log.warning(
            "Redis at %s has maxmemory-policy %s: under memory pressure it may evict "
            "job data, and jobs would vanish without a trace. Set maxmemory-policy noeviction.",
            where,
            policy,
            extra=extra,
        )
    if not config_readable:
        log.info(
            "Redis at %s does not allow CONFIG GET: appendonly=%s (from INFO); whether RDB "
            "snapshots or which appendfsync are configured could not be checked.",
            where,
            appendonly,
            extra=extra,
        )
        if appendonly != "yes":
            log.warning(
                "Redis at %s has no append-only file: jobs acknowledged since the last "
                "snapshot (if snapshots are configured at all) are lost when it restarts.",
                where,
                extra=extra,
            )
        return
    if appendonly != "yes" and not save:
        log.warning(
            "Redis at %s has persistence off (appendonly no, no RDB save points): every "
            "job is lost when Redis restarts. Enable appendonly yes (appendfsync everysec "
            "or always).",
            where,
            extra=extra,
        )
    elif appendonly == "yes":
        meaning = {
            "always": "no acknowledged job is lost",
            "everysec": "up to about one second of acknowledged jobs may be lost in a crash",
            "no": "the OS decides when to write: acknowledged jobs may be lost in a crash",
        }.get(fsync or "", "unknown policy")
        log.info(
            "Redis at %s: appendonly yes, appendfsync %s (%s).", where, fsync, meaning, extra=extra
        )
    else:
        log.info(
            "Redis at %s: appendonly no, RDB save points %r, appendfsync %s: jobs "
            "acknowledged since the last snapshot are lost when Redis crashes.",
            where,
            save,
            fsync,
            extra=extra,
        )
