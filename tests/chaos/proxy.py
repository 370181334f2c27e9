"""A TCP proxy that can cut or stall every connection through it.

``TcpProxy(host, port)`` listens on a free loopback port and forwards each
connection to ``host:port``. It runs an asyncio loop in a thread of its own,
so processes started by the test (``qml worker``) can connect to it while the
test's own loop goes on:

* :meth:`TcpProxy.cut` resets every open connection and stops listening, so
  new connections are refused until :meth:`TcpProxy.restore`;
* :meth:`TcpProxy.stall` keeps every connection open and accepts new ones,
  but forwards nothing in either direction until :meth:`TcpProxy.restore`
  (a network partition that heals: the held bytes are delivered then).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")

#: Bytes read from one side before they are forwarded to the other.
CHUNK = 65536


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()  # RST, not a polite FIN
        for task in self.tasks:
            task.cancel()


def _setting_up(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is asyncio's own, making the transport of an accepted socket."""
    return getattr(task.get_coro(), "__name__", "") == "_accept_connection2"


async def _accepts_settled() -> None:
    """Return once no accepted connection is waiting for its transport."""
    for _ in range(1000):
        if not any(_setting_up(t) for t in asyncio.all_tasks()):
            return
        await asyncio.sleep(0)


class _Tracked(asyncio.StreamReaderProtocol):
    """A stream protocol that adds its transport to ``transports`` when made."""

    def __init__(
        self,
        transports: set[asyncio.Transport],
        reader: asyncio.StreamReader,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        super().__init__(reader, handler)
        self._transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(cast(asyncio.Transport, transport))  # a socket's
        super().connection_made(transport)


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``; see the module doc."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.state = "open"  # open | cut | stalled
        #: Connections accepted (forwarded or held) and refused while cut.
        self.accepted = 0
        self.aborted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        #: Every transport the proxy accepted or opened: each is closed at the end.
        self._transports: set[asyncio.Transport] = set()
        self._flowing: asyncio.Event | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> float:
        """Reset every connection and refuse new ones; returns when it happened."""
        return self._call(self._cut())

    def stall(self) -> float:
        """Forward nothing (connections stay open); returns when it began."""
        return self._call(self._stall())

    def restore(self) -> float:
        """Listen and forward again; returns when it happened."""
        return self._call(self._restore())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        with contextlib.suppress(Exception):  # also after a shutdown that failed
            self._call(self._settle())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._pairs)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # ------------------------------------------------------------------ loop side
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        # asyncio.start_server, with each accepted transport noted as it is made:
        # a handler task cancelled before its first step never runs its body (nor
        # its finally), so only this set knows to close that connection
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            return _Tracked(self._transports, asyncio.StreamReader(loop=loop), self._accept)

        self._server = await loop.create_server(
            protocol, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> float:
        at = time.time()
        self.state = "cut"
        server, self._server = self._server, None
        if server is not None:
            # Connections the listening socket took are given their transports
            # by tasks of asyncio's own; on Python 3.11 such a task fails in the
            # transport's constructor once the server is closed (Server._attach
            # asserts it is open), and that connection's socket is never closed.
            # So they are let finish first: closing right after the check, in the
            # same step, leaves no room for another.
            await _accepts_settled()
            server.close()  # new connections are refused from here on
        pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.abort()
            self.aborted += 1
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        return at

    async def _shutdown(self) -> None:
        """Cut, then end every task still running (a connection being accepted or
        pumped). The cut lets every accepted connection get its transport first
        (see :meth:`_cut`); a handler task cancelled before its first step leaves
        its transport to :meth:`_settle`."""
        await self._cut()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle(self) -> None:
        """Close every transport still open; return once their sockets are closed
        (by a callback that ``abort()`` queues)."""
        transports, self._transports = self._transports, set()
        for transport in transports:
            transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _stall(self) -> float:
        assert self._flowing is not None
        self._flowing.clear()
        self.state = "stalled"
        return time.time()

    async def _restore(self) -> float:
        assert self._flowing is not None
        if self._server is None:
            await self._listen()
        self._flowing.set()
        self.state = "open"
        return time.time()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state == "cut":
            writer.transport.abort()
            return
        self.accepted += 1
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self._transports.add(cast(asyncio.Transport, up_writer.transport))
            pair.upstream = up_writer
            if pair not in self._pairs:  # cut while connecting upstream
                pair.abort()
                return
            pair.tasks = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            await asyncio.gather(*pair.tasks, return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            for w in (writer, pair.upstream):
                if w is not None:
                    w.transport.abort()
                    self._transports.discard(w.transport)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # held while stalled
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # one side ended: end the other (the peer sees the connection close)
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()
