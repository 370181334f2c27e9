"""The qml web dashboard: HTML pages, REST API, WebSocket live feed, metrics.

Needs the ``dashboard`` extra (``pip install 'qml-jobs[dashboard]'``)::

    app = create_app(storage)                        # an ASGI app, mountable
    await DashboardServer(storage).start("127.0.0.1:8080")
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import jinja2  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ..errors import MissingDependencyError

    raise MissingDependencyError(exc.name or "fastapi", "dashboard") from exc

from .app import create_app
from .redaction import DEFAULT_SECRET_KEYS, MASK, Redactor, no_redaction
from .security import BasicAuth, TokenAuth
from .server import DashboardServer

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "MASK",
    "BasicAuth",
    "DashboardServer",
    "Redactor",
    "TokenAuth",
    "create_app",
    "no_redaction",
]
