"""``qml bench``: drain throughput and enqueue-to-start latency on any storage.

Workloads (the same as the shared peer harness):

* **W1** enqueue N no-op jobs, one at a time and in batches of 1,000.
* **W2** drain the N jobs with P ``qml worker`` processes of W slots each:
  jobs/s from worker spawn to the last job's start, and worker CPU seconds
  per 1,000 jobs.
* **W3** (``--latency``) one idle worker; jobs enqueued one at a time 20 ms
  apart; enqueue-to-start latency p50/p95/p99.

Each job records its start (``time.monotonic()``, system-wide on Linux) with one
``O_APPEND`` write to ``$QML_BENCH_RECORD``, so progress and latency are
measured outside qml's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .job import Job
from .storage.base import Storage
from .storage.factory import StorageInstance
from .worker import WorkerRegistry

registry = WorkerRegistry()
_fd: dict[str, int] = {}


@registry.job("qml.bench.noop")
async def noop(i: int, t: float = 0.0) -> None:
    """Records its start and does nothing else."""
    started = time.monotonic()
    path = os.environ.get("QML_BENCH_RECORD")
    if path:
        fd = _fd.get(path)
        if fd is None:
            fd = _fd[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"%d %.6f\n" % (i, started))


@dataclass
class BenchResult:
    storage: str
    jobs: int
    workers: int
    processes: int
    enqueue_one_rate: float = 0.0
    enqueue_batch_rate: float = 0.0
    drain_rate: float = 0.0
    cpu_per_1000: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"storage {self.storage}: {self.jobs:,} jobs, {self.processes} process(es) x "
            f"{self.workers} slots"
        ]
        if self.enqueue_one_rate:
            out.append(f"  W1 enqueue one-by-one  {self.enqueue_one_rate:>12,.0f} jobs/s")
        if self.enqueue_batch_rate:
            out.append(f"  W1 enqueue batched     {self.enqueue_batch_rate:>12,.0f} jobs/s")
        if self.drain_rate:
            cpu = f"{self.cpu_per_1000:.3f}" if self.cpu_per_1000 is not None else "n/a"
            out.append(
                f"  W2 drain               {self.drain_rate:>12,.0f} jobs/s   "
                f"worker CPU {cpu} s / 1,000 jobs"
            )
        if self.latency_ms:
            lat = self.latency_ms
            out.append(
                f"  W3 enqueue->start      p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms"
                f"  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"
            )
        return out


def _read(path: str) -> dict[int, float]:
    seen: dict[int, float] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                i, t = line.split()
                seen.setdefault(int(i), float(t))
    except FileNotFoundError:
        pass
    return seen


def _spawn(url: str, workers: int, record: str, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "QML_BENCH_RECORD": record}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qml",
            "worker",
            "qml.bench:registry",
            "--storage",
            url,
            "--workers",
            str(workers),
            "--name",
            name,
            "--log-level",
            "warning",
            "--no-cleanup",
            "--no-recurring",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> float:
    """Stop workers; return their CPU seconds (user + sys)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    cpu = 0.0
    for p in procs:
        _, _, ru = os.wait4(p.pid, 0)
        p.returncode = 0
        cpu += ru.ru_utime + ru.ru_stime
    return cpu


async def _wait_seen(record: str, n: int, timeout: float, progress: Any = None) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while True:
        seen = _read(record)
        if progress is not None:
            progress(len(seen))
        if len(seen) >= n or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def _enqueue(
    storage: Storage, n: int, one_by_one: int, batch: int = 1000
) -> tuple[float, float]:
    """Enqueue ``n`` no-op jobs: the first ``one_by_one`` one at a time, the rest in
    batches; returns both rates (jobs/s, 0 for an empty part)."""
    t = time.perf_counter()
    for i in range(one_by_one):
        await noop.enqueue(i)
    one = one_by_one / (time.perf_counter() - t) if one_by_one else 0.0
    t = time.perf_counter()
    for start in range(one_by_one, n, batch):
        await storage.enqueue_many(noop.build(i) for i in range(start, min(n, start + batch)))
    batch_n = n - one_by_one
    many = batch_n / (time.perf_counter() - t) if batch_n else 0.0
    return one, many


async def run_bench(
    url: str,
    jobs: int,
    workers: int,
    processes: int,
    latency: bool,
    progress: Any = None,
    one_by_one: int = 1000,
) -> BenchResult:
    """Run W1 + W2 (and W3 with ``latency``) and return the figures."""
    result = BenchResult(url.split("?")[0], jobs, workers, processes)
    storage = await StorageInstance.from_url(url)
    registry.storage = storage
    in_process = url.startswith("memory:")
    tmp = tempfile.mkdtemp(prefix="qml-bench-")
    try:
        result.enqueue_one_rate, result.enqueue_batch_rate = await _enqueue(
            storage, jobs, min(one_by_one, jobs // 2)
        )
        record = os.path.join(tmp, "w2.rec")
        os.environ["QML_BENCH_RECORD"] = record
        t0 = time.monotonic()
        if in_process:
            from .config import ServerConfig
            from .server import BackgroundJobServer

            cpu0 = time.process_time()
            server = BackgroundJobServer(
                ServerConfig(
                    "bench", worker_count=workers, enable_cleanup=False, enable_recurring=False
                ),
                storage,
                registry,
            )
            await server.start()
            seen = await _wait_seen(record, jobs, 600, progress)
            await server.stop()
            result.cpu_per_1000 = (time.process_time() - cpu0) / jobs * 1000
        else:
            procs = [_spawn(url, workers, record, f"bench-{i}") for i in range(processes)]
            seen = await _wait_seen(record, jobs, 600, progress)
            await asyncio.sleep(0.5)
            result.cpu_per_1000 = _stop(procs) / jobs * 1000
        if len(seen) < jobs:
            raise RuntimeError(f"only {len(seen)} of {jobs} jobs ran within 600 s")
        result.drain_rate = jobs / (max(seen.values()) - t0)
        if latency:
            result.latency_ms = await _latency(storage, url, workers, tmp, in_process)
    finally:
        await storage.close()
        os.environ.pop("QML_BENCH_RECORD", None)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


async def _latency(
    storage: Storage,
    url: str,
    workers: int,
    tmp: str,
    in_process: bool,
    n: int = 300,
    gap: float = 0.02,
) -> dict[str, float]:
    record = os.path.join(tmp, "w3.rec")
    os.environ["QML_BENCH_RECORD"] = record
    base = 10_000_000
    stop: Any
    if in_process:
        from .config import ServerConfig
        from .server import BackgroundJobServer

        server = BackgroundJobServer(
            ServerConfig(
                "bench-lat", worker_count=workers, enable_cleanup=False, enable_recurring=False
            ),
            storage,
            registry,
        )
        await server.start()
        stop = server.stop
    else:
        proc = _spawn(url, workers, record, "bench-lat")

        async def stop() -> None:
            _stop([proc])

    try:
        for i in range(5):  # warm-up: the worker is up and idle
            await noop.enqueue(base + i)
        await _wait_seen(record, 5, 60)
        await asyncio.sleep(0.5)
        sent: dict[int, float] = {}
        next_at = time.monotonic()
        for i in range(n):
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            sent[i] = time.monotonic()
            await storage.enqueue(Job("qml.bench.noop", {"i": i, "t": sent[i]}))
        seen = await _wait_seen(record, n + 5, 60)
    finally:
        await stop()
    lat = sorted((seen[i] - sent[i]) * 1000 for i in range(n) if i in seen)
    if len(lat) < n:
        raise RuntimeError(f"only {len(lat)} of {n} latency jobs ran")
    q = statistics.quantiles(lat, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": lat[-1]}
