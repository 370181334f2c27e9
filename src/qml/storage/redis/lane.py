"""A connection of its own for one hot call (enqueue, claim, finish), outside the pool.

Going through redis-py's pool costs more client CPU than the script call
itself for a small request: the blocking pool's condition and timeout, its
retry wrapper and its bookkeeping on every checkout. A :class:`Lane` holds
one connection and runs one call at a time on it; a caller that finds it
busy (concurrent enqueues) uses the pool as before, so the lane never makes
anybody wait. redis-py's connection disconnects itself when a call fails or
is cancelled half-way, so a reply is never left unread for the next caller.

A request is handed to the socket's transport directly: redis-py's send runs
in a task of its own under ``wait_for`` (its write timeout) on every call,
which costs more than the write; a lane's request is never waited on before
its reply is read, and the reply is read under the socket timeout, so a stalled
connection still fails in time. A connection the server closed while the lane
was idle (Redis restarted, the connection was killed or cut) is replaced before
the request is sent, so the first call after such a loss does not fail.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from .scripts import SCRIPTS, ScriptRunner, function_missing, load_library

#: This process's id, kept current in a forked child (``os.getpid`` is a system
#: call, and the lane checks it on every call).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class Lane:
    """One dedicated connection of ``client``'s pool settings."""

    def __init__(self, client: Redis, tag: str, runner: ScriptRunner | None = None) -> None:
        self._pool = client.connection_pool
        self._head: tuple[Any, ...] = (1, tag.encode())
        self._runner = runner
        self._conn: AbstractConnection | None = None
        self._pid = _PID[0]
        self.busy = False

    def _connection(self) -> AbstractConnection:
        conn = self._conn
        if conn is None or self._pid != _PID[0]:  # a forked child makes its own
            pool = self._pool
            conn = self._conn = pool.connection_class(**pool.connection_kwargs)
            self._pid = _PID[0]
        return conn

    async def script(self, name: str, *args: Any) -> Any:
        """Run the script on the lane (it must not be busy), as the storage's
        :class:`ScriptRunner` runs it; after a NOSCRIPT or a missing function
        load it again and retry once."""
        assert self._runner is not None, "a lane for blocking pops runs no scripts"
        command, target = self._runner.command(name)
        self.busy = True
        try:
            conn = self._connection()  # connects on first use
            await _send(conn, command, target, *self._head, *args)
            try:
                return await conn.read_response()
            except NoScriptError:
                await _send(conn, "SCRIPT", "LOAD", SCRIPTS[name].source)
                await conn.read_response()
            except ResponseError as exc:
                if command != "FCALL" or not function_missing(exc):
                    raise
                await load_library(lambda *cmd: _call(conn, *cmd))
            await _send(conn, command, target, *self._head, *args)
            return await conn.read_response()
        finally:
            self.busy = False

    async def pop(self, key: str, timeout: float, grace: float) -> bytes | None:
        """``BLPOP key timeout`` on the lane (it must not be busy): the first
        element, or None when ``timeout`` seconds passed first. The reply is
        awaited ``grace`` seconds longer than the pop may block."""
        self.busy = True
        try:
            conn = self._connection()
            await _send(conn, "BLPOP", key, f"{timeout:.3f}")
            reply = await conn.read_response(timeout=timeout + grace)
            if reply is None:
                # Either BLPOP's own timeout (a nil reply) or ours: after ours the
                # reply may still come, and the next pop on this connection would
                # read it. Both are rare (an unpark ends a pop first): drop it.
                await conn.disconnect(nowait=True)
        finally:
            self.busy = False
        return None if reply is None else cast(bytes, reply[1])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == _PID[0]:
            await conn.disconnect()


async def _call(conn: AbstractConnection, *args: Any) -> Any:
    await _send(conn, *args)
    return await conn.read_response()


async def _send(conn: AbstractConnection, *args: Any) -> None:
    """Send one command on ``conn``, connecting first when needed."""
    reader: asyncio.StreamReader | None = getattr(conn, "_reader", None)
    if reader is not None and reader.at_eof():  # closed by the server while idle
        await conn.disconnect()
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    if writer is None or writer.is_closing():
        await conn.send_command(*args)  # connects, then sends
        return
    try:
        writer.writelines(conn.pack_command(*args))
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
