"""The REST API: reads, filters, keyset pagination, actions and problem+json errors."""

from __future__ import annotations

import httpx
import pytest

from qml.job import Job, JobState
from qml.recurring import schedule_recurring
from qml.storage.base import Storage

from .support import CSRF, OK, D, E, F, P, R, S, register_server, seed_states

PROBLEM = "application/problem+json"


async def test_stats_counts_every_state(client: httpx.AsyncClient, storage: Storage) -> None:
    await seed_states(storage)
    r = await client.get("/api/v1/stats")
    assert r.status_code == 200
    body = r.json()
    assert body["counts"] == {s.value: 1 for s in JobState}
    assert body["total"] == 7
    assert body["by_queue"]["work"]["processing"] == 1
    assert len(body["history"]) == 60


async def test_list_filters(client: httpx.AsyncClient, storage: Storage) -> None:
    ids = await seed_states(storage)
    for state, job_id in ids.items():
        r = await client.get("/api/v1/jobs", params={"state": state.value})
        assert r.status_code == 200
        assert [j["id"] for j in r.json()["items"]] == [job_id], state
    r = await client.get("/api/v1/jobs", params={"state": "failed,AwaitingRetry"})
    assert {j["id"] for j in r.json()["items"]} == {ids[F], ids[R]}
    r = await client.get("/api/v1/jobs", params={"queue": "work"})
    assert {j["id"] for j in r.json()["items"]} == {ids[s] for s in (OK, F, R, P)}
    r = await client.get("/api/v1/jobs", params={"method": "app.scheduled"})
    assert [j["id"] for j in r.json()["items"]] == [ids[S]]
    await storage.enqueue(Job("app.search", {"customer": "zebra-77"}))
    r = await client.get("/api/v1/jobs", params={"text": "zebra-77"})
    assert [j["method"] for j in r.json()["items"]] == ["app.search"]
    failed = (await client.get("/api/v1/jobs", params={"state": "failed"})).json()["items"][0]
    assert failed["error_type"] == "ValueError"
    assert failed["error"] == "boom"
    assert "traceback" not in failed


async def test_keyset_pagination_has_no_duplicates_or_gaps(
    client: httpx.AsyncClient, storage: Storage
) -> None:
    expected = [await storage.enqueue(Job("app.page", {"i": i})) for i in range(23)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/api/v1/jobs", params=params)).json()
        seen += [j["id"] for j in body["items"]]
        pages += 1
        # jobs enqueued mid-walk are newer than the cursor: they never shift the walk
        await storage.enqueue(Job("app.page.late", {"page": pages}))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == list(reversed(expected))


async def test_job_detail_and_history(client: httpx.AsyncClient, storage: Storage) -> None:
    ids = await seed_states(storage)
    r = await client.get(f"/api/v1/jobs/{ids[F]}")
    assert r.status_code == 200
    job = r.json()
    assert job["state"] == "failed"
    assert job["args"] == {"i": 1}
    assert job["traceback"].startswith("Traceback")
    assert [h["state"] for h in job["history"]] == ["enqueued", "processing", "failed"]
    assert job["history"][0]["duration_seconds"] >= 0
    assert job["history"][-1]["duration_seconds"] is None
    ok = (await client.get(f"/api/v1/jobs/{ids[OK]}")).json()
    assert ok["result"] == {"ok": True}


async def test_unknown_job_is_a_404_problem(client: httpx.AsyncClient, storage: Storage) -> None:
    r = await client.get("/api/v1/jobs/no-such-job")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["status"] == 404
    r = await client.post("/api/v1/jobs/no-such-job:retry", headers=CSRF)
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM


async def test_invalid_input_is_a_422_problem(client: httpx.AsyncClient, storage: Storage) -> None:
    for params in ({"state": "bogus"}, {"limit": "0"}, {"limit": "many"}):
        r = await client.get("/api/v1/jobs", params=params)
        assert r.status_code == 422, params
        assert r.headers["content-type"] == PROBLEM


async def test_job_actions(client: httpx.AsyncClient, storage: Storage) -> None:
    ids = await seed_states(storage)

    async def act(job_id: str, action: str) -> httpx.Response:
        return await client.post(f"/api/v1/jobs/{job_id}:{action}", headers=CSRF)

    r = await act(ids[F], "retry")
    assert r.status_code == 200
    assert r.json()["state"] == "enqueued"
    assert r.json()["attempts"] == 0
    assert (await storage.get_job(ids[F])).state is E
    assert (await act(ids[E], "retry")).status_code == 409
    conflict = await act(ids[P], "delete")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == PROBLEM
    assert (await act(ids[S], "run-now")).json()["state"] == "enqueued"
    assert (await act(ids[E], "run-now")).status_code == 409
    assert (await act(ids[R], "run-now")).json()["state"] == "enqueued"
    assert (await act(ids[OK], "delete")).json()["state"] == "deleted"
    assert (await act(ids[D], "retry")).json()["state"] == "enqueued"
    cancelled = await act(ids[P], "cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["cancel_requested"] is True
    assert (await act(ids[E], "cancel")).json()["state"] == "deleted"


async def test_queues_pause_and_resume(client: httpx.AsyncClient, storage: Storage) -> None:
    await storage.enqueue(Job("app.q", queue="mail/outbound"))
    queues = (await client.get("/api/v1/queues")).json()
    assert [q["name"] for q in queues] == ["mail/outbound"]
    assert queues[0]["counts"]["enqueued"] == 1
    assert queues[0]["oldest_age_seconds"] is not None
    r = await client.post("/api/v1/queues/mail%2Foutbound:pause", headers=CSRF)
    assert r.status_code == 200
    assert r.json()["paused"] is True
    assert await storage.paused_queues() == {"mail/outbound"}
    r = await client.post("/api/v1/queues/mail%2Foutbound:resume", headers=CSRF)
    assert r.json()["paused"] is False
    assert await storage.paused_queues() == set()


async def test_recurring_actions(client: httpx.AsyncClient, storage: Storage) -> None:
    await schedule_recurring(storage, "nightly", "0 0 3 * * *", "app.report", {"kind": "daily"})
    items = (await client.get("/api/v1/recurring")).json()
    assert [t["id"] for t in items] == ["nightly"]
    assert len(items[0]["next_runs"]) == 3
    r = await client.post("/api/v1/recurring/nightly:trigger", headers=CSRF)
    assert r.status_code == 200
    job = await storage.get_job(r.json()["job_id"])
    assert job.method == "app.report"
    assert job.meta["trigger"] == "manual"
    assert (await client.post("/api/v1/recurring/nightly:pause", headers=CSRF)).json()["paused"]
    r = await client.post("/api/v1/recurring/nightly:resume", headers=CSRF)
    assert r.json()["paused"] is False
    assert (await client.delete("/api/v1/recurring/nightly", headers=CSRF)).status_code == 204
    assert await storage.get_recurring("nightly") is None
    r = await client.delete("/api/v1/recurring/nightly", headers=CSRF)
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert (await client.post("/api/v1/recurring/nope:trigger", headers=CSRF)).status_code == 404


async def test_servers(client: httpx.AsyncClient, storage: Storage) -> None:
    await register_server(storage)
    servers = (await client.get("/api/v1/servers")).json()
    assert [s["id"] for s in servers] == ["server-1"]
    assert servers[0]["status"] == "ok"
    assert servers[0]["worker_count"] == 4


async def test_metrics_and_health(client: httpx.AsyncClient, storage: Storage) -> None:
    await seed_states(storage)
    r = await client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'qml_jobs{state="failed"} 1.0' in text
    assert 'qml_queue_jobs{queue="work",state="processing"} 1.0' in text
    assert 'qml_queue_oldest_age_seconds{queue="default"}' in text
    r = await client.get("/healthz")
    assert r.json()["status"] == "ok"


async def test_openapi_document(client: httpx.AsyncClient, storage: Storage) -> None:
    r = await client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    for path in (
        "/api/v1/stats",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}:retry",
        "/api/v1/jobs/{job_id}:delete",
        "/api/v1/jobs/{job_id}:cancel",
        "/api/v1/jobs/{job_id}:run-now",
        "/api/v1/queues/{name}:pause",
        "/api/v1/recurring/{template_id}:trigger",
        "/api/v1/servers",
    ):
        assert path in paths, path
    assert not any(p.startswith("/jobs") or p == "/" for p in paths)


@pytest.mark.parametrize("base_path", ["/qml", "/ops/jobs/"])
async def test_base_path_and_mounting(memory_storage: Storage, base_path: str) -> None:
    storage = memory_storage
    from fastapi import FastAPI

    from qml.dashboard import create_app

    from .conftest import make_client

    ids = await seed_states(storage)
    async with make_client(create_app(storage, base_path=base_path)) as c:
        prefix = "/" + base_path.strip("/")
        page = await c.get(f"{prefix}/jobs?state=failed")
        assert page.status_code == 200
        assert f'href="{prefix}/jobs/{ids[F]}"' in page.text
        assert (await c.get(f"{prefix}/api/v1/jobs/{ids[F]}")).status_code == 200
    parent = FastAPI()
    parent.mount("/admin/qml", create_app(storage))
    async with make_client(parent) as c:
        page = await c.get("/admin/qml/jobs?state=failed")
        assert page.status_code == 200
        assert f'href="/admin/qml/jobs/{ids[F]}"' in page.text
        assert 'data-api="/admin/qml/api/v1"' in page.text
        r = await c.post(f"/admin/qml/api/v1/jobs/{ids[F]}:retry", headers=CSRF)
        assert r.json()["state"] == "enqueued"


async def test_overview_health_strip(memory_storage: Storage) -> None:
    from qml.dashboard import create_app

    from .conftest import make_client

    await seed_states(memory_storage)
    await register_server(memory_storage)
    await memory_storage.pause_queue("held")
    async with make_client(create_app(memory_storage)) as c:
        page = (await c.get("/")).text
    health = page[page.index('data-testid="health"') : page.index("</ul>")]
    assert "<strong>memory</strong>" in health
    assert "<strong>1</strong> alive" in health
    assert "Paused queues: <strong>1</strong>" in health
    assert "Oldest enqueued job: <strong>—</strong>" not in health
