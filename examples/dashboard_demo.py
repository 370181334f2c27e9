"""A job server and the web dashboard on one storage, in one process.

Run it and open the printed URL; the dashboard updates live as jobs succeed,
retry and fail. By default it runs a short tour and exits (that is what the
test suite does); pass ``--serve`` to keep it running until Ctrl+C:

    python examples/dashboard_demo.py --serve --port 8080

The dashboard binds to loopback and needs no login there; to serve other
machines, give it a token: ``DashboardServer(storage, auth=TokenAuth("…"))``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import urllib.request

from qml import (
    BackgroundJobServer,
    DashboardServer,
    JobState,
    MemoryStorage,
    RetryPolicy,
    ServerConfig,
    WorkerRegistry,
)

registry = WorkerRegistry()


@registry.job("send_email")
async def send_email(to: str, subject: str, password: str = "") -> str:
    await asyncio.sleep(random.uniform(0.01, 0.05))
    return f"sent {subject!r} to {to}"


@registry.job("flaky_report", retry_policy=RetryPolicy(max_retries=1, base_delay=0.2, jitter=0))
async def flaky_report(kind: str) -> None:
    raise TimeoutError(f"report backend timed out for {kind}")


def fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def main(port: int, serve: bool) -> None:
    storage = MemoryStorage()
    registry.storage = storage
    config = ServerConfig("demo-server", worker_count=4, polling_interval=0.2)
    async with BackgroundJobServer(config, storage, registry) as server:
        digest = {"to": "team@example.com", "subject": "digest"}
        await server.schedule_recurring("nightly-digest", "0 0 9 * * *", "send_email", digest)
        dashboard = DashboardServer(storage)
        await dashboard.start(f"127.0.0.1:{port}")
        print(f"dashboard: {dashboard.url}/")
        try:
            for i in range(20):
                # the password is masked by the dashboard's redaction everywhere
                await send_email.enqueue(f"user{i}@example.com", f"hello #{i}", password="hunter2")
            await flaky_report.enqueue("weekly")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stats = await storage.stats()
                if stats.counts[JobState.SUCCEEDED] + stats.counts[JobState.FAILED] >= 21:
                    break
                await asyncio.sleep(0.1)
            api = f"{dashboard.url}/api/v1"
            summary = await asyncio.to_thread(fetch_json, f"{api}/stats?minutes=1")
            assert isinstance(summary, dict)
            print("counts:", {k: v for k, v in summary["counts"].items() if v})
            failed = await asyncio.to_thread(fetch_json, f"{api}/jobs?state=failed")
            assert isinstance(failed, dict)
            for job in failed["items"]:
                print(f"failed: {job['method']} {job['error_type']}: {job['error']}")
            page = await asyncio.to_thread(fetch_json, f"{api}/jobs?state=succeeded&limit=1")
            assert isinstance(page, dict)
            assert "hunter2" not in json.dumps(page)
            if serve:
                print("serving until Ctrl+C")
                await asyncio.Event().wait()
        finally:
            await dashboard.stop()
    await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl+C")
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(options.port, options.serve))
