"""Scenario 5, connection loss: every ``qml worker`` process reaches the
storage through a TCP proxy (:mod:`tests.chaos.proxy`); the proxy cuts every
connection (and refuses new ones) twice while jobs run, then lets them through
again. lost = 0, overlap = 0 (on real run times: nothing is killed), every
re-run caused by a cut and none other, no job left Processing with an expired
lease once the workers could sweep again, and every worker process runs jobs
again after each restore (the delay is reported)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qml import Job, JobState, Storage, StorageInstance
from qml.errors import StorageError

from .harness import final_states, load_audit, record_figures, start_worker, stop, wait_final
from .outage import Window, analyze_outage, resume_delays, stale_processing
from .proxy import TcpProxy

#: Seconds a lease may stay expired on a Processing job while the workers can
#: reach the storage: one scheduler pass (1 s) plus reconnection, generously.
GRACE = 5.0


@dataclass
class Cuts:
    processes: int
    slots: int
    jobs: int
    min_ms: int
    max_ms: int
    lease: float
    first_after: float  # share of the jobs that succeed before the first cut
    cut_for: float
    between: float  # run this long between cuts
    cuts: int
    timeout: float
    stall: bool = False  # hold every byte (connections stay open) instead of resetting


SHORT = Cuts(2, 8, 300, 100, 500, 2.0, 0.1, 4.0, 4.0, 2, 180.0)


def _skip_sqlite(backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no connection to cut: the storage is a file opened in-process")


def _through(url: str, proxy_port: int) -> tuple[str, int, str]:
    """(target host, target port, the same URL through the proxy)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, url
    netloc = parts.netloc.rsplit("@", 1)
    auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return host, port, parts._replace(netloc=f"{auth}127.0.0.1:{proxy_port}").geturl()


async def _connection_loss(
    backend: str, url: str, storage: Storage, tmp_path: Path, c: Cuts
) -> None:
    rng = random.Random(5)
    audit_dir = tmp_path / "audit"
    log = tmp_path / "workers.log"
    ids: list[str] = []
    for start in range(0, c.jobs, 500):
        batch = range(start, min(c.jobs, start + 500))
        ids += await storage.enqueue_many(
            [Job("work", {"ms": rng.randint(c.min_ms, c.max_ms)}) for _ in batch]
        )
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0).start()
    _, _, worker_url = _through(url, proxy.port)
    windows: list[Window] = []
    stale: dict[str, float] = {}
    cut_open = False

    async def sample() -> None:  # no expired lease may linger while workers can sweep
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            last = windows[-1].end if windows else 0.0
            if cut_open or now < last + GRACE:
                continue
            for job_id in await stale_processing(storage, now, GRACE):
                stale.setdefault(job_id, now)

    sup = start_worker(
        worker_url, audit_dir, "--processes", str(c.processes), "--workers", str(c.slots),
        "--lease", str(c.lease), "--poll-interval", "0.2", log=log,
    )  # fmt: skip
    sampler = asyncio.create_task(sample())
    try:
        while await storage.count(JobState.SUCCEEDED) < c.first_after * c.jobs:
            assert sup.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        for i in range(c.cuts):
            if i:
                await asyncio.sleep(c.between)
            cut_open = True
            begin = proxy.stall() if c.stall else proxy.cut()
            await asyncio.sleep(c.cut_for)
            windows.append(Window(begin, proxy.restore()))
            cut_open = False
        await wait_final(storage, c.jobs, c.timeout)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        code = stop(sup)
        proxy.close()
    assert code == 0, log.read_text()[-3000:]
    execs = load_audit(audit_dir)
    final = await final_states(storage, ids)
    rep = analyze_outage(ids, final, execs, windows)
    resumes = [resume_delays(execs, w.end) for w in windows]
    worst = max((max(r.values(), default=0.0) for r in resumes), default=0.0)
    caught = sum(1 for e in execs if any(w.caught(e) for w in windows))
    kind = "stalls" if c.stall else "cuts"
    extra = (
        f"{kind}={c.cuts}x{c.cut_for:g}s lease={c.lease:g} caught={caught}"
        f" resume_max={worst:.2f}s stale={len(stale)}"
        f" resume_per_cut={[sorted(round(v, 2) for v in r.values()) for r in resumes]}"
    )
    summary = f"{rep.summary()} {extra}"
    print(f"connection {'stall' if c.stall else 'loss'} on {backend}: {summary}")
    record_figures(
        f"connection_{'stall' if c.stall else 'loss'} lease={c.lease:g}", backend, rep, extra
    )
    assert not rep.lost, summary
    assert not rep.overlap, summary
    assert not rep.dup, summary
    assert not rep.unaudited, summary
    assert not stale, (summary, stale)
    assert all(state is JobState.SUCCEEDED for state, *_ in final.values()), summary
    # every process that ran jobs before a cut ran jobs again after it
    for w, r in zip(windows, resumes, strict=True):
        before = {e.pid for e in execs if e.start < w.begin}
        assert set(r) == before, (w, r, before)
    if c.cut_for >= 20 and not c.stall:  # full size: the reconnection bound
        assert worst <= 5.0, summary


@pytest.mark.timeout(300)
async def test_connection_loss(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    _skip_sqlite(backend)
    await _connection_loss(backend, url, storage, tmp_path, SHORT)


@pytest.mark.chaos_full
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("lease", [10.0, 30.0])
async def test_connection_loss_full(
    store: tuple[str, str, Storage], tmp_path: Path, lease: float
) -> None:
    backend, url, storage = store
    _skip_sqlite(backend)
    jobs = int(os.environ.get("QML_CHAOS_CUT_JOBS", "2000"))
    full = Cuts(2, 20, jobs, 1000, 5000, lease, 0.1, 20.0, 20.0, 2, 1800.0)
    await _connection_loss(backend, url, storage, tmp_path, full)


@pytest.mark.chaos_full
@pytest.mark.timeout(3600)
async def test_connection_stall_full(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    """As above, but the proxy holds every byte for 20 s (connections stay
    open, as in a network partition that heals) instead of resetting them."""
    backend, url, storage = store
    _skip_sqlite(backend)
    jobs = int(os.environ.get("QML_CHAOS_CUT_JOBS", "2000"))
    full = Cuts(2, 20, jobs, 1000, 5000, 30.0, 0.1, 20.0, 20.0, 2, 1800.0, stall=True)
    await _connection_loss(backend, url, storage, tmp_path, full)


PROBE_LEASE = 1.0


@pytest.mark.timeout(300)
async def test_cut_off_holder_stops_before_reclaim(
    store: tuple[str, str, Storage], tmp_path: Path
) -> None:
    """One worker is cut off (only its connections go through the proxy) for
    4 × its lease while it runs a job of 6 s; a second worker reaches the
    storage directly, recovers the job once the lease expires and runs it.
    The cut-off holder knows when its lease may have ended (its last renewal
    + the lease): it must have stopped the job by then, so the two
    executions never overlap."""
    backend, url, storage = store
    _skip_sqlite(backend)
    audit_dir = tmp_path / "audit"
    common = ["--lease", str(PROBE_LEASE), "--poll-interval", "0.2", "--workers", "1"]
    job_id = await storage.enqueue(Job("steps", {"n": 60}))
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0).start()
    _, _, cut_url = _through(url, proxy.port)
    holder = start_worker(cut_url, audit_dir, *common, log=tmp_path / "holder.log")
    other = None
    try:
        deadline = time.monotonic() + 60
        while not load_audit(audit_dir):
            assert time.monotonic() < deadline, "the job did not start"
            await asyncio.sleep(0.05)
        other = start_worker(url, audit_dir, *common, log=tmp_path / "other.log")
        await asyncio.sleep(1.0)  # let the holder renew once more
        begin = proxy.cut()
        await asyncio.sleep(4 * PROBE_LEASE)
        windows = [Window(begin, proxy.restore())]
        deadline = time.monotonic() + 60
        while (await storage.get_job(job_id)).state is not JobState.SUCCEEDED:
            assert time.monotonic() < deadline, "the job did not finish"
            await asyncio.sleep(0.1)
        await asyncio.sleep(PROBE_LEASE)
    finally:
        stop(holder)
        if other is not None:
            stop(other)
        proxy.close()
    execs = load_audit(audit_dir)
    rep = analyze_outage([job_id], await final_states(storage, [job_id]), execs, windows)
    first, second = execs
    both = max(0.0, min(first.end or time.time(), second.end or time.time()) - second.start)
    extra = (
        f"cut={4 * PROBE_LEASE:g}s lease={PROBE_LEASE:g} holder_ran_after_cut_began="
        f"{(first.end or 0.0) - begin:.2f}s ({first.status}) both_running={both:.2f}s"
    )
    print(f"cut-off holder on {backend}: {rep.summary()} {extra}")
    record_figures("cut_off_holder", backend, rep, extra)
    assert not rep.lost and not rep.dup and not rep.unaudited, rep.summary()
    assert first.pid == holder.pid and second.pid != holder.pid, execs
    assert not rep.overlap, (rep.summary(), execs)


@pytest.mark.timeout(60)
async def test_first_call_after_reset_succeeds(store: tuple[str, str, Storage]) -> None:
    """Connections reset while idle in the storage's pool (the proxy's cut)
    are replaced when next taken from the pool: once the network is back, no
    call fails because of a connection that died meanwhile."""
    backend, url, _ = store
    _skip_sqlite(backend)
    parts = urlsplit(url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0) as proxy:
        storage = await StorageInstance.from_url(_through(url, proxy.port)[2])
        try:
            await asyncio.gather(*(storage.count() for _ in range(5)))  # a few pooled
            proxy.cut()
            await asyncio.sleep(0.5)
            proxy.restore()
            failures = []
            for _ in range(10):
                try:
                    await storage.count()
                except StorageError as exc:
                    failures.append(exc)
        finally:
            await storage.close()
    assert not failures, failures
