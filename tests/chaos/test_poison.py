"""Scenario 8, poison jobs: a job that kills its own process is quarantined to
Failed (``worker_crashed``) after ``max_crashes`` (3) crash recoveries spaced by
the crash backoff, while the other jobs succeed; arguments corrupted straight in
the storage fail once with a deserialization error without hurting a worker;
arguments over the size limit are refused at enqueue with nothing written."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from qml import Job, JobState, SerializationError, Storage
from qml.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from qml.storage.requests import RecoverRequest

from .harness import (
    analyze,
    final_states,
    load_audit,
    record_figures,
    start_worker,
    stop,
    wait_final,
)
from .tools import wait_ready, write_raw_args

MAX_CRASHES = 3  # ServerConfig.max_crashes default
RECOVER = RecoverRequest(crash_backoff=1.0)  # ServerConfig.crash_backoff default
LEASE = 2.0


async def _poison(
    backend: str,
    url: str,
    storage: Storage,
    tmp_path: Path,
    others: int,
    poisons: int,
    slots: int,
) -> None:
    """With one slot per process a poison job kills only itself; with more, the
    jobs that shared its process die with it and count a crash too, but a server
    runs at most one job on its last chance (one crash from quarantine) at a time,
    beside jobs that are not, so none is quarantined for the company it kept."""
    rng = random.Random(8)
    audit_dir = tmp_path / "audit"
    hows = ["exit", "kill"]
    poison_ids = await storage.enqueue_many(
        [Job("poison", {"how": hows[i % 2]}) for i in range(poisons)]
    )
    other_ids: list[str] = []
    for start in range(0, others, 500):
        other_ids += await storage.enqueue_many(
            [
                Job("work", {"ms": rng.randint(5, 20)})
                for _ in range(start, min(others, start + 500))
            ]
        )
    # the poison jobs go first: they crash processes while the others run
    sup = start_worker(
        url, audit_dir, "--processes", "2", "--workers", str(slots), "--lease", str(LEASE),
        "--poll-interval", "0.2", log=tmp_path / "workers.log",
    )  # fmt: skip
    try:
        await wait_final(storage, others + poisons, 60 + others / 20)
        await asyncio.sleep(1.0)  # a supervisor SIGTERM'd while starting dies of it
    finally:
        code = stop(sup)
    assert code == 0, (tmp_path / "workers.log").read_text()[-3000:]

    execs = load_audit(audit_dir)
    ids = poison_ids + other_ids
    final = await final_states(storage, ids)
    poison_set = set(poison_ids)
    crashed = {e.pid: e.start for e in execs if e.job_id in poison_set}
    rep = analyze(other_ids, final, [e for e in execs if e.job_id not in poison_set], crashed)
    spacing: list[float] = []
    poison_runs: list[int] = []
    for job_id in poison_ids:
        job = await storage.get_job(job_id)
        runs = sorted((e for e in execs if e.job_id == job_id), key=lambda e: e.start)
        assert job.state is JobState.FAILED, (job_id, job.state, job.history)
        assert job.history[-1].reason == "worker_crashed", job.history
        assert job.crashes == MAX_CRASHES and job.attempts == MAX_CRASHES, job
        assert job.error_type == "WorkerCrashed", job.error_type
        assert all(e.end is None for e in runs), runs  # each run ended with its process
        assert len({e.pid for e in runs}) == len(runs), runs
        recoveries = [h.at.timestamp() for h in job.history if h.reason == "lease_expired"]
        assert len(recoveries) == MAX_CRASHES - 1, job.history
        if slots > 1:  # it may have died of another poison job in its process
            assert len(runs) <= MAX_CRASHES, runs
            poison_runs.append(len(runs))
            continue
        assert len(runs) == MAX_CRASHES, runs
        for n, (recovered, nxt) in enumerate(zip(recoveries, runs[1:], strict=True), start=1):
            backoff = RECOVER.crash_delay(n)
            spacing.append(nxt.start - recovered)
            assert nxt.start - recovered >= backoff - 0.05, (n, nxt.start - recovered, job.history)
            assert recovered - runs[n - 1].start >= LEASE - 0.05  # only after the lease
    collateral = [i for i in other_ids if final[i].state is not JobState.SUCCEEDED]
    shared = sum(1 for i in other_ids if final[i].expired)  # died beside a poison job
    extra = (
        f"slots={slots} poison={poisons} crashed_processes={len(crashed)}"
        f" died_beside_poison={shared} collateral_failed={len(collateral)}"
        f" poison_runs={poison_runs or MAX_CRASHES}"
        f" crash_spacing={','.join(f'{s:.2f}' for s in spacing[:4])}s"
    )
    print(f"poison on {backend}: {rep.summary()} {extra}")
    record_figures(f"poison slots={slots}", backend, rep, extra)
    assert not rep.lost and not rep.dup and not rep.overlap, rep.summary()
    if slots == 1:
        assert not rep.unaudited, rep.summary()
    assert not collateral, [(i, final[i]) for i in collateral]
    assert all(len(final[i].expired) < MAX_CRASHES for i in other_ids)


# Arguments no decoder accepts; PostgreSQL's json type takes the first four (it
# checks syntax only), the other backends take any bytes.
CORRUPT_JSON = [
    b"[" * 2000 + b"]" * 2000,  # nesting deeper than the decoder allows
    b'{"ms": "\\ud800"}',  # a lone surrogate
    b'{"ms": 1e999}',  # a number out of range
    b"1e999",
]
CORRUPT_BYTES = [b'{"ms": 1', b"\xff\xfe\x00", b"", b"not json"]


async def _corrupt(backend: str, url: str, storage: Storage, tmp_path: Path, n: int) -> None:
    audit_dir = tmp_path / "audit"
    bad = await storage.enqueue_many([Job("work", {"ms": 1}) for _ in range(n)])
    good = await storage.enqueue_many(
        [Job("work", {"ms": 5}, meta={"k": i}) for i in range(n // 5)]
    )
    payloads = CORRUPT_JSON + ([] if backend == "postgres" else CORRUPT_BYTES)
    for i, job_id in enumerate(bad):
        await write_raw_args(storage, job_id, payloads[i % len(payloads)])
    # damaged meta (bookkeeping, not the job's input) is dropped, never fatal
    for i, job_id in enumerate(good[: len(good) // 2]):
        await write_raw_args(storage, job_id, payloads[i % len(payloads)], field="meta")
    worker = start_worker(
        url, audit_dir, "--workers", "4", "--lease", str(LEASE), "--poll-interval", "0.2",
        log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        await wait_ready(storage, [worker])
        await wait_final(storage, len(bad) + len(good), 120)
        alive = worker.poll() is None
    finally:
        code = stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert alive and code == 0, log[-3000:]
    execs = load_audit(audit_dir)
    ran = {e.job_id for e in execs}
    final = await final_states(storage, bad + good)
    failed_ok = 0
    for job_id in bad:
        job = await storage.get_job(job_id)
        assert job.state is JobState.FAILED and job.attempts == 1, job
        assert job.error_type == "SerializationError", (job.error_type, job.error)
        assert job.history[-1].reason == "corrupt", job.history
        assert job_id not in ran
        failed_ok += 1
    assert all(final[i].state is JobState.SUCCEEDED for i in good)
    damaged = len(good) // 2
    metas = [(await storage.get_job(i)).meta for i in good]
    assert metas == [{}] * damaged + [{"k": k} for k in range(damaged, len(good))], metas
    rep = analyze(good, {i: final[i] for i in good}, execs, {})
    print(f"corrupt payloads on {backend}: {rep.summary()} corrupt_failed_once={failed_ok}")
    record_figures("corrupt_payloads", backend, rep, f"corrupt_failed_once={failed_ok}")
    assert not rep.lost and not rep.dup and not rep.overlap, rep.summary()


@pytest.mark.timeout(300)
async def test_poison_quarantine(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    await _poison(backend, url, storage, tmp_path, 300, 2, 1)


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
async def test_poison_quarantine_full(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    others = int(os.environ.get("QML_CHAOS_POISON_JOBS", "5000"))
    await _poison(backend, url, storage, tmp_path, others, 4, 1)


@pytest.mark.timeout(300)
async def test_poison_shared_process(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    """Poison jobs in processes of 4 slots: none of the jobs beside them is quarantined."""
    backend, url, storage = store
    await _poison(backend, url, storage, tmp_path, 300, 2, 4)


@pytest.mark.chaos_full
@pytest.mark.timeout(1800)
async def test_poison_shared_process_full(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    """Poison jobs in processes of 4 slots: none of the jobs beside them is quarantined."""
    backend, url, storage = store
    others = int(os.environ.get("QML_CHAOS_POISON_JOBS", "5000"))
    await _poison(backend, url, storage, tmp_path, others, 4, 4)


@pytest.mark.timeout(300)
async def test_corrupt_payloads(store: tuple[str, str, Storage], tmp_path: Path) -> None:
    backend, url, storage = store
    await _corrupt(backend, url, storage, tmp_path, 100)


async def test_oversized_payload_writes_nothing(store: tuple[str, str, Storage]) -> None:
    _, _, storage = store
    await storage.enqueue(Job("work", {"ms": 1}))
    before = await storage.count()
    # {"ms":1,"pad":"…"}: 17 bytes around the padding
    at_limit = {"ms": 1, "pad": "x" * (DEFAULT_MAX_PAYLOAD_BYTES - 17)}
    over = {"ms": 1, "pad": "x" * (DEFAULT_MAX_PAYLOAD_BYTES - 16)}
    with pytest.raises(SerializationError, match="over the limit"):
        await storage.enqueue(Job("work", over))
    with pytest.raises(SerializationError, match="over the limit"):
        await storage.enqueue_many([Job("work", {"ms": 1}), Job("work", over)])
    assert await storage.count() == before
    job_id = await storage.enqueue(Job("work", at_limit))  # the limit itself is allowed
    assert await storage.count() == before + 1
    assert (await storage.get_job(job_id)).args == at_limit
