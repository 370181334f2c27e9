"""``qml dashboard``: serve the web dashboard for a storage."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from .common import EXIT_USAGE, fail, open_storage, run, storage_option


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: any free).")
@click.option(
    "--token",
    envvar="QML_DASHBOARD_TOKEN",
    default=None,
    help="Require this bearer token (browsers: any user name, the token as password).",
)
@click.option("--username", envvar="QML_DASHBOARD_USER", default=None, help="Basic auth user.")
@click.option(
    "--password", envvar="QML_DASHBOARD_PASSWORD", default=None, help="Basic auth password."
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option("--base-path", default="/", show_default=True, help="Serve under this path.")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve anyone who can reach the address, without authentication.",
)
@click.option("--no-redact", is_flag=True, help="Show secret-looking job arguments unmasked.")
@storage_option
def dashboard_cmd(
    host: str,
    port: int,
    token: str | None,
    username: str | None,
    password: str | None,
    read_only: bool,
    base_path: str,
    insecure_no_auth: bool,
    no_redact: bool,
    storage_url: str,
) -> None:
    """Serve the web dashboard, REST API and live feed.

    Without --token or --username/--password only clients on this machine are
    served, and binding to a non-loopback --host is refused unless
    --insecure-no-auth is given.
    """
    from ..dashboard import BasicAuth, DashboardServer, TokenAuth, no_redaction
    from ..dashboard.security import Authenticator

    auth: Authenticator | None = None
    if token and (username or password):
        fail("use either --token or --username/--password, not both", EXIT_USAGE)
    if token:
        try:
            auth = TokenAuth(token)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    elif username or password:
        if not (username and password):
            fail("basic auth needs both --username and --password", EXIT_USAGE)
        auth = BasicAuth(str(username), str(password))

    async def body() -> None:
        task = asyncio.current_task()
        if task is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        storage = await open_storage(storage_url)
        try:
            server = DashboardServer(
                storage,
                auth=auth,
                read_only=read_only,
                base_path=base_path,
                allow_remote=insecure_no_auth,
                redactor=no_redaction if no_redact else None,
            )
            await server.start(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            click.echo(f"qml dashboard on {server.url}/ (Ctrl+C to stop)", err=True)
            try:
                await server.serve_forever()
            finally:
                await server.stop()
        finally:
            await storage.close()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run(body)
