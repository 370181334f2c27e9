"""Scenario 11, cleanup under load: retention cleanup runs every 50 ms (plus a
second cleaner looping on ``delete_expired``) with TTLs of a second and a half,
while jobs run, fail and retry, and are requeued and deleted through the
public API and the dashboard's REST API. Every job ever enqueued is watched:
when one goes missing, the last thing seen of it must be a final state whose
``expires_at`` had passed — cleanup never removes anything else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from qml import (
    BackgroundJobServer,
    InvalidTransitionError,
    Job,
    JobNotFoundError,
    JobState,
    ServerConfig,
    Storage,
    StorageInstance,
)
from qml.job import FINAL_STATES
from qml.states import Retention

from .harness import Report, load_audit, record_figures
from .jobs import registry
from .tools import install_removal_log, removal_log

TTL = 1.5  # every retention, in seconds
SWEEP_PAUSE = 0.05
# A job may be removed only after a whole TTL in a final state; sweeps less than a
# TTL apart therefore see every removed job final at least once.
SWEEP_MAX = TTL - SWEEP_PAUSE


@dataclass
class Seen:
    """What was last seen of one job: ``(read started, read ended, state, expires_at)``."""

    last: tuple[float, float, JobState, float | None] | None = None
    missing_at: tuple[float, float] | None = None  # the read that found it gone
    reappeared: bool = False

    def present(self, t0: float, t1: float, state: JobState, expires: float | None) -> None:
        if self.missing_at is not None and t0 > self.missing_at[1]:
            self.reappeared = True
        if self.last is None or t1 >= self.last[1]:
            self.last = (t0, t1, state, expires)

    def gone(self, t0: float, t1: float) -> None:
        if self.missing_at is None:
            self.missing_at = (t0, t1)


@dataclass
class Load:
    seconds: float
    rate: float  # jobs enqueued per second
    actions_per_second: float
    seen: dict[str, Seen] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    sweeps: list[float] = field(default_factory=list)
    cleaned: int = 0


def _ts(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.timestamp()


def _state(value: str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        return next(s for s in JobState if s.label == value)


async def _observe(load: Load, storage: Storage, job_id: str) -> None:
    t0 = time.time()
    job = await storage.get(job_id)
    t1 = time.time()
    seen = load.seen[job_id]
    if job is None:
        seen.gone(t0, t1)
    else:
        seen.present(t0, t1, job.state, _ts(job.expires_at))


async def _sweeper(load: Load, storage: Storage, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        ids = [j for j, seen in load.seen.items() if seen.missing_at is None]
        for i in range(0, len(ids), 50):
            await asyncio.gather(*(_observe(load, storage, j) for j in ids[i : i + 50]))
        load.sweeps.append(time.monotonic() - started)
        await asyncio.sleep(SWEEP_PAUSE)


async def _cleaner(load: Load, storage: Storage, stop: asyncio.Event) -> None:
    while not stop.is_set():
        load.cleaned += await storage.delete_expired(limit=3)
        await asyncio.sleep(0.01)


async def _mutator(
    load: Load, storage: Storage, http: httpx.AsyncClient, stop: asyncio.Event
) -> None:
    rng = random.Random(11)
    headers = {"X-QML-Request": "1"}
    while not stop.is_set():
        await asyncio.sleep(rng.expovariate(load.actions_per_second))
        live = [j for j, seen in load.seen.items() if seen.missing_at is None]
        job_id = rng.choice(live if live and rng.random() < 0.8 else list(load.seen))
        kind = rng.choice(["requeue", "delete", "api_retry", "api_delete"])
        t0 = time.time()
        try:
            if kind in ("requeue", "delete"):
                action = storage.requeue if kind == "requeue" else storage.delete
                job = await action(job_id)
                load.seen[job_id].present(t0, time.time(), job.state, _ts(job.expires_at))
                outcome = "ok"
            else:
                verb = "retry" if kind == "api_retry" else "delete"
                r = await http.post(f"/api/v1/jobs/{job_id}:{verb}", headers=headers)
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    load.seen[job_id].present(
                        t0, time.time(), _state(body["state"]), _ts(body["expires_at"])
                    )
                    outcome = "ok"
                else:
                    assert r.status_code in (404, 409), (r.status_code, r.text)
                    outcome = {404: "not_found", 409: "refused"}[r.status_code]
        except JobNotFoundError:
            outcome = "not_found"
        except InvalidTransitionError:
            outcome = "refused"
        key = f"{kind}:{outcome}"
        load.actions[key] = load.actions.get(key, 0) + 1


async def _cleanup_under_load(
    backend: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: Load
) -> None:
    from qml.dashboard import create_app

    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    monkeypatch.setenv("QML_CHAOS_AUDIT", str(audit_dir))
    ttl = timedelta(seconds=TTL)
    retention = Retention(ttl, ttl, ttl)
    config = ServerConfig(
        worker_count=8,
        polling_interval=0.1,
        lease_seconds=5.0,
        enable_recurring=False,
        cleanup_interval=0.05,
        cleanup_batch_size=5,
        succeeded_ttl=ttl,
        failed_ttl=ttl,
        deleted_ttl=ttl,
    )
    rng = random.Random(110)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        opened = [await StorageInstance.from_url(url, retention=retention) for _ in range(4)]
        for s in opened:
            stack.push_async_callback(s.close)
        server_storage, api_storage, watch_storage, clean_storage = opened
        logged = await install_removal_log(watch_storage)
        transport = httpx.ASGITransport(app=create_app(api_storage), client=("127.0.0.1", 50123))
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        )
        server = BackgroundJobServer(config, server_storage, registry)
        await server.start()
        enqueued = 0
        tasks: list[asyncio.Task[None]] = []
        try:
            first = [
                Job("flaky", {"k": rng.randint(0, 5)}) if rng.random() < 0.5 else
                Job("work", {"ms": rng.randint(5, 50)})
                for _ in range(20)
            ]  # fmt: skip
            for job_id in await api_storage.enqueue_many(first):
                load.seen[job_id] = Seen()
            enqueued += len(first)
            tasks = [
                asyncio.create_task(_sweeper(load, watch_storage, stop)),
                asyncio.create_task(_cleaner(load, clean_storage, stop)),
                asyncio.create_task(_mutator(load, api_storage, http, stop)),
            ]
            began = time.monotonic()
            while time.monotonic() - began < load.seconds:
                await asyncio.sleep(1 / load.rate)
                k = rng.randint(0, 5)
                job = Job("flaky", {"k": k}) if rng.random() < 0.5 else Job("work", {"ms": 20})
                load.seen[await api_storage.enqueue(job)] = Seen()
                enqueued += 1
                for t in tasks:
                    if t.done():
                        t.result()  # a failed task fails the test now
            await asyncio.sleep(TTL * 2)  # let the last ones finish and expire
            stop.set()
            cleaning_ended = time.time()
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop()
        server_cleaned = sum(getattr(svc, "deleted_total", 0) for svc in server._services)
        # a last look at every job
        for job_id in load.seen:
            await _observe(load, watch_storage, job_id)
        removed = await removal_log(watch_storage) if logged else []

    violations: list[str] = []
    missing = present = 0
    for job_id, seen in load.seen.items():
        if seen.reappeared:
            violations.append(f"{job_id}: present again after it was found missing")
        if seen.missing_at is None:
            present += 1
            continue
        missing += 1
        _, gone_t1 = seen.missing_at
        if seen.last is None:
            violations.append(f"{job_id}: never seen before it went missing")
            continue
        t0, _t1, state, expires = seen.last
        if state not in FINAL_STATES:
            if gone_t1 - t0 < TTL:  # it could not have been final for a whole TTL since
                violations.append(f"{job_id}: removed while {state.value} ({gone_t1 - t0:.2f}s)")
            else:
                violations.append(f"{job_id}: unverified, last seen {gone_t1 - t0:.2f}s before")
        elif expires is None or expires > gone_t1:
            violations.append(f"{job_id}: removed {state.value} before it expired ({expires})")
    # the exact record of the SQL backends: each removed row as it was
    for job_id, was, expires, at in removed:
        if _state(was) not in FINAL_STATES or expires is None or expires > at + 0.001:
            violations.append(f"{job_id}: row removed while {was}, expiring {expires} (at {at})")
    if logged:
        assert len(removed) == missing, (len(removed), missing)
    # and nothing final and long expired was left behind
    leaked = [
        j
        for j, seen in load.seen.items()
        if seen.missing_at is None
        and seen.last is not None
        and seen.last[2] in FINAL_STATES
        and (seen.last[3] or cleaning_ended) < cleaning_ended - TTL
    ]
    execs = load_audit(audit_dir)
    rep = Report(jobs=enqueued, executions=len(execs))
    slowest = max(load.sweeps, default=0.0)
    actions = " ".join(f"{k}={v}" for k, v in sorted(load.actions.items()))
    figures = (
        f"ttl={TTL:g}s present={present} removed={missing} violations={len(violations)}"
        f" rows_logged={len(removed) if logged else 'n/a'} left_expired={len(leaked)}"
        f" cleaned_by_server={server_cleaned} cleaned_by_loop={load.cleaned}"
        f" sweeps={len(load.sweeps)} slowest_sweep={slowest:.2f}s {actions}"
    )
    print(f"cleanup under load on {backend}: {rep.summary()} {figures}")
    record_figures("cleanup_load", backend, rep, figures)
    assert not violations, violations[:10]
    assert not leaked, leaked[:10]
    assert missing > enqueued // 4, "cleanup removed too little for the run to mean anything"
    assert slowest < SWEEP_MAX, "sweeps too slow to witness every final state"
    assert server_cleaned + load.cleaned == missing


@pytest.mark.timeout(300)
async def test_cleanup_under_load(
    store: tuple[str, str, Storage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, url, _ = store
    await _cleanup_under_load(backend, url, tmp_path, monkeypatch, Load(12.0, 15.0, 20.0))


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
async def test_cleanup_under_load_full(
    store: tuple[str, str, Storage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, url, _ = store
    seconds = float(os.environ.get("QML_CHAOS_CLEANUP_SECONDS", "90"))
    await _cleanup_under_load(backend, url, tmp_path, monkeypatch, Load(seconds, 25.0, 40.0))
