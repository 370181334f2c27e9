"""Enqueue cost: W1 of the peer harness, with CPU time per 1,000 jobs.

    python benchmarks/enqueue.py --storage memory:// --jobs 10000
    python benchmarks/enqueue.py --storage sqlite:///enq.db --jobs 5000
    python benchmarks/enqueue.py --storage redis://127.0.0.1:6379/7?key_prefix=qml_enq
    python benchmarks/enqueue.py --storage postgresql://postgres@127.0.0.1/test?qml_schema=qml_enq

Jobs are enqueued as the harness adapters do: ``await noop.enqueue(payload)``
one at a time, then ``storage.enqueue_many([noop.build(p) ...])`` in chunks of
1,000. Prints wall jobs/s and CPU ms per 1,000 jobs: the client process
(``time.process_time``, which includes SQLite's connection thread) and, for
Redis and PostgreSQL, the server processes serving this client (read from
``/proc``). CPU time is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from qml import StorageInstance, WorkerRegistry
from qml.storage.base import Storage

registry = WorkerRegistry()


@registry.job("noop")
async def noop(payload: dict[str, Any]) -> None:
    """The harness's no-op job."""


def _cpu_of(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _server_pids(storage: Storage) -> list[int]:
    if storage.backend_name == "postgres":
        return sorted(getattr(storage, "_own_pids", set()))
    if storage.backend_name == "redis":
        info = await storage._client.info("server")  # type: ignore[attr-defined]
        return [int(info["process_id"])]
    return []


async def measure(url: str, n: int, batch: int, reps: int) -> None:
    storage = await StorageInstance.from_url(url)
    registry.storage = storage
    payloads = [{"i": i, "t": 0.0, "k": "bench"} for i in range(n)]
    await noop.enqueue(payloads[0])  # warm up connections and statement caches
    for label, chunk in (("one-by-one", 1), ("batched", batch)):
        for _ in range(reps):
            pids = await _server_pids(storage)
            srv0 = _cpu_of(pids)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if chunk == 1:
                for p in payloads:
                    await noop.enqueue(p)
            else:
                for start in range(0, n, chunk):
                    await storage.enqueue_many(
                        [noop.build(p) for p in payloads[start : start + chunk]]
                    )
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            srv = _cpu_of(await _server_pids(storage)) - srv0
            extra = f"  server CPU {srv / n * 1e6:7.1f} ms/1000" if pids else ""
            print(
                f"{storage.backend_name:<9} {label:<11} {n / wall:>10,.0f} jobs/s  "
                f"client CPU {cpu / n * 1e6:7.1f} ms/1000{extra}",
                flush=True,
            )
    await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="memory://")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(measure(args.storage, args.jobs, args.batch, args.reps))


if __name__ == "__main__":
    main()
