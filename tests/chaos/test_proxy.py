"""The chaos proxy itself: cuts and shutdowns close every socket it holds.

A connection taken by the listening socket just before a cut is still being
given its transport by asyncio; closing the server then made that transport's
constructor fail on Python 3.11 and its socket stayed open, to be reported
(``ResourceWarning``) in whichever later test the garbage collector ran.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import warnings
from collections.abc import Iterator

import pytest

from .proxy import TcpProxy


@contextlib.contextmanager
def _upstream() -> Iterator[int]:
    """A TCP server that accepts and holds connections; yields its port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        for conn in held:
            conn.close()


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _unclosed(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ResourceWarning)]


@pytest.mark.timeout(120)
async def test_connections_made_just_before_a_cut_or_a_close_are_closed() -> None:
    # async, as the scenarios use the proxy: its calls block a running loop
    with _upstream() as port, warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(25):
            proxy = TcpProxy("127.0.0.1", port).start()
            clients = _connect(proxy.port, 5)
            proxy.cut()  # the five may still be being accepted
            with pytest.raises(ConnectionRefusedError):
                _connect(proxy.port, 1)
            proxy.restore()
            clients += _connect(proxy.port, 5)
            proxy.close()  # the same, for the last five
            for client in clients:
                client.close()
        gc.collect()
    assert not _unclosed(record)
