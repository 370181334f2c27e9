"""Bulk actions as server-side operations: ``/api/v1/operations``.

Dry runs change nothing; the match set is frozen when an operation starts
(jobs created during it are untouched); cancelling stops it between batches;
progress reaches the total and is pushed on the change feed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from qml.dashboard import create_app
from qml.dashboard.app import dashboard_context
from qml.dashboard.operations import Action, JobFilter, Operation, OperationManager
from qml.job import Job, JobState
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest

from .conftest import make_client
from .support import CSRF, E, F, make_failed, snapshot, states_of

OPS = "/api/v1/operations"


def app_and_client(storage: Storage, **options: Any) -> tuple[Any, httpx.AsyncClient]:
    app = create_app(storage, **options)
    return app, make_client(app)


async def wait_final(
    client: httpx.AsyncClient, op_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = (await client.get(f"{OPS}/{op_id}")).json()
            if body["status"] in ("completed", "cancelled", "failed"):
                return body
            await asyncio.sleep(0.01)


async def test_dry_run_changes_nothing(local_storage: Storage) -> None:
    failed = await make_failed(local_storage, 12)
    await local_storage.enqueue(Job("app.other", queue="bulk"))
    before = await snapshot(local_storage)
    _, client = app_and_client(local_storage)
    async with client:
        for payload, expected in (
            ({"action": "retry", "filter": {"state": "failed"}}, 12),
            ({"action": "delete", "filter": {"queue": "bulk"}}, 13),
            ({"action": "cancel", "filter": {"state": "failed", "method": "app.bulk"}}, 12),
            ({"action": "delete", "filter": {"text": "no-such-text"}}, 0),
            ({"action": "retry", "ids": failed[:5]}, 5),
        ):
            r = await client.post(OPS, json={**payload, "dry_run": True}, headers=CSRF)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body == {
                "id": None,
                "estimate": expected,
                "estimate_exact": True,
                "dry_run": True,
                "operation": None,
            }, payload
        assert (await client.get(OPS)).json() == []
    assert await snapshot(local_storage) == before


async def test_retry_all_matching_a_filter_reaches_its_total(local_storage: Storage) -> None:
    storage = local_storage
    target = await make_failed(storage, 23, queue="mail")
    other_queue = await make_failed(storage, 4, queue="sms")
    app, client = app_and_client(storage, operation_batch_size=5)
    async with client:
        body = {"action": "retry", "filter": {"state": "failed", "queue": "mail"}}
        r = await client.post(OPS, json=body, headers=CSRF)
        assert r.status_code == 202, r.text
        created = r.json()
        assert created["estimate"] == 23
        assert created["operation"]["selection"] == "state:failed queue:mail"
        done = await wait_final(client, created["id"])
        listed = (await client.get(OPS)).json()
    assert done["status"] == "completed"
    assert (done["processed"], done["failed"], done["total"]) == (23, 0, 23)
    assert done["progress"] == 1.0
    assert [o["id"] for o in listed] == [created["id"]]
    assert set((await states_of(storage, target)).values()) == {E}
    assert set((await states_of(storage, other_queue)).values()) == {F}
    job = await storage.get_job(target[0])
    assert job.history[-1].reason == "retried from the dashboard (bulk)"
    assert job.attempts == 0
    op = dashboard_context(app).operations.get(created["id"])
    assert op is not None and op.batches >= 5


async def test_match_set_is_frozen_when_the_operation_starts(storage: Storage) -> None:
    before = await make_failed(storage, 20)
    _, client = app_and_client(storage, operation_batch_size=4, operation_batch_pause=0.08)
    async with client:
        r = await client.post(
            OPS, json={"action": "retry", "filter": {"state": "failed"}}, headers=CSRF
        )
        op_id = r.json()["id"]
        # new failures arrive while the operation runs: they match the filter,
        # but were created after it started
        late = await make_failed(storage, 6)
        running = (await client.get(f"{OPS}/{op_id}")).json()
        assert running["status"] == "running", running
        assert running["processed"] < 20
        done = await wait_final(client, op_id)
    assert done["status"] == "completed"
    assert done["processed"] == 20
    assert set((await states_of(storage, before)).values()) == {E}
    assert set((await states_of(storage, late)).values()) == {F}


async def test_cancel_stops_an_operation_between_batches(local_storage: Storage) -> None:
    ids = await make_failed(local_storage, 60)
    _, client = app_and_client(local_storage, operation_batch_size=5, operation_batch_pause=0.03)
    async with client:
        r = await client.post(
            OPS, json={"action": "delete", "filter": {"state": "failed"}}, headers=CSRF
        )
        op_id = r.json()["id"]
        async with asyncio.timeout(10):
            while (await client.get(f"{OPS}/{op_id}")).json()["processed"] < 10:
                await asyncio.sleep(0.01)
        r = await client.delete(f"{OPS}/{op_id}", headers=CSRF)
        assert r.status_code == 200
        assert r.json()["cancel_requested"] is True
        done = await wait_final(client, op_id)
        await asyncio.sleep(0.1)  # nothing more happens after it stopped
        again = (await client.get(f"{OPS}/{op_id}")).json()
        assert (await client.delete(f"{OPS}/{op_id}", headers=CSRF)).json()["status"] == (
            "cancelled"
        )
    assert done["status"] == "cancelled"
    assert 10 <= done["processed"] < 60
    assert again["processed"] == done["processed"]
    states = list((await states_of(local_storage, ids)).values())
    assert states.count(JobState.DELETED) == done["processed"]
    assert states.count(F) == 60 - done["processed"]


async def test_operations_on_selected_ids(local_storage: Storage) -> None:
    failed = await make_failed(local_storage, 3)
    waiting = await local_storage.enqueue(Job("app.waiting", queue="ids"))
    running = await local_storage.enqueue(Job("app.running", queue="ids-run"))
    await local_storage.claim(ClaimRequest("s", ["ids-run"], limit=1))
    _, client = app_and_client(local_storage)
    async with client:
        r = await client.post(
            OPS,
            json={"action": "delete", "ids": [*failed, "no-such-job", failed[0]]},
            headers=CSRF,
        )
        assert r.status_code == 202
        assert r.json()["estimate"] == 4  # duplicates are dropped
        done = await wait_final(client, r.json()["id"])
        assert (done["processed"], done["failed"]) == (3, 1)
        assert done["selection"] == "4 selected jobs"
        r = await client.post(
            OPS, json={"action": "cancel", "ids": [waiting, running]}, headers=CSRF
        )
        done = await wait_final(client, r.json()["id"])
        assert (done["processed"], done["failed"]) == (2, 0)
        r = await client.post(OPS, json={"action": "retry", "ids": failed}, headers=CSRF)
        done = await wait_final(client, r.json()["id"])
        assert done["processed"] == 3
    assert (await local_storage.get_job(waiting)).state is JobState.DELETED
    job = await local_storage.get_job(running)
    assert job.state is JobState.PROCESSING and job.cancel_requested
    assert set((await states_of(local_storage, failed)).values()) == {E}


async def test_cancel_action_on_a_filter(memory_storage: Storage) -> None:
    storage = memory_storage
    queued = await storage.enqueue_many(Job("app.c", {"i": i}, queue="c") for i in range(4))
    await storage.claim(ClaimRequest("s", ["c"], limit=1))
    _, client = app_and_client(storage)
    async with client:
        r = await client.post(
            OPS, json={"action": "cancel", "filter": {"queue": "c"}}, headers=CSRF
        )
        done = await wait_final(client, r.json()["id"])
    assert (done["processed"], done["failed"]) == (4, 0)
    states = await states_of(storage, queued)
    assert sorted(s.value for s in states.values()) == ["deleted"] * 3 + ["processing"]


async def test_invalid_requests(memory_storage: Storage) -> None:
    _, client = app_and_client(memory_storage)
    async with client:
        for payload in (
            {"action": "retry"},
            {"action": "retry", "ids": ["a"], "filter": {}},
            {"action": "explode", "ids": ["a"]},
            {"action": "retry", "ids": []},
            {"action": "retry", "filter": {"state": "bogus"}},
            {"action": "retry", "filter": {"error": "not-a-fingerprint"}},
        ):
            r = await client.post(OPS, json=payload, headers=CSRF)
            assert r.status_code == 422, payload
            assert r.headers["content-type"] == "application/problem+json"
        missing = "0192f000-0000-7000-8000-000000000000"
        assert (await client.get(f"{OPS}/{missing}")).status_code == 404
        assert (await client.delete(f"{OPS}/{missing}", headers=CSRF)).status_code == 404
        r = await client.post(OPS, json={"action": "retry", "ids": ["x"]})
        assert r.status_code == 403  # no CSRF header
    async with make_client(create_app(memory_storage, read_only=True)) as ro:
        r = await ro.post(OPS, json={"action": "retry", "ids": ["x"]}, headers=CSRF)
        assert r.status_code == 403


async def test_progress_is_pushed_on_the_change_feed(memory_storage: Storage) -> None:
    await make_failed(memory_storage, 60)
    app = create_app(memory_storage, operation_batch_size=3, operation_batch_pause=0.04)
    ctx = dashboard_context(app)
    sub = ctx.hub.subscribe()
    try:
        op, estimate, _ = await ctx.operations.create(
            Action.RETRY,
            job_filter=JobFilter(states=frozenset({F})),
        )
        assert op is not None and estimate == 60
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while True:
                message = await sub.next()
                if message.get("op") != "op.progress":
                    continue
                seen.append(message["operation"])
                if message["operation"]["status"] == "completed":
                    break
    finally:
        await ctx.hub.unsubscribe(sub)
    progress = [m["progress"] for m in seen]
    assert progress == sorted(progress)
    assert len(seen) >= 3  # started, some batches, done
    assert any(0 < p < 1 for p in progress)
    assert seen[-1]["processed"] == seen[-1]["total"] == 60
    assert all(m["id"] == op.id for m in seen)


async def test_manager_keeps_a_bounded_history(memory_storage: Storage) -> None:
    manager = OperationManager(memory_storage, keep=3)
    ops: list[Operation] = []
    for _ in range(5):
        op, _, _ = await manager.create(
            Action.DELETE,
            ids=["missing"],
        )
        assert op is not None
        await manager.wait(op.id, timeout=5)
        ops.append(op)
    assert [o.id for o in manager.list()] == [o.id for o in reversed(ops[-3:])]
    with pytest.raises(ValueError, match="either ids or a filter"):
        await manager.create(Action.DELETE)


async def test_a_client_connecting_later_catches_up(memory_storage: Storage) -> None:
    app = create_app(memory_storage)
    ctx = dashboard_context(app)
    op, _, _ = await ctx.operations.create(Action.DELETE, ids=["a", "b"])
    assert op is not None
    await ctx.operations.wait(op.id, timeout=5)
    sub = ctx.hub.subscribe()
    try:
        message = await asyncio.wait_for(sub.next(), 5)
    finally:
        await ctx.hub.unsubscribe(sub)
    assert message["op"] == "op.progress"
    assert message["operation"]["id"] == op.id
    assert message["operation"]["status"] == "completed"
