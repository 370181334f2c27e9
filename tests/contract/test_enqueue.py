"""Enqueue one and many, validation, deduplication keys, get."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, cast

import pytest

from qml.errors import (
    ConfigurationError,
    DuplicateJobError,
    JobNotFoundError,
    QmlError,
    SerializationError,
)
from qml.job import Job, JobState
from qml.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from qml.storage.base import CAP_TRANSACTIONAL_ENQUEUE, Storage
from qml.storage.requests import JobQuery, Outcome

from .support import assert_recent, assert_time, claim_one, utcnow

ARGS: dict[str, Any] = {
    "to": "user@example.com",
    "nested": {"list": [1, 2.5, None, True, False], "empty": {}, "text": "üñí©ødé ✓"},
    "big": 2**53,
    "neg": -7,
}


async def test_enqueue_stores_a_clean_enqueued_job(storage: Storage) -> None:
    forged = Job(
        "send_email",
        ARGS,
        queue="mail",
        priority=7,
        max_retries=4,
        timeout=12.5,
        meta={"trace_id": "abc", "n": 1},
        state=JobState.SUCCEEDED,
        attempts=9,
        crashes=2,
        lease_token="forged",
        server_id="evil",
        cancel_requested=True,
        error="old",
        result={"r": 1},
    )
    job_id = await storage.enqueue(forged)
    assert job_id == forged.id
    job = await storage.get_job(job_id)
    assert job.id == job_id
    assert (job.method, job.args, job.queue, job.priority) == ("send_email", ARGS, "mail", 7)
    assert (job.max_retries, job.timeout, job.meta) == (4, 12.5, {"trace_id": "abc", "n": 1})
    assert job.state is JobState.ENQUEUED
    assert (job.attempts, job.crashes) == (0, 0)
    assert job.lease_token is None and job.server_id is None and job.lease_expires_at is None
    assert job.cancel_requested is False
    assert job.error is None and job.error_type is None and job.result is None
    assert job.started_at is None and job.finished_at is None and job.expires_at is None
    assert job.run_at is None and job.dedup_key is None
    assert_recent(job.created_at)
    assert_time(job.enqueued_at, job.created_at)
    assert [(c.state, c.reason) for c in job.history] == [(JobState.ENQUEUED, "enqueued")]
    assert await storage.count() == 1


async def test_defaults_round_trip(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    job = await storage.get_job(job_id)
    assert (job.args, job.queue, job.priority, job.max_retries, job.timeout, job.meta) == (
        {},
        "default",
        0,
        None,
        None,
        {},
    )


@pytest.mark.parametrize(
    "args",
    [None, 0, "text", [1, "a"], 3.25, True],
    ids=["null", "int", "str", "list", "float", "bool"],
)
async def test_any_json_value_is_valid_args(storage: Storage, args: Any) -> None:
    job_id = await storage.enqueue(Job("m", args))
    assert (await storage.get_job(job_id)).args == args


async def test_stored_args_do_not_follow_the_callers_dict(storage: Storage) -> None:
    args: dict[str, Any] = {"items": [1, 2]}
    job_id = await storage.enqueue(Job("m", args))
    args["items"].append(3)
    args["new"] = True
    assert (await storage.get_job(job_id)).args == {"items": [1, 2]}
    fetched = await storage.get_job(job_id)
    fetched.args["items"].append(99)
    assert (await storage.get_job(job_id)).args == {"items": [1, 2]}


async def test_future_run_at_makes_a_scheduled_job(storage: Storage) -> None:
    run_at = utcnow() + timedelta(hours=1)
    job_id = await storage.enqueue(Job("m", run_at=run_at))
    job = await storage.get_job(job_id)
    assert job.state is JobState.SCHEDULED
    assert_time(job.run_at, run_at)
    assert job.enqueued_at is None
    assert [(c.state, c.reason) for c in job.history] == [(JobState.SCHEDULED, "scheduled")]


async def test_past_run_at_makes_an_enqueued_job(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m", run_at=utcnow() - timedelta(hours=1)))
    job = await storage.get_job(job_id)
    assert job.state is JobState.ENQUEUED
    assert job.enqueued_at is not None


async def test_enqueue_many_stores_all_and_returns_ids_in_order(storage: Storage) -> None:
    jobs = [Job("m", {"i": i}, queue=f"q{i % 3}") for i in range(12)]
    ids = await storage.enqueue_many(jobs)
    assert ids == [j.id for j in jobs]
    for i, job_id in enumerate(ids):
        job = await storage.get_job(job_id)
        assert job.args == {"i": i} and job.queue == f"q{i % 3}"
    assert await storage.count() == 12
    assert await storage.count(queue="q1") == 4


async def test_enqueue_many_of_nothing(storage: Storage) -> None:
    assert await storage.enqueue_many([]) == []
    assert await storage.count() == 0


BadJob = Callable[[], Job]
BAD_JOBS: list[tuple[str, BadJob, type[QmlError]]] = [
    ("empty-method", lambda: Job(""), ConfigurationError),
    ("long-method", lambda: Job("m" * 201), ConfigurationError),
    ("newline-method", lambda: Job("a\nb"), ConfigurationError),
    ("nul-method", lambda: Job("a\x00b"), ConfigurationError),
    ("non-str-method", lambda: Job(cast(str, 42)), ConfigurationError),
    ("empty-queue", lambda: Job("m", queue=""), ConfigurationError),
    ("bool-priority", lambda: Job("m", priority=True), ConfigurationError),
    ("float-priority", lambda: Job("m", priority=cast(int, 1.5)), ConfigurationError),
    ("huge-priority", lambda: Job("m", priority=2**31), ConfigurationError),
    ("tiny-priority", lambda: Job("m", priority=-(2**31)), ConfigurationError),
    ("negative-retries", lambda: Job("m", max_retries=-1), ConfigurationError),
    ("zero-timeout", lambda: Job("m", timeout=0), ConfigurationError),
    ("nan-timeout", lambda: Job("m", timeout=float("nan")), ConfigurationError),
    ("empty-dedup-key", lambda: Job("m", dedup_key=""), ConfigurationError),
    ("object-args", lambda: Job("m", {"x": object()}), SerializationError),
    ("set-args", lambda: Job("m", {1, 2}), SerializationError),
    ("datetime-args", lambda: Job("m", {"at": utcnow()}), SerializationError),
    ("bytes-args", lambda: Job("m", {"b": b"raw"}), SerializationError),
    ("oversized-args", lambda: Job("m", "x" * DEFAULT_MAX_PAYLOAD_BYTES), SerializationError),
    ("non-json-meta", lambda: Job("m", meta={"x": object()}), SerializationError),
    ("not-a-job", lambda: cast(Job, {"method": "m"}), ConfigurationError),
]


@pytest.mark.parametrize(
    ("make_bad", "error"), [(b, e) for _, b, e in BAD_JOBS], ids=[name for name, _, _ in BAD_JOBS]
)
async def test_invalid_job_is_refused_and_nothing_is_written(
    storage: Storage, make_bad: BadJob, error: type[QmlError]
) -> None:
    with pytest.raises(error):
        await storage.enqueue(make_bad())
    with pytest.raises(error):
        await storage.enqueue_many([Job("ok", dedup_key="good-key"), make_bad(), Job("ok")])
    assert await storage.count() == 0
    assert (await storage.list_jobs()).items == []
    await storage.enqueue(Job("ok", dedup_key="good-key"))  # the key was not consumed


async def test_payload_limit_is_inclusive(storage: Storage) -> None:
    # a JSON string of n characters encodes to n + 2 bytes
    fits = "x" * (storage.max_payload_bytes - 2)
    job_id = await storage.enqueue(Job("m", fits))
    assert (await storage.get_job(job_id)).args == fits
    with pytest.raises(SerializationError):
        await storage.enqueue(Job("m", fits + "x"))
    assert await storage.count() == 1


async def test_dedup_key_refuses_a_second_job(storage: Storage) -> None:
    first = await storage.enqueue(Job("m", dedup_key="invoice-42"))
    assert (await storage.get_job(first)).dedup_key == "invoice-42"
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", dedup_key="invoice-42"))
    assert await storage.count() == 1


async def test_dedup_in_a_batch_is_all_or_none(storage: Storage) -> None:
    await storage.enqueue(Job("m", dedup_key="used"))
    batch = [Job("a"), Job("b", dedup_key="fresh"), Job("c", dedup_key="used")]
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many(batch)
    assert await storage.count() == 1
    for job in batch:
        assert await storage.get(job.id) is None
    await storage.enqueue(Job("m", dedup_key="fresh"))  # not consumed by the failed batch


async def test_dedup_key_twice_in_one_batch(storage: Storage) -> None:
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many([Job("a", dedup_key="k"), Job("b", dedup_key="k")])
    assert await storage.count() == 0
    await storage.enqueue(Job("m", dedup_key="k"))


async def test_same_job_id_twice_is_refused(storage: Storage) -> None:
    job = Job("m", {"v": 1})
    await storage.enqueue(job)
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", {"v": 2}, id=job.id))
    assert (await storage.get_job(job.id)).args == {"v": 1}
    assert await storage.count() == 1


async def test_a_batch_reusing_an_id_writes_nothing(storage: Storage) -> None:
    existing = await storage.enqueue(Job("m"))
    fresh = Job("m", dedup_key="fresh-key")
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many([fresh, Job("m", id=existing)])
    assert await storage.get(fresh.id) is None
    twice = Job("m")
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many([twice, Job("m", id=twice.id)])
    assert await storage.get(twice.id) is None
    assert await storage.count() == 1
    await storage.enqueue(Job("m", dedup_key="fresh-key"))  # the key was not consumed


async def test_a_taken_id_deep_in_a_large_batch_writes_nothing(storage: Storage) -> None:
    existing = await storage.enqueue(Job("m"))
    batch = [Job("m", {"i": i}) for i in range(1500)]
    batch[1200] = Job("m", id=existing)  # in the second thousand
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many(batch)
    assert await storage.count() == 1
    assert await storage.get(batch[0].id) is None and await storage.get(batch[1499].id) is None


def _long_batch(n: int, bad_at: int | None = None) -> Iterator[Job]:
    """``n`` jobs, built one by one as they are asked for (more than two chunks of
    a PostgreSQL stream); at ``bad_at`` one that validation refuses."""
    for i in range(n):
        if i == bad_at:
            yield Job("m", queue="")
            continue
        yield Job(
            "m",
            {"i": i},
            queue=f"q{i % 2}",
            dedup_key=f"key-{i}" if i % 100 == 7 else None,
            run_at=utcnow() + timedelta(hours=1) if i == 333 else None,
        )


async def test_a_long_generator_of_jobs_is_stored_in_order(storage: Storage) -> None:
    built: list[Job] = []

    def jobs() -> Iterator[Job]:
        for job in _long_batch(450):
            built.append(job)
            yield job

    ids = await storage.enqueue_many(jobs())
    assert len(built) == 450 and ids == [j.id for j in built]
    assert await storage.count() == 450
    assert await storage.count(JobState.SCHEDULED) == 1
    assert await storage.count(queue="q1") == 225
    for i in (0, 199, 200, 201, 333, 407, 449):
        job = await storage.get_job(ids[i])
        assert job.args == {"i": i} and job.queue == f"q{i % 2}"
        assert job.state is (JobState.SCHEDULED if i == 333 else JobState.ENQUEUED)
        assert job.dedup_key == (f"key-{i}" if i % 100 == 7 else None)
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", dedup_key="key-407"))


@pytest.mark.parametrize("bad_at", [5, 250, 449])
async def test_a_bad_job_late_in_a_long_batch_writes_nothing(storage: Storage, bad_at: int) -> None:
    with pytest.raises(ConfigurationError):
        await storage.enqueue_many(_long_batch(450, bad_at=bad_at))
    assert await storage.count() == 0
    assert (await storage.list_jobs()).items == []
    # nothing consumed: the same keys (first chunk's included) are free, and the
    # storage works on
    ids = await storage.enqueue_many(_long_batch(450))
    assert len(ids) == 450 and await storage.count() == 450


@pytest.mark.parametrize("at", [0, 199, 200, 201])
async def test_a_none_among_the_jobs_is_refused_wherever_it_is(storage: Storage, at: int) -> None:
    jobs: list[Job | None] = [Job("m", {"i": i}) for i in range(450)]
    jobs.insert(at, None)  # not the end of the batch: a bad job
    with pytest.raises(ConfigurationError):
        await storage.enqueue_many(cast(list[Job], jobs))
    assert await storage.count() == 0


async def test_a_used_dedup_key_late_in_a_long_batch_writes_nothing(storage: Storage) -> None:
    await storage.enqueue(Job("m", dedup_key="key-407"))
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many(_long_batch(450))
    assert await storage.count() == 1
    await storage.enqueue(Job("m", dedup_key="key-7"))  # the first chunk's key is free


async def test_enqueue_inside_a_transaction_needs_the_capability(storage: Storage) -> None:
    if CAP_TRANSACTIONAL_ENQUEUE in storage.capabilities:
        return  # exercised with a real connection by the backend's own tests
    with pytest.raises(ConfigurationError):
        await storage.enqueue(Job("m"), connection=object())
    assert await storage.count() == 0


async def test_dedup_key_outlives_its_job_until_pruned(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m", dedup_key="once"))
    lease = await claim_one(storage)
    assert lease.job.id == job_id
    assert await storage.finish([Outcome.succeed(lease, None, ttl=60)]) == [True]
    later = utcnow() + timedelta(hours=1)
    assert await storage.delete_expired(now=later) == 1
    assert await storage.get(job_id) is None
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", dedup_key="once"))
    await storage.prune(now=None)  # default age: 30 days; the key is young
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", dedup_key="once"))
    await storage.prune(dedup_older_than=600, now=later)
    new_id = await storage.enqueue(Job("m", dedup_key="once"))
    assert (await storage.get_job(new_id)).dedup_key == "once"


async def test_get_unknown_job(storage: Storage) -> None:
    assert await storage.get("00000000-0000-7000-8000-000000000000") is None
    with pytest.raises(JobNotFoundError):
        await storage.get_job("00000000-0000-7000-8000-000000000000")
    assert await storage.get("not-a-uuid") is None


async def test_enqueued_jobs_are_listed(storage: Storage) -> None:
    ids = await storage.enqueue_many([Job("m"), Job("n")])
    page = await storage.list_jobs(JobQuery())
    assert sorted(j.id for j in page.items) == sorted(ids)
