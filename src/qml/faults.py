"""Fault-injection points for qml's own reliability tests.

Inactive unless the environment variable ``QML_FAULTS`` names points, as
``point=action`` pairs separated by commas, for example
``QML_FAULTS=recurring.claimed=stop``. Actions: ``stop`` (the process sends
itself SIGSTOP once, to be resumed by the test with SIGCONT) and ``exit``
(``os._exit(137)``, a crash without cleanup). Reading the variable once at
import keeps the inactive cost to one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ACTIONS: dict[str, str] = {}
for _pair in filter(None, (p.strip() for p in os.environ.get("QML_FAULTS", "").split(","))):
    _name, _, _action = _pair.partition("=")
    _ACTIONS[_name] = _action or "exit"

_fired: set[str] = set()


def point(name: str) -> None:
    """A named place where a test may inject a fault."""
    if not _ACTIONS:
        return
    action = _ACTIONS.get(name)
    if action is None:
        return
    if action == "exit":
        os._exit(137)
    if action == "stop" and name not in _fired:
        _fired.add(name)
        os.kill(os.getpid(), signal.SIGSTOP)
