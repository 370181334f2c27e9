"""A queue's oldest Enqueued job is judged by when it became Enqueued, so a
requeued old job does not look like it has waited since it was created."""

from __future__ import annotations

from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, Outcome


async def test_oldest_enqueued_uses_the_time_a_job_became_enqueued(storage: Storage) -> None:
    old = await storage.enqueue(Job("m", queue="q"))
    (lease,) = await storage.claim(ClaimRequest("w", ["q"], 1))
    await storage.finish([Outcome.fail(lease, ErrorInfo("E", "x"), ttl=3600.0)])
    fresh = await storage.enqueue(Job("m", queue="q"))
    await storage.requeue(old)
    requeued = await storage.get_job(old)
    first = await storage.get_job(fresh)
    assert requeued.state is JobState.ENQUEUED
    assert requeued.enqueued_at is not None
    assert first.enqueued_at is not None
    assert requeued.enqueued_at > first.enqueued_at
    (info,) = [q for q in await storage.queues() if q.name == "q"]
    assert info.oldest_enqueued_at is not None
    assert abs((info.oldest_enqueued_at - first.enqueued_at).total_seconds()) < 0.01
