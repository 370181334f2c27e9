"""list_jobs filters and keyset pagination; counts, stats and queues."""

from __future__ import annotations

from datetime import timedelta

import pytest

from qml.errors import ConfigurationError
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, JobQuery, Outcome

from .support import ERROR, assert_time, claim_one, job_in_state, utcnow


async def walk(storage: Storage, query: JobQuery) -> list[list[str]]:
    """Follow ``next_cursor`` from the first page to the last; ids per page."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        q = JobQuery(
            states=query.states,
            queue=query.queue,
            method=query.method,
            text=query.text,
            cursor=cursor,
            limit=query.limit,
            ascending=query.ascending,
        )
        page = await storage.list_jobs(q)
        pages.append([j.id for j in page.items])
        assert len(pages) < 100, "pagination does not end"
        if page.next_cursor is None:
            return pages
        assert page.items, "a page with a next cursor must not be empty"
        assert page.next_cursor == page.items[-1].id
        cursor = page.next_cursor


async def test_newest_first_by_default(storage: Storage) -> None:
    ids = await storage.enqueue_many([Job("m", {"i": i}) for i in range(5)])
    page = await storage.list_jobs()
    assert [j.id for j in page.items] == list(reversed(ids))
    assert page.next_cursor is None
    page = await storage.list_jobs(JobQuery(ascending=True))
    assert [j.id for j in page.items] == ids
    assert page.items[0].args == {"i": 0}


@pytest.mark.parametrize("ascending", [False, True], ids=["newest-first", "oldest-first"])
async def test_pagination_has_no_duplicate_and_no_gap(storage: Storage, ascending: bool) -> None:
    ids = []
    for chunk in range(5):  # several round trips, so ids span more than one batch
        ids += await storage.enqueue_many([Job("m", {"c": chunk, "i": i}) for i in range(5)])
    pages = await walk(storage, JobQuery(limit=7, ascending=ascending))
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    flat = [i for p in pages for i in p]
    assert flat == sorted(ids, reverse=not ascending)


async def test_last_full_page_has_no_cursor(storage: Storage) -> None:
    await storage.enqueue_many([Job("m") for _ in range(20)])
    pages = await walk(storage, JobQuery(limit=10))
    assert [len(p) for p in pages] == [10, 10]
    pages = await walk(storage, JobQuery(limit=10, ascending=True))
    assert [len(p) for p in pages] == [10, 10]


async def test_a_cursor_stays_valid_when_jobs_change(storage: Storage) -> None:
    ids = await storage.enqueue_many([Job("m") for _ in range(6)])
    first = await storage.list_jobs(JobQuery(limit=3))
    assert [j.id for j in first.items] == ids[:2:-1]
    await storage.delete(ids[2])  # the state changes; the job stays listed
    await storage.enqueue(Job("m"))  # newer than the cursor: not on later pages
    second = await storage.list_jobs(JobQuery(limit=3, cursor=first.next_cursor))
    assert [j.id for j in second.items] == ids[2::-1]
    assert second.next_cursor is None


async def test_filter_by_state(storage: Storage) -> None:
    made = {s: await job_in_state(storage, s, f"q-{s.value}") for s in JobState}
    for state, job_id in made.items():
        page = await storage.list_jobs(JobQuery(states=frozenset({state})))
        assert [j.id for j in page.items] == [job_id]
        assert page.items[0].state is state
    both = frozenset({JobState.FAILED, JobState.SUCCEEDED})
    page = await storage.list_jobs(JobQuery(states=both, ascending=True))
    assert [j.id for j in page.items] == [made[JobState.SUCCEEDED], made[JobState.FAILED]]


async def test_filter_by_queue_and_method_is_exact(storage: Storage) -> None:
    a = await storage.enqueue(Job("send", queue="mail"))
    b = await storage.enqueue(Job("send", queue="mail-bulk"))
    c = await storage.enqueue(Job("sender", queue="mail"))
    page = await storage.list_jobs(JobQuery(queue="mail", ascending=True))
    assert [j.id for j in page.items] == [a, c]
    page = await storage.list_jobs(JobQuery(method="send", ascending=True))
    assert [j.id for j in page.items] == [a, b]
    page = await storage.list_jobs(JobQuery(method="send", queue="mail"))
    assert [j.id for j in page.items] == [a]
    page = await storage.list_jobs(JobQuery(queue="nope"))
    assert page.items == [] and page.next_cursor is None


async def test_text_search_in_args_id_and_error(storage: Storage) -> None:
    a = await storage.enqueue(Job("m", {"email": "Alice@Example.COM"}))
    b = await storage.enqueue(Job("m", {"email": "bob@example.org"}, queue="failing"))
    lease = await claim_one(storage, "failing")
    assert await storage.finish([Outcome.fail(lease, ERROR, ttl=3600)]) == [True]
    c = await storage.enqueue(Job("m", {"n": 1}))

    async def found(text: str) -> set[str]:
        return {j.id for j in (await storage.list_jobs(JobQuery(text=text))).items}

    assert await found("alice@example.com") == {a}
    assert await found("EXAMPLE") == {a, b}
    assert await found("kaput") == {b}  # the error message
    assert await found(c[-12:].upper()) == {c}  # part of the id
    assert await found("no such text") == set()
    page = await storage.list_jobs(JobQuery(text="example", states=frozenset({JobState.FAILED})))
    assert [j.id for j in page.items] == [b]


async def test_filters_combine_with_pagination(storage: Storage) -> None:
    ids = await storage.enqueue_many(
        [Job("m", {"i": i}, queue="even" if i % 2 == 0 else "odd") for i in range(30)]
    )
    even = [job_id for i, job_id in enumerate(ids) if i % 2 == 0]
    pages = await walk(storage, JobQuery(queue="even", limit=4))
    assert [i for p in pages for i in p] == list(reversed(even))
    pages = await walk(storage, JobQuery(queue="even", limit=4, ascending=True))
    assert [i for p in pages for i in p] == even


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_page_limit_is_checked(storage: Storage, limit: int) -> None:
    with pytest.raises(ConfigurationError):
        await storage.list_jobs(JobQuery(limit=limit))


async def test_counts_by_state_and_queue(storage: Storage) -> None:
    await storage.enqueue_many([Job("m", queue="a") for _ in range(3)])
    await storage.enqueue(Job("m", queue="b", run_at=utcnow() + timedelta(hours=1)))
    await storage.enqueue(Job("m", queue="b"))
    await claim_one(storage, "a")
    assert await storage.count() == 5
    assert await storage.count(state=JobState.ENQUEUED) == 3
    assert await storage.count(state=JobState.PROCESSING) == 1
    assert await storage.count(state=JobState.SCHEDULED, queue="b") == 1
    assert await storage.count(queue="a") == 3
    assert await storage.count(queue="c") == 0
    stats = await storage.stats()
    assert set(stats.counts) == set(JobState)
    assert stats.total == 5
    assert stats.counts[JobState.ENQUEUED] == 3 and stats.counts[JobState.SUCCEEDED] == 0
    assert set(stats.by_queue) == {"a", "b"}
    assert stats.by_queue["a"][JobState.PROCESSING] == 1
    assert stats.by_queue["a"][JobState.ENQUEUED] == 2
    assert stats.by_queue["b"][JobState.SCHEDULED] == 1
    assert stats.by_queue["b"][JobState.ENQUEUED] == 1


async def test_counts_follow_every_change(storage: Storage) -> None:
    made = {s: await job_in_state(storage, s, f"q-{s.value}") for s in JobState}
    stats = await storage.stats()
    assert stats.counts == {s: 1 for s in JobState}
    await storage.requeue(made[JobState.FAILED])
    await storage.delete(made[JobState.ENQUEUED])
    stats = await storage.stats()
    assert stats.counts[JobState.FAILED] == 0
    assert stats.counts[JobState.ENQUEUED] == 1
    assert stats.counts[JobState.DELETED] == 2
    assert stats.by_queue["q-failed"][JobState.ENQUEUED] == 1
    assert stats.total == len(JobState)


async def test_minute_history_counts_outcomes(storage: Storage) -> None:
    minute = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=10)
    at = minute + timedelta(seconds=30)
    await storage.enqueue_many([Job("m") for _ in range(4)])
    leases = await storage.claim(ClaimRequest("srv", ["default"], 4, now=at))
    outcomes = [
        Outcome.succeed(leases[0], 1, ttl=60),
        Outcome.succeed(leases[1], 2, ttl=60),
        Outcome.fail(leases[2], ERROR, ttl=60),
        Outcome.retry(leases[3], ERROR, delay=5),
    ]
    assert await storage.finish(outcomes, now=at) == [True] * 4
    stats = await storage.stats(history_minutes=3, now=at + timedelta(minutes=1))
    assert len(stats.history) == 3
    assert [s.minute for s in stats.history] == [
        minute - timedelta(minutes=1),
        minute,
        minute + timedelta(minutes=1),
    ]
    assert [(s.succeeded, s.failed) for s in stats.history] == [(0, 0), (2, 1), (0, 0)]
    assert all(s.minute.tzinfo is not None for s in stats.history)
    recent = await storage.stats(history_minutes=5)
    assert len(recent.history) == 5
    assert all((s.succeeded, s.failed) == (0, 0) for s in recent.history)


async def test_queues_overview(storage: Storage) -> None:
    first = await storage.enqueue(Job("m", queue="b"))
    await storage.enqueue(Job("m", queue="b"))
    await storage.enqueue(Job("m", queue="a"))
    await claim_one(storage, "a")
    await storage.pause_queue("z-empty")
    infos = await storage.queues()
    assert [q.name for q in infos] == ["a", "b", "z-empty"]
    a, b, z = infos
    assert a.counts[JobState.PROCESSING] == 1 and a.counts[JobState.ENQUEUED] == 0
    assert a.oldest_enqueued_at is None and a.paused is False
    assert b.counts[JobState.ENQUEUED] == 2 and set(b.counts) == set(JobState)
    oldest = (await storage.get_job(first)).enqueued_at
    assert oldest is not None
    assert_time(b.oldest_enqueued_at, oldest)
    assert z.paused is True and z.oldest_enqueued_at is None
    assert sum(z.counts.values()) == 0
