"""Throwaway storage servers that a test may crash: a PostgreSQL cluster and a
Redis server, each on a free loopback port in a temporary directory of its own.

* :class:`PgCluster`: ``initdb`` + ``pg_ctl`` (binaries from
  ``/usr/lib/postgresql/*/bin``); :meth:`PgCluster.crash` is ``pg_ctl stop -m
  immediate`` (no shutdown checkpoint: the next start runs crash recovery from
  the WAL), :meth:`PgCluster.start` brings it back on the same port.
* :class:`RedisServer`: ``redis-server --appendonly yes --appendfsync always``;
  :meth:`RedisServer.crash` is ``SHUTDOWN NOSAVE``, :meth:`RedisServer.start`
  loads the append-only file again.

PostgreSQL refuses to run as root: as root, the cluster runs as the
``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .proxy import free_port


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb and pg_ctl."""
    found = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


class PgCluster:
    """A PostgreSQL cluster of its own; see the module doc."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bindir = bindir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="qml-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self.base.chmod(0o755)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        argv = list(cmd)
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False, cwd="/")

    def _check(self, what: str, proc: subprocess.CompletedProcess[bytes]) -> None:
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed: {proc.stdout!r} {proc.stderr!r}\n{log}")

    def init(self) -> PgCluster:
        proc = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self._check("initdb", proc)
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\nmax_connections = 200\n"
                "fsync = on\nsynchronous_commit = on\nshared_buffers = 32MB\n"
            )
        return self.start()

    def start(self) -> PgCluster:
        """Start (again) on the same port; returns once it accepts connections."""
        proc = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", "120", "start",
        )  # fmt: skip
        self._check("pg_ctl start", proc)
        _wait_port(self.port, 60)
        return self

    def crash(self) -> float:
        """``pg_ctl stop -m immediate``; returns the time the stop began."""
        at = time.time()
        proc = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )
        self._check("pg_ctl stop -m immediate", proc)
        return at

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        shutil.rmtree(self.base, ignore_errors=True)


class RedisServer:
    """A Redis server of its own with ``appendfsync always``; see the module doc."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="qml-redis-"))
        self.log = self.base / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again) on the same port and directory; returns once it answers PING
        (the append-only file loaded)."""
        argv = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.base),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def crash(self) -> float:
        """``SHUTDOWN NOSAVE``; returns the time it was sent, after the process is gone."""
        at = time.time()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock,
        ):
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)  # the server closes the connection as it exits
        assert self.proc is not None
        self.proc.wait(30)
        return at

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)
