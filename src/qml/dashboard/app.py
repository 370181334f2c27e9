"""The dashboard ASGI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from .. import __version__
from ..errors import ConfigurationError, InvalidTransitionError, JobNotFoundError
from ..storage.base import Storage
from . import api, api_operations, metrics, pages
from .context import DashboardContext
from .hub import DEFAULT_TICK, ChangeHub
from .operations import BATCH_SIZE, OperationManager
from .reads import DEFAULT_SHARED_TTL, DashboardStorage, ServerTimingMiddleware
from .redaction import Redactor, RedactorFn
from .security import LOOPBACK_NETWORKS, Authenticator, SecurityMiddleware
from .views import ViewBuilder

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Content",
}


def _wants_problem(request: Request) -> bool:
    root: str = request.scope.get("root_path", "")
    path = request.url.path
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith("/api/") or path in ("/metrics", "/healthz")


def _error_response(request: Request, status: int, detail: str) -> Response:
    title = _TITLES.get(status, "Error")
    if _wants_problem(request):
        return JSONResponse(
            {"type": "about:blank", "title": title, "status": status, "detail": detail},
            status_code=status,
            media_type="application/problem+json",
        )
    root = pages.root_of(request)
    html = pages.ENV.get_template("base.html").render(
        root=root,
        api=root + "/api/v1",
        page="error",
        title=title,
        read_only=True,
        counts={},
        states=[],
        live_url=request.url.path,
        asset_version=pages.ASSET_VERSION,
        version=__version__,
        backend=request.app.state.qml.storage.backend_name,
        content_template="error.html",
        before_template=None,
        status=status,
        error_title=title,
        detail=detail,
    )
    return HTMLResponse(html, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error_response(request, 404, f"not found: {exc}")

    async def conflict(request: Request, exc: Exception) -> Response:
        return _error_response(request, 409, str(exc))

    async def invalid(request: Request, exc: Exception) -> Response:
        return _error_response(request, 422, str(exc))

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return _error_response(request, 422, "; ".join(parts) or "invalid request")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = _error_response(request, exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    app.add_exception_handler(JobNotFoundError, not_found)
    app.add_exception_handler(InvalidTransitionError, conflict)
    app.add_exception_handler(ConfigurationError, invalid)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(HTTPException, http_error)


def create_app(
    storage: Storage,
    *,
    auth: Authenticator | None = None,
    read_only: bool = False,
    redactor: RedactorFn | None = None,
    base_path: str = "/",
    allow_remote: bool = False,
    local_networks: Sequence[str] = LOOPBACK_NETWORKS,
    tick: float = DEFAULT_TICK,
    server_dead_after: float = 60.0,
    operation_batch_size: int = BATCH_SIZE,
    operation_batch_pause: float = 0.0,
    shared_read_ttl: float = DEFAULT_SHARED_TTL,
) -> ASGIApp:
    """The dashboard as an ASGI app: HTML pages, ``/api/v1``, ``/api/v1/ws``,
    ``/metrics`` and ``/healthz``.

    * ``auth``: a :class:`~qml.dashboard.TokenAuth`, :class:`~qml.dashboard.BasicAuth`
      or any object with ``authenticate(authorization_header) -> bool``. Without
      one only clients in ``local_networks`` (loopback) are served, unless
      ``allow_remote=True`` (``qml dashboard --insecure-no-auth``).
    * ``read_only``: hide actions; the API refuses them with 403.
    * ``redactor``: applied to job args, results and meta everywhere (default
      :class:`~qml.dashboard.Redactor`; pass :func:`~qml.dashboard.no_redaction`
      to show everything).
    * ``base_path``: serve under a path prefix. To mount into an existing
      Starlette/FastAPI app, use ``parent.mount("/qml", create_app(storage))``
      instead; links follow the mount's root path either way.

    * ``operation_batch_size`` / ``operation_batch_pause``: bulk operations act
      on this many jobs per storage call, and sleep this many seconds between
      two batches (to spare a busy database).

    * ``shared_read_ttl``: live page refreshes of many tabs share identical
      storage reads for at most this many seconds (and never across two
      change-feed snapshots); see :mod:`qml.dashboard.reads`.

    Every response carries ``Server-Timing`` entries (storage time and total),
    and ``/metrics`` counts the storage calls of the dashboard by operation.

    The storage is not opened or closed by the app; its owner does that.
    """
    reads = DashboardStorage(storage, ttl=shared_read_ttl)
    counted = cast(Storage, reads)
    hub = ChangeHub(counted, tick=tick, on_change=reads.invalidate)
    operations = OperationManager(
        counted,
        publish=hub.publish,
        batch_size=operation_batch_size,
        batch_pause=operation_batch_pause,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await operations.shutdown()
            await hub.stop()

    app = FastAPI(
        title="qml dashboard API",
        version=__version__,
        description="Jobs, queues, recurring templates and servers of one qml storage.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.qml = DashboardContext(
        storage=counted,
        views=ViewBuilder(redactor if redactor is not None else Redactor()),
        hub=hub,
        read_only=read_only,
        operations=operations,
        server_dead_after=server_dead_after,
        storage_calls=reads.storage_calls,
    )
    _install_error_handlers(app)
    app.include_router(api_operations.router)
    app.include_router(api.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.add_middleware(ServerTimingMiddleware)
    app.add_middleware(
        SecurityMiddleware,
        auth=auth,
        allow_remote=allow_remote,
        read_only=read_only,
        local_networks=local_networks,
    )
    prefix = "/" + base_path.strip("/")
    if prefix == "/":
        return app
    outer = Starlette(routes=[Mount(prefix, app=app)], lifespan=lifespan)
    outer.state.qml = app.state.qml
    return outer


def dashboard_context(app: Any) -> DashboardContext:
    """The :class:`DashboardContext` of an app made by :func:`create_app`."""
    ctx: DashboardContext = app.state.qml
    return ctx
