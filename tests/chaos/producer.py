"""A producer process: ``python -m tests.chaos.producer URL OUT --jobs N ...``.

Enqueues ``N`` ``work`` jobs in batches, at a steady pace, through its own
storage. After each ``enqueue_many`` that *returned*, it appends one fsync'd
line ``{"ok": [ids], "t": time}`` to ``OUT``; a batch that raised a
:class:`~qml.errors.StorageError` is recorded as ``{"err": "Class: message",
"maybe": [ids]}`` (it may or may not have landed) and the next batch is tried
after a short pause. Any other exception ends the process with a traceback:
a storage outage must surface as a StorageError, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from qml import Job, StorageInstance
from qml.errors import StorageError


def _append(path: str, record: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def produce(
    url: str, out: str, jobs: int, batch: int, rate: float, lo: int, hi: int, seed: int
) -> None:
    rng = random.Random(seed)
    storage = await StorageInstance.from_url(url)
    sent = 0
    began = time.monotonic()
    try:
        while sent < jobs:
            due = began + sent / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n = min(batch, jobs - sent)
            items = [Job("work", {"ms": rng.randint(lo, hi)}) for _ in range(n)]
            try:
                ids = await storage.enqueue_many(items)
            except StorageError as exc:
                _append(
                    out,
                    {
                        "err": f"{type(exc).__name__}: {exc}",
                        "maybe": [j.id for j in items],
                        "t": time.time(),
                    },
                )
                await asyncio.sleep(0.1)
                continue
            _append(out, {"ok": ids, "t": time.time()})
            sent += n
    finally:
        await storage.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--rate", type=float, default=100.0, help="jobs per second")
    ap.add_argument("--min-ms", type=int, default=0)
    ap.add_argument("--max-ms", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    asyncio.run(produce(a.url, a.out, a.jobs, a.batch, a.rate, a.min_ms, a.max_ms, a.seed))


if __name__ == "__main__":
    main()
