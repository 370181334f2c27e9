"""The fixed set of Lua scripts, loaded once and called by SHA.

Each script is the key prelude of :mod:`.keys`, then ``scripts/_lib.lua``,
then ``scripts/<name>.lua``; no script text is ever built from user values,
so the server's script cache holds exactly :data:`NAMES` per qml version,
however long a run lasts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .keys import lua_prelude

#: Every script qml runs (``scripts/<name>.lua``).
NAMES = (
    "enqueue", "claim", "finish", "extend", "recover", "activate", "transition", "cancel",
    "list", "oldest", "queue_pause", "recurring_upsert", "recurring_update",
    "recurring_claim", "recurring_park", "delete_expired", "prune", "servers", "wait",
    "park", "unpark",
)  # fmt: skip


def executor(client: Redis) -> Callable[..., Awaitable[Any]]:
    """``client.execute_command`` with a type (redis-py leaves it untyped)."""
    return cast(Callable[..., Awaitable[Any]], client.execute_command)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return (resources.files(__package__) / "scripts" / f"{name}.lua").read_text("utf-8")


def _build() -> dict[str, Script]:
    lib = lua_prelude() + _read("_lib")
    out = {}
    for name in NAMES:
        source = lib + _read(name)
        out[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324
    return out


SCRIPTS = _build()


class ScriptRunner:
    """Runs the scripts on one client for one prefix (its tag is the one KEYS entry)."""

    def __init__(self, client: Redis, tag: str) -> None:
        self._client = client
        self._execute = executor(client)
        self._head: tuple[Any, ...] = (1, tag.encode())

    async def load(self) -> None:
        """Load every script (one round trip); idempotent."""
        async with self._client.pipeline(transaction=False) as pipe:
            for script in SCRIPTS.values():
                pipe.script_load(script.source)
            await pipe.execute()

    async def __call__(self, name: str, *args: Any) -> Any:
        """EVALSHA the script; after a NOSCRIPT (Redis restarted or flushed its
        cache) load it again and retry once."""
        script = SCRIPTS[name]
        try:
            return await self._execute("EVALSHA", script.sha, *self._head, *args)
        except NoScriptError:
            await self._execute("SCRIPT", "LOAD", script.source)
            return await self._execute("EVALSHA", script.sha, *self._head, *args)
