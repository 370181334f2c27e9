"""Helpers of the dashboard tests: seeding jobs in every state, snapshots, corpora."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, JobQuery, Outcome, ServerInfo

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
OK, F, R, D = JobState.SUCCEEDED, JobState.FAILED, JobState.AWAITING_RETRY, JobState.DELETED

CSRF = {"X-QML-Request": "1"}

#: Stored-XSS payloads: each must render as text, never as markup.
XSS_CORPUS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "'><svg onload=window.__xss=3>",
    "</textarea></pre></code><b id=xss-b>bold</b>",
    "javascript:window.__xss=4",
    "{{ 7*7 }}{% raw %}${7*7}",
    "<a href='javascript:window.__xss=5'>click</a>",
    "&lt;script&gt;already-escaped&lt;/script&gt;",
    "\u202e<iframe src=//evil.example/></iframe>",
]

#: Secret values that must never leave the dashboard while redaction is on.
SECRET_ARGS: dict[str, Any] = {
    "to": "user@example.com",
    "password": "hunter2",
    "api_key": "k-4f2a-secret",
    "nested": {"auth_token": "tok-99887766", "items": [{"client_secret": "cs-5544"}]},
}
SECRET_VALUES = ["hunter2", "k-4f2a-secret", "tok-99887766", "cs-5544"]


def utcnow() -> datetime:
    return datetime.now(UTC)


async def seed_states(storage: Storage, *, queue: str = "work") -> dict[JobState, str]:
    """One job in each state; returns their ids by state."""
    ids: dict[JobState, str] = {}
    ids[E] = await storage.enqueue(Job("app.enqueued", {"n": 1}, queue="default"))
    ids[S] = await storage.enqueue(
        Job("app.scheduled", {"n": 2}, queue="default", run_at=utcnow() + timedelta(hours=1))
    )
    ids[D] = await storage.enqueue(Job("app.deleted", {"n": 3}, queue="default"))
    await storage.delete(ids[D])
    work = [await storage.enqueue(Job(f"app.work{i}", {"i": i}, queue=queue)) for i in range(4)]
    leases = await storage.claim(ClaimRequest("server-1", [queue], limit=4))
    by_id = {lease.job.id: lease for lease in leases}
    assert set(by_id) == set(work)
    error = ErrorInfo("ValueError", "boom", "Traceback (most recent call last):\n  boom\n")
    await storage.complete(by_id[work[0]], {"ok": True})
    await storage.fail(by_id[work[1]], error)
    await storage.retry(by_id[work[2]], error, delay=3600)
    ids[OK], ids[F], ids[R], ids[P] = work
    return ids


async def register_server(storage: Storage, server_id: str = "server-1") -> None:
    await storage.heartbeat_server(
        ServerInfo(
            server_id,
            hostname="host-a",
            pid=4242,
            queues=["default", "work"],
            worker_count=4,
            busy=1,
            version="0.1.0",
            started_at=utcnow(),
        )
    )


async def snapshot(storage: Storage) -> dict[str, Any]:
    """Everything observable in a store, to prove a request changed nothing."""
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await storage.list_jobs(JobQuery(limit=1000, cursor=cursor))
        jobs.extend(j.to_dict() for j in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    stats = await storage.stats(history_minutes=5)
    return {
        "jobs": jobs,
        "counts": stats.counts,
        "queues": [(q.name, q.counts, q.paused) for q in await storage.queues()],
        "recurring": [
            (t.id, t.paused, t.next_run_at, t.last_run_at) for t in await storage.list_recurring()
        ],
        "servers": sorted(s.id for s in await storage.list_servers()),
    }


_TAG_NAMES = (
    "html head meta title link script body header nav a span div main footer h1 h2 p ul "
    "section table thead tbody tr th td code strong ol li dl dt dd pre button form label "
    "select option input br dialog canvas svg g rect title progress"
)
#: Every element the templates use; anything else on a page was injected.
SAFE_TAGS = frozenset(_TAG_NAMES.split())


class TagCollector(HTMLParser):
    """Collects element names, event-handler attributes and ``javascript:`` URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"event handler {name} on <{tag}>")
            if value and re.match(r"\s*javascript:", value, re.IGNORECASE):
                self.problems.append(f"javascript: URL in {name} of <{tag}>")
            if name == "id" and value:
                self.ids.append(value)
            if name == "style":
                self.problems.append(f"inline style on <{tag}>")


def injected_markup(html: str) -> list[str]:
    """Why ``html`` shows signs of injected markup (empty when clean)."""
    parser = TagCollector()
    parser.feed(html)
    parser.close()
    problems = list(parser.problems)
    problems += [f"unexpected <{t}>" for t in parser.tags if t not in SAFE_TAGS]
    scripts = re.findall(r"<script\b[^>]*>", html)
    problems += [f"inline script {s}" for s in scripts if "src=" not in s]
    if "xss-b" in parser.ids:
        problems.append("injected element with id xss-b")
    return problems


async def make_failed(
    storage: Storage,
    count: int,
    *,
    queue: str = "bulk",
    method: str = "app.bulk",
    error: ErrorInfo | None = None,
    awaiting_retry: bool = False,
) -> list[str]:
    """``count`` Failed (or AwaitingRetry) jobs, enqueued, claimed and finished in batches."""
    error = error or ErrorInfo("RuntimeError", "it broke")
    ids = await storage.enqueue_many(Job(method, {"i": i}, queue=queue) for i in range(count))
    claimed: list[str] = []
    while len(claimed) < count:
        leases = await storage.claim(ClaimRequest("bulk-server", [queue], limit=count))
        assert leases, "jobs to claim"
        outcomes = [
            Outcome.retry(lease, error, delay=3600)
            if awaiting_retry
            else Outcome.fail(lease, error, ttl=3600)
            for lease in leases
        ]
        assert all(await storage.finish(outcomes))
        claimed += [lease.job.id for lease in leases]
    assert set(claimed) == set(ids)
    return ids


async def states_of(storage: Storage, ids: list[str]) -> dict[str, JobState]:
    return {i: (await storage.get_job(i)).state for i in ids}
