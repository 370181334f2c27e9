"""``DashboardServer``: the dashboard served by uvicorn inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any, Self

import uvicorn

from ..errors import ConfigurationError
from ..storage.base import Storage
from .app import create_app
from .redaction import RedactorFn
from .security import LOOPBACK_NETWORKS, Authenticator, check_bind_address_is_safe

DEFAULT_ADDRESS = "127.0.0.1:8765"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) to ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"dashboard address must be host:port, got {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"port out of range: {number}")
    return host, number


class _EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class DashboardServer:
    """Serve the dashboard of ``storage`` from the current event loop.

    ``await DashboardServer(storage).start("127.0.0.1:8080")`` returns once the
    socket listens; ``await server.stop()`` shuts it down. Keyword arguments
    are those of :func:`qml.dashboard.create_app`. Also an async context
    manager (``async with DashboardServer(storage) as d: ... d.url``).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        auth: Authenticator | None = None,
        read_only: bool = False,
        redactor: RedactorFn | None = None,
        base_path: str = "/",
        allow_remote: bool = False,
        local_networks: Sequence[str] = LOOPBACK_NETWORKS,
        log_level: str = "warning",
        **app_options: Any,
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.allow_remote = allow_remote
        self.base_path = "/" + base_path.strip("/")
        self.log_level = log_level
        self.app = create_app(
            storage,
            auth=auth,
            read_only=read_only,
            redactor=redactor,
            base_path=base_path,
            allow_remote=allow_remote,
            local_networks=local_networks,
            **app_options,
        )
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL the dashboard answers on (after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.base_path == "/" else self.base_path
        return f"http://{host}:{self.port}{suffix}"

    async def start(self, address: str = DEFAULT_ADDRESS, *, timeout: float = 10.0) -> None:
        """Listen on ``address`` (``host:port``; port 0 picks a free one)."""
        if self._task is not None:
            raise RuntimeError("the dashboard server is already running")
        host, port = parse_address(address)
        check_bind_address_is_safe(host, auth=self.auth, allow_remote=self.allow_remote)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host, self.port = host, sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self.log_level,
            access_log=False,
            lifespan="on",
            ws="websockets-sansio",
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="qml-dashboard")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the dashboard server stopped during start-up")
                if loop.time() > deadline:
                    raise TimeoutError("the dashboard server did not start in time")
                await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            sock.close()
            raise

    async def stop(self) -> None:
        """Stop listening, close connections and wait for the server task."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 10.0)
        except TimeoutError:
            server.force_exit = True
            await task

    async def serve_forever(self, address: str = DEFAULT_ADDRESS) -> None:
        """Start (unless already started), wait until cancelled or the server
        exits, then stop."""
        if self._task is None:
            await self.start(address)
        try:
            assert self._task is not None
            await asyncio.shield(self._task)
        finally:
            await self.stop()

    async def __aenter__(self) -> Self:
        if self._task is None:
            await self.start("127.0.0.1:0")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
