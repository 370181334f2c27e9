"""Runs N worker processes and restarts any that crash (the GIL limits one
process to one core; several processes use them all)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("qml.supervisor")

#: Set in each child: the supervisor's pid, so a child whose supervisor died
#: (even by SIGKILL) notices it has been orphaned and stops gracefully.
SUPERVISOR_ENV = "QML_SUPERVISOR_PID"


def _child_argv(argv: list[str], index: int, base_name: str) -> list[str]:
    """The parent's ``worker`` arguments with ``--processes 1`` and a child name."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--processes", "-p", "--name"):
            skip = i + 1 < len(argv)
            continue
        if arg.startswith(("--processes=", "--name=")):
            continue
        out.append(arg)
    return [*out, "--processes", "1", "--name", f"{base_name}-{index}"]


class Supervisor:
    """Start children, restart crashed ones with backoff, forward stop signals."""

    def __init__(self, argv: list[str], processes: int, base_name: str) -> None:
        self.argv = argv
        self.processes = processes
        self.base_name = base_name
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self.signals = 0

    def spawn(self, index: int) -> None:
        cmd = [sys.executable, "-m", "qml", *_child_argv(self.argv, index, self.base_name)]
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        self.children[index] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
        log.info("started worker process %d (pid %d)", index, self.children[index].pid)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    def is_stopping(self) -> bool:
        """Set from the signal handler, so read through a call."""
        return self.stopping

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        for i in range(self.processes):
            self.spawn(i)
        worst = 0
        finished: set[int] = set()
        while len(finished) < self.processes:
            time.sleep(0.1)
            for index, child in list(self.children.items()):
                if index in finished:
                    continue
                code = child.poll()
                if code is None:
                    continue
                if code == 0 or self.stopping:
                    finished.add(index)
                    worst = worst or (code if code > 0 else 0)
                    continue
                n = self.restarts.get(index, 0) + 1
                self.restarts[index] = n
                delay = min(10.0, 0.5 * 2 ** min(n - 1, 5))
                log.error(
                    "worker process %d (pid %d) exited with %s; restarting in %.1f s",
                    index,
                    child.pid,
                    code,
                    delay,
                )
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self.is_stopping():
                    time.sleep(0.05)
                if self.is_stopping():
                    finished.add(index)
                else:
                    self.spawn(index)
        return worst
