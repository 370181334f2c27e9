"""move / delete / requeue / request_cancel against the transition table; history; TTLs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from qml.errors import InvalidTransitionError, JobNotFoundError
from qml.ids import new_id
from qml.job import Job, JobState
from qml.states import DELETABLE, REQUEUEABLE, TRANSITIONS
from qml.storage.base import Storage
from qml.storage.requests import Outcome, RecoverRequest

from .support import (
    ERROR,
    E,
    P,
    assert_recent,
    assert_time,
    claim_one,
    job_in_state,
    last_change,
    utcnow,
)


async def test_move_follows_the_transition_table(storage: Storage) -> None:
    """Every (from, to) pair: moved exactly when the table allows it and neither
    side is Processing (only a claim enters Processing, only its holder leaves it)."""
    cases = {}
    for src in JobState:
        for dst in JobState:
            cases[src, dst] = await job_in_state(storage, src, f"q-{src.value}-{dst.value}")
    for (src, dst), job_id in cases.items():
        moved = await storage.move([job_id], dst, reason="table")
        allowed = dst in TRANSITIONS[src] and P not in (src, dst)
        assert moved == ([job_id] if allowed else []), f"{src.label} -> {dst.label}"
        job = await storage.get_job(job_id)
        assert job.state is (dst if allowed else src), f"{src.label} -> {dst.label}"
        if allowed:
            assert (last_change(job).state, last_change(job).reason) == (dst, "table")
    counts = await storage.stats()
    assert counts.total == len(cases)


async def test_move_many_keeps_input_order_and_skips_the_rest(storage: Storage) -> None:
    a = await job_in_state(storage, JobState.AWAITING_RETRY, "a")
    b = await job_in_state(storage, JobState.ENQUEUED, "b")
    c = await job_in_state(storage, JobState.AWAITING_RETRY, "c")
    ghost = new_id()
    moved = await storage.move([c, ghost, b, a, c], JobState.FAILED, reason="given up")
    assert moved == [c, a]
    assert await storage.move([], JobState.DELETED) == []
    moved = await storage.move([a, b], JobState.DELETED, allowed_from=[JobState.ENQUEUED])
    assert moved == [b]


async def test_move_to_failed_stamps_finish_and_expiry(storage: Storage) -> None:
    job_id = await job_in_state(storage, JobState.AWAITING_RETRY, "q")
    assert await storage.move([job_id], JobState.FAILED) == [job_id]
    job = await storage.get_job(job_id)
    assert job.finished_at is not None
    assert_recent(job.finished_at)
    assert_time(job.expires_at, job.finished_at + storage.retention.failed_ttl)
    assert_time(last_change(job).at, job.finished_at)


async def test_move_to_scheduled_sets_run_at(storage: Storage) -> None:
    a = await job_in_state(storage, JobState.ENQUEUED, "a")
    b = await job_in_state(storage, JobState.ENQUEUED, "b")
    run_at = utcnow() + timedelta(hours=2)
    assert await storage.move([a], JobState.SCHEDULED, run_at=run_at) == [a]
    assert_time((await storage.get_job(a)).run_at, run_at)
    assert await storage.move([b], JobState.SCHEDULED) == [b]
    job = await storage.get_job(b)
    assert job.run_at is not None
    assert_time(job.run_at, last_change(job).at)  # no run_at given: now


async def test_delete(storage: Storage) -> None:
    job_id = await job_in_state(storage, JobState.ENQUEUED, "q")
    job = await storage.delete(job_id)
    assert job.state is JobState.DELETED
    change = last_change(job)
    assert (change.state, change.reason) == (JobState.DELETED, "deleted")
    assert_time(job.expires_at, change.at + storage.retention.deleted_ttl)
    assert job.finished_at is None
    assert (await storage.get_job(job_id)).state is JobState.DELETED  # soft delete
    assert await storage.count(state=JobState.DELETED) == 1
    with pytest.raises(InvalidTransitionError):
        await storage.delete(job_id)


@pytest.mark.parametrize("state", sorted(DELETABLE), ids=lambda s: s.value)
async def test_delete_from_every_deletable_state(storage: Storage, state: JobState) -> None:
    job_id = await job_in_state(storage, state, "q")
    assert (await storage.delete(job_id, reason="cleanup")).state is JobState.DELETED
    assert last_change(await storage.get_job(job_id)).reason == "cleanup"


async def test_delete_refused(storage: Storage) -> None:
    held = await job_in_state(storage, JobState.PROCESSING, "q")
    with pytest.raises(InvalidTransitionError):
        await storage.delete(held)
    job = await storage.get_job(held)
    assert job.state is JobState.PROCESSING and job.lease_token is not None
    with pytest.raises(JobNotFoundError):
        await storage.delete(new_id())


@pytest.mark.parametrize("state", sorted(REQUEUEABLE), ids=lambda s: s.value)
async def test_requeue(storage: Storage, state: JobState) -> None:
    job_id = await job_in_state(storage, state, "q")
    job = await storage.requeue(job_id)
    assert job.state is JobState.ENQUEUED
    assert job.run_at is None and job.expires_at is None
    change = last_change(job)
    assert (change.state, change.reason) == (JobState.ENQUEUED, "requeued")
    assert_time(job.enqueued_at, change.at)
    lease = await claim_one(storage, "q")
    assert lease.job_id == job_id


async def test_requeue_resets_attempts_of_a_final_job(storage: Storage) -> None:
    job_id = await storage.enqueue(Job("m"))
    t = utcnow()
    await claim_one(storage, now=t, lease_seconds=1)
    recovered = await storage.recover_expired(
        RecoverRequest(now=t + timedelta(seconds=2), crash_backoff=0)
    )
    assert recovered == [job_id]
    lease = await claim_one(storage, now=t + timedelta(seconds=3))
    await storage.fail(lease, ERROR)
    job = await storage.get_job(job_id)
    assert (job.attempts, job.crashes) == (2, 1)
    job = await storage.requeue(job_id, reason="operator")
    assert (job.state, job.attempts, job.crashes) == (JobState.ENQUEUED, 0, 0)
    assert last_change(job).reason == "operator"
    lease = await claim_one(storage)
    assert lease.job.attempts == 1


async def test_requeue_refused(storage: Storage) -> None:
    for state in (JobState.ENQUEUED, JobState.PROCESSING):
        job_id = await job_in_state(storage, state, f"q-{state.value}")
        with pytest.raises(InvalidTransitionError):
            await storage.requeue(job_id)
        assert (await storage.get_job(job_id)).state is state
    with pytest.raises(JobNotFoundError):
        await storage.requeue(new_id())


@pytest.mark.parametrize(
    "state", [E, JobState.SCHEDULED, JobState.AWAITING_RETRY], ids=lambda s: s.value
)
async def test_cancel_a_waiting_job_deletes_it(storage: Storage, state: JobState) -> None:
    job_id = await job_in_state(storage, state, "q")
    job = await storage.request_cancel(job_id)
    assert job.state is JobState.DELETED
    assert (last_change(job).state, last_change(job).reason) == (JobState.DELETED, "cancelled")


async def test_cancel_a_running_job_flags_it(storage: Storage) -> None:
    job_id = await job_in_state(storage, P, "q")
    job = await storage.request_cancel(job_id)
    assert (job.state, job.cancel_requested) == (P, True)


@pytest.mark.parametrize(
    "state", [JobState.SUCCEEDED, JobState.FAILED, JobState.DELETED], ids=lambda s: s.value
)
async def test_cancel_a_finished_job_is_refused(storage: Storage, state: JobState) -> None:
    job_id = await job_in_state(storage, state, "q")
    with pytest.raises(InvalidTransitionError):
        await storage.request_cancel(job_id)
    assert (await storage.get_job(job_id)).state is state


async def test_cancel_unknown_job(storage: Storage) -> None:
    with pytest.raises(JobNotFoundError):
        await storage.request_cancel(new_id())


async def test_history_tells_the_whole_story(storage: Storage) -> None:
    t = utcnow()
    job_id = await storage.enqueue(Job("m", run_at=t + timedelta(seconds=30)))
    t += timedelta(seconds=31)
    assert await storage.activate_due(now=t) == 1
    lease = await claim_one(storage, server="srv-a", now=t, lease_seconds=10)
    t += timedelta(seconds=11)
    assert await storage.recover_expired(RecoverRequest(now=t, crash_backoff=0)) == [job_id]
    lease = await claim_one(storage, server="srv-b", now=t)
    assert await storage.finish([Outcome.retry(lease, ERROR, delay=5, reason="flaky")], now=t) == [
        True
    ]
    t += timedelta(seconds=6)
    assert await storage.activate_due(now=t) == 1
    lease = await claim_one(storage, server="srv-c", now=t)
    assert await storage.finish([Outcome.release(lease, reason="shutdown")], now=t) == [True]
    lease = await claim_one(storage, server="srv-c", now=t)
    assert await storage.finish([Outcome.succeed(lease, "ok", ttl=60)], now=t) == [True]
    await storage.delete(job_id)
    await storage.requeue(job_id)
    job = await storage.get_job(job_id)
    story = [
        (c.state, c.reason, c.server_id, c.attempt if c.state is P else None) for c in job.history
    ]
    assert story == [
        (JobState.SCHEDULED, "scheduled", None, None),
        (JobState.ENQUEUED, "due", None, None),
        (JobState.PROCESSING, None, "srv-a", 1),
        (JobState.ENQUEUED, "lease_expired", "srv-a", None),
        (JobState.PROCESSING, None, "srv-b", 2),
        (JobState.AWAITING_RETRY, "flaky", "srv-b", None),
        (JobState.ENQUEUED, "due", None, None),
        (JobState.PROCESSING, None, "srv-c", 3),
        (JobState.ENQUEUED, "shutdown", "srv-c", None),
        (JobState.PROCESSING, None, "srv-c", 3),
        (JobState.SUCCEEDED, None, "srv-c", None),
        (JobState.DELETED, "deleted", None, None),
        (JobState.ENQUEUED, "requeued", None, None),
    ]
    times = [c.at for c in job.history]
    assert all(x.tzinfo is not None for x in times)
    assert times[:11] == sorted(times[:11])


async def test_expires_at_is_set_only_in_final_states(storage: Storage) -> None:
    made = {s: await job_in_state(storage, s, f"q-{s.value}") for s in JobState}
    for state, job_id in made.items():
        job = await storage.get_job(job_id)
        if job.is_final:
            assert job.expires_at is not None, state
        else:
            assert job.expires_at is None, state
    job = await storage.requeue(made[JobState.SUCCEEDED])
    assert job.expires_at is None
