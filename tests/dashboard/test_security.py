"""Access control, CSRF, read-only mode, headers, and reads that change nothing."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount, Route

from qml.cli.main import cli
from qml.dashboard import BasicAuth, DashboardServer, TokenAuth, create_app
from qml.dashboard.security import check_bind_address_is_safe
from qml.errors import ConfigurationError
from qml.job import JobState
from qml.recurring import schedule_recurring
from qml.storage.base import Storage

from .conftest import make_client
from .support import CSRF, F, register_server, seed_states, snapshot

REMOTE = "203.0.113.9"
PROTECTED = ["/", "/jobs?state=failed", "/queues", "/api/v1/jobs", "/api/v1/stats", "/metrics"]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("path", PROTECTED)
async def test_remote_client_without_auth_is_refused(memory_storage: Storage, path: str) -> None:
    async with make_client(create_app(memory_storage), client_addr=REMOTE) as c:
        r = await c.get(path)
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert (await c.get("/healthz")).status_code == 200


async def test_loopback_dashboard_refuses_foreign_host_names(memory_storage: Storage) -> None:
    # DNS rebinding: evil.example resolving to 127.0.0.1 must not reach the dashboard
    async with make_client(create_app(memory_storage)) as c:
        for host in ("evil.example", "evil.example:8765", "127.0.0.1.nip.io"):
            r = await c.get("/api/v1/stats", headers={"Host": host})
            assert r.status_code == 403, host
        for host in ("localhost:8765", "127.0.0.1", "[::1]:8765", "app.localhost"):
            assert (await c.get("/api/v1/stats", headers={"Host": host})).status_code == 200
    app = create_app(memory_storage, auth=TokenAuth("tok-123456"))
    async with make_client(app, headers={"Authorization": "Bearer tok-123456"}) as c:
        assert (await c.get("/api/v1/stats", headers={"Host": "jobs.example"})).status_code == 200


async def test_ipv6_loopback_is_local(memory_storage: Storage) -> None:
    async with make_client(create_app(memory_storage), client_addr="::1") as c:
        assert (await c.get("/api/v1/stats")).status_code == 200


async def test_token_auth(memory_storage: Storage) -> None:
    app = create_app(memory_storage, auth=TokenAuth("s3cret-token"))
    async with make_client(app, client_addr=REMOTE) as c:
        for path in PROTECTED:
            r = await c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Basic")
        ok = {"Authorization": "Bearer s3cret-token"}
        assert (await c.get("/api/v1/stats", headers=ok)).status_code == 200
        assert (await c.get("/", headers=basic("anyone", "s3cret-token"))).status_code == 200
        bad = {"Authorization": "Bearer s3cret-tokem"}
        assert (await c.get("/api/v1/stats", headers=bad)).status_code == 401
        assert (await c.get("/api/v1/stats", headers=basic("x", "nope"))).status_code == 401
    with pytest.raises(ValueError, match="at least 8"):
        TokenAuth("short")


async def test_basic_auth(memory_storage: Storage) -> None:
    app = create_app(memory_storage, auth=BasicAuth("admin", "pa55word"))
    async with make_client(app, client_addr=REMOTE) as c:
        assert (await c.get("/", headers=basic("admin", "pa55word"))).status_code == 200
        assert (await c.get("/", headers=basic("admin", "wrong"))).status_code == 401
        assert (await c.get("/", headers=basic("root", "pa55word"))).status_code == 401
        assert (await c.get("/", headers={"Authorization": "Basic !!!"})).status_code == 401


async def test_mutations_need_the_custom_header_and_same_origin(memory_storage: Storage) -> None:
    ids = await seed_states(memory_storage)
    url = f"/api/v1/jobs/{ids[F]}:retry"
    async with make_client(create_app(memory_storage)) as c:
        refused = [
            {},
            {"X-QML-Request": "0"},
            {**CSRF, "Origin": "http://evil.example"},
            {**CSRF, "Origin": "http://127.0.0.1:9999"},
            {**CSRF, "Origin": "null"},
            {**CSRF, "Sec-Fetch-Site": "cross-site"},
            {**CSRF, "Sec-Fetch-Site": "same-site"},
        ]
        for headers in refused:
            r = await c.post(url, headers=headers)
            assert r.status_code == 403, headers
            assert r.headers["content-type"] == "application/problem+json"
        assert (await memory_storage.get_job(ids[F])).state is JobState.FAILED
        headers = {**CSRF, "Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}
        assert (await c.post(url, headers=headers)).status_code == 200
        assert (await memory_storage.get_job(ids[F])).state is JobState.ENQUEUED


async def test_read_only_hides_actions_and_refuses_them(memory_storage: Storage) -> None:
    ids = await seed_states(memory_storage)
    await schedule_recurring(memory_storage, "r1", "*/5 * * * *", "app.r")
    async with make_client(create_app(memory_storage, read_only=True)) as c:
        pages = ["/", "/jobs", "/jobs?state=failed", f"/jobs/{ids[F]}", "/queues", "/recurring"]
        pages += ["/errors", "/operations"]
        for path in pages:
            r = await c.get(path)
            assert r.status_code == 200
            assert "data-action" not in r.text, path
            assert "data-bulk" not in r.text, path
            assert 'class="sel"' not in r.text, path
            assert 'data-testid="read-only"' in r.text
        for method, path in [
            ("POST", f"/api/v1/jobs/{ids[F]}:retry"),
            ("POST", "/api/v1/queues/work:pause"),
            ("POST", "/api/v1/recurring/r1:trigger"),
            ("DELETE", "/api/v1/recurring/r1"),
            ("POST", "/api/v1/operations"),
            ("POST", "/api/v1/errors/0123456789ab:retry"),
            ("DELETE", "/api/v1/operations/0192f000-0000-7000-8000-000000000000"),
        ]:
            r = await c.request(method, path, headers=CSRF)
            assert r.status_code == 403, path
        assert (await memory_storage.get_job(ids[F])).state is JobState.FAILED
        assert await memory_storage.get_recurring("r1") is not None


async def test_security_headers_and_no_inline_code(memory_storage: Storage) -> None:
    ids = await seed_states(memory_storage)
    async with make_client(create_app(memory_storage)) as c:
        for path in ["/", "/jobs?state=failed", f"/jobs/{ids[F]}", "/queues", "/servers"]:
            r = await c.get(path)
            csp = r.headers["content-security-policy"]
            assert "unsafe-inline" not in csp
            assert "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert re.fullmatch(
                r'storage;dur=\d+\.\d+;desc="\d+ calls", app;dur=\d+\.\d',
                r.headers["server-timing"],
            )
            for tag in re.findall(r"<script\b[^>]*>", r.text):
                assert "src=" in tag, tag
            assert " style=" not in r.text
            assert re.search(r"\son[a-z]+=", r.text) is None


def get_paths(routes: Iterable[BaseRoute]) -> set[str]:
    """Every GET path of a route table (FastAPI may wrap included routers)."""
    out: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            out |= get_paths(included.routes)
        elif isinstance(route, Mount):
            out.add(route.path + "/qml.css")
        elif isinstance(route, APIRoute | Route) and "GET" in (route.methods or ()):
            out.add(route.path_format)
    return out


def _sample_path(path: str, ids: dict[JobState, str]) -> str:
    return (
        path.replace("{job_id}", ids[F])
        .replace("{name}", "work")
        .replace("{template_id}", "r1")
        .replace("{path}", "qml.js")
    )


async def test_no_get_route_changes_state(local_storage: Storage) -> None:
    ids = await seed_states(local_storage)
    await register_server(local_storage)
    await schedule_recurring(local_storage, "r1", "*/5 * * * *", "app.r")
    await local_storage.pause_queue("paused-q")
    app = create_app(local_storage)
    routes = sorted(get_paths(app.routes))  # type: ignore[attr-defined]
    assert len(routes) >= 14, routes
    before = await snapshot(local_storage)
    async with make_client(app) as c:
        for path in routes:
            for variant in (_sample_path(path, ids), _sample_path(path, ids) + "?fragment=1"):
                r = await c.get(variant)
                assert r.status_code < 500, variant
            assert (await c.head(_sample_path(path, ids))).status_code < 500
        for job_id in ids.values():
            for path in (f"/jobs/{job_id}", f"/api/v1/jobs/{job_id}"):
                assert (await c.get(path)).status_code == 200
    assert await snapshot(local_storage) == before


def test_refuses_non_loopback_bind_without_auth() -> None:
    check_bind_address_is_safe("127.0.0.1", auth=None, allow_remote=False)
    check_bind_address_is_safe("::1", auth=None, allow_remote=False)
    check_bind_address_is_safe("localhost", auth=None, allow_remote=False)
    with pytest.raises(ConfigurationError, match="insecure-no-auth"):
        check_bind_address_is_safe("0.0.0.0", auth=None, allow_remote=False)
    with pytest.raises(ConfigurationError):
        check_bind_address_is_safe("192.0.2.10", auth=None, allow_remote=False)
    check_bind_address_is_safe("0.0.0.0", auth=TokenAuth("t" * 16), allow_remote=False)
    check_bind_address_is_safe("0.0.0.0", auth=None, allow_remote=True)


async def test_dashboard_server_refuses_public_bind(memory_storage: Storage) -> None:
    server = DashboardServer(memory_storage)
    with pytest.raises(ConfigurationError):
        await server.start("0.0.0.0:0")
    await server.stop()


def test_cli_refuses_public_bind_without_auth() -> None:
    result = CliRunner().invoke(
        cli, ["dashboard", "--host", "0.0.0.0", "--port", "0", "--storage", "memory://"]
    )
    assert result.exit_code != 0
    assert "insecure-no-auth" in result.output


def test_cli_help() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--token", "--read-only", "--insecure-no-auth"):
        assert flag in result.output
