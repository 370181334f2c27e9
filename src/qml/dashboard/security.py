"""Access control, CSRF protection and security headers (one ASGI middleware).

Rules, in order, for every HTTP request and WebSocket handshake:

1. ``/healthz`` is always served (it reveals nothing).
2. With an authenticator, a request must carry valid credentials (401
   otherwise). Without one, only loopback clients are served (403), unless the
   app was created with ``allow_remote=True`` (``--insecure-no-auth``); their
   ``Host`` must be a loopback name or address too (against DNS rebinding).
3. A state-changing request (anything but GET, HEAD, OPTIONS) needs the header
   ``X-QML-Request: 1``; a browser's ``Origin`` must be this origin and its
   ``Sec-Fetch-Site`` ``same-origin`` (403 otherwise). A read-only app refuses
   every state-changing request (403).
4. A WebSocket handshake with a foreign ``Origin`` is refused.

Every HTTP response carries a strict Content-Security-Policy without
``unsafe-inline`` (the pages have no inline script or style at all), and a
``Server-Timing: app;dur=<ms>`` header (time to the response's first byte).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

CSRF_HEADER = "x-qml-request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class Authenticator(Protocol):
    """Decides whether an ``Authorization`` header value is acceptable."""

    def authenticate(self, authorization: str | None) -> bool: ...


def _basic_credentials(authorization: str) -> tuple[str, str] | None:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A shared secret token: ``Authorization: Bearer <token>``.

    Browsers can send it as the password of HTTP Basic auth (any user name),
    so the built-in login prompt works for the HTML pages.
    """

    token: str

    def __post_init__(self) -> None:
        if len(self.token) < 8:
            raise ValueError("the dashboard token must be at least 8 characters")

    def authenticate(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return _same(value.strip(), self.token)
        creds = _basic_credentials(authorization)
        return creds is not None and _same(creds[1], self.token)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP Basic authentication with one user name and password."""

    username: str
    password: str

    def authenticate(self, authorization: str | None) -> bool:
        creds = _basic_credentials(authorization or "")
        if creds is None:
            return False
        # evaluate both comparisons: no early exit on the user name
        ok_user = _same(creds[0], self.username)
        ok_password = _same(creds[1], self.password)
        return ok_user and ok_password


def parse_networks(
    networks: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def is_loopback_host(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_address_is_safe(
    host: str, *, auth: Authenticator | None, allow_remote: bool
) -> None:
    """Refuse to listen beyond loopback without authentication (unless told to)."""
    if auth is None and not allow_remote and not is_loopback_host(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without authentication: "
            "configure a token or basic auth, or pass --insecure-no-auth "
            "(allow_remote=True) to accept anyone who can reach it"
        )


def _is_loopback_authority(host: str | None) -> bool:
    if not host:
        return True  # HTTP/1.0 clients and some ASGI servers send no Host
    name = urlsplit(f"//{host}").hostname or ""
    return is_loopback_host(name) or name.endswith(".localhost")


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out


def _default_port(scheme: str) -> str:
    return "443" if scheme in ("https", "wss") else "80"


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    if not host:
        return False
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False
    o_host, o_port = parts.hostname or "", str(parts.port or _default_port(parts.scheme))
    h = urlsplit(f"//{host}")
    h_host, h_port = h.hostname or "", str(h.port or _default_port(scheme))
    return o_host.lower() == h_host.lower() and o_port == h_port


class SecurityMiddleware:
    """The ASGI middleware enforcing the rules in this module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator | None,
        allow_remote: bool,
        read_only: bool,
        local_networks: Sequence[str] = LOOPBACK_NETWORKS,
    ) -> None:
        self.app = app
        self.auth = auth
        self.allow_remote = allow_remote
        self.read_only = read_only
        self.networks = parse_networks(local_networks)

    def _is_local(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            addr = ipaddress.ip_address(str(client[0]))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def _relative_path(self, scope: Scope) -> str:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path or "/"

    def _denial(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """``(status, reason)`` if the request must be refused, else None."""
        if self.auth is not None:
            if not self.auth.authenticate(headers.get("authorization")):
                return 401, "authentication required"
        elif not self.allow_remote:
            if not self._is_local(scope):
                return 403, "only loopback clients are served when no authentication is configured"
            if not _is_loopback_authority(headers.get("host")):
                # a loopback-only dashboard answers only to loopback names, so a
                # foreign site cannot reach it by rebinding its DNS name to 127.0.0.1
                return 403, "unexpected Host header for a loopback-only dashboard"
        scheme = scope.get("scheme", "http")
        origin = headers.get("origin")
        if scope["type"] == "websocket":
            if origin is not None and not _same_origin(origin, headers.get("host"), scheme):
                return 403, "cross-origin WebSocket refused"
            return None
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        if self.read_only:
            return 403, "the dashboard is read-only"
        if headers.get(CSRF_HEADER) != "1":
            return 403, "state-changing requests need the header X-QML-Request: 1"
        if origin is not None and not _same_origin(origin, headers.get("host"), scheme):
            return 403, "cross-origin request refused"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return 403, "cross-site request refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        denial = None
        if self._relative_path(scope) != "/healthz":
            denial = self._denial(scope, headers)
        if denial is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": denial[1]})
                return
            await self._problem(send, *denial)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                elapsed = (time.perf_counter() - started) * 1000
                extra.append((b"server-timing", f"app;dur={elapsed:.1f}".encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _problem(self, send: Send, status: int, detail: str) -> None:
        title = "Unauthorized" if status == 401 else "Forbidden"
        body = json.dumps(
            {"type": "about:blank", "title": title, "status": status, "detail": detail}
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Basic realm="qml", charset="UTF-8"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
