"""Stored XSS renders as text everywhere; secrets never leave while redaction is on."""

from __future__ import annotations

import json

import httpx

from qml.dashboard import create_app, no_redaction
from qml.job import Job
from qml.recurring import schedule_recurring
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, ErrorInfo, ServerInfo

from .conftest import make_client
from .support import (
    CSRF,
    SECRET_ARGS,
    SECRET_VALUES,
    XSS_CORPUS,
    injected_markup,
    seed_states,
)


async def seed_xss(storage: Storage) -> list[str]:
    """Jobs whose args, errors, queue and method names carry every payload."""
    ids = []
    for i, payload in enumerate(XSS_CORPUS):
        job_id = await storage.enqueue(
            Job(f"m{i}{payload}", {"p": payload, payload: [payload]}, queue=f"q{i}{payload}")
        )
        ids.append(job_id)
        leases = await storage.claim(ClaimRequest(f"srv{payload}", [f"q{i}{payload}"], limit=1))
        await storage.fail(leases[0], ErrorInfo(payload, payload, payload))
    ids.append(await storage.enqueue(Job("plain", {"list": XSS_CORPUS}, queue="plain")))
    await schedule_recurring(
        storage, f"rec{XSS_CORPUS[1]}", "*/5 * * * *", XSS_CORPUS[0], {"p": XSS_CORPUS[2]}
    )
    await storage.heartbeat_server(ServerInfo(f"srv{XSS_CORPUS[0]}", hostname=XSS_CORPUS[1]))
    await storage.pause_queue(f"paused{XSS_CORPUS[3]}")
    return ids


def every_page(ids: list[str]) -> list[str]:
    pages = ["/", "/jobs", "/queues", "/recurring", "/servers", "/errors", "/operations"]
    pages += ["/?history=1440"]
    pages += [f"/jobs?state={s}" for s in ("enqueued", "failed")]
    pages += [f"/jobs/{i}" for i in ids]
    pages += ["/jobs?text=<script>", "/jobs?method=%3Cb%3E"]
    return pages


async def test_xss_corpus_renders_as_text_on_every_page(local_storage: Storage) -> None:
    ids = await seed_xss(local_storage)
    async with make_client(create_app(local_storage)) as c:
        for payload in XSS_CORPUS[:4]:  # operations whose filter carries a payload
            body = {"action": "retry", "filter": {"method": payload, "text": payload}}
            r = await c.post("/api/v1/operations", json=body, headers=CSRF)
            assert r.status_code == 202, r.text
        for path in every_page(ids):
            for variant in (path, path + ("&" if "?" in path else "?") + "fragment=1"):
                r = await c.get(variant)
                assert r.status_code == 200, variant
                assert injected_markup(r.text) == [], variant
                for payload in XSS_CORPUS:
                    if "<" in payload:
                        assert payload not in r.text, (variant, payload)


async def test_xss_corpus_round_trips_byte_exact_through_the_api(local_storage: Storage) -> None:
    ids = await seed_xss(local_storage)
    async with make_client(create_app(local_storage)) as c:
        for i, payload in enumerate(XSS_CORPUS):
            r = await c.get(f"/api/v1/jobs/{ids[i]}")
            job = r.json()
            assert job["args"] == {"p": payload, payload: [payload]}
            assert job["method"] == f"m{i}{payload}"
            assert job["queue"] == f"q{i}{payload}"
            assert job["error"] == payload
            assert job["error_type"] == payload
            assert job["traceback"] == payload
        listed = (await c.get("/api/v1/jobs", params={"queue": "plain"})).json()["items"]
        full = json.dumps({"list": XSS_CORPUS}, ensure_ascii=False)
        assert full.startswith(listed[0]["args_preview"].removesuffix("…"))
        queues = {q["name"] for q in (await c.get("/api/v1/queues")).json()}
        assert f"paused{XSS_CORPUS[3]}" in queues
        templates = (await c.get("/api/v1/recurring")).json()
        assert templates[0]["method"] == XSS_CORPUS[0]


async def seed_secrets(storage: Storage) -> list[str]:
    ids = await seed_states(storage)
    secret_id = await storage.enqueue(Job("app.login", SECRET_ARGS, meta={"session": "hunter2"}))
    other = await storage.enqueue(Job("app.second", SECRET_ARGS, queue="work2"))
    leases = await storage.claim(ClaimRequest("s", ["work2"], limit=1))
    await storage.complete(leases[0], {"token": "hunter2", "ok": True})
    await schedule_recurring(storage, "with-secret", "*/5 * * * *", "app.login", SECRET_ARGS)
    return [*ids.values(), secret_id, other]


async def all_responses(c: httpx.AsyncClient, ids: list[str]) -> dict[str, str]:
    paths = ["/", "/jobs", "/jobs?state=enqueued", "/recurring", "/queues", "/metrics"]
    paths += [f"/jobs/{i}" for i in ids] + [f"/api/v1/jobs/{i}" for i in ids]
    paths += ["/api/v1/jobs", "/api/v1/jobs?limit=500", "/api/v1/recurring", "/api/v1/stats"]
    out = {}
    for path in paths:
        r = await c.get(path)
        assert r.status_code == 200, path
        out[path] = r.text
    return out


async def test_secrets_are_redacted_everywhere(local_storage: Storage) -> None:
    ids = await seed_secrets(local_storage)
    async with make_client(create_app(local_storage)) as c:
        for path, text in (await all_responses(c, ids)).items():
            for secret in SECRET_VALUES:
                assert secret not in text, (path, secret)
        detail = (await c.get(f"/api/v1/jobs/{ids[-2]}")).json()
        assert detail["args"]["password"] == "•••• (redacted)"
        assert detail["args"]["to"] == "user@example.com"
        assert detail["args"]["nested"]["items"][0]["client_secret"] == "•••• (redacted)"
        assert detail["meta"]["session"] == "•••• (redacted)"


async def test_redaction_can_be_switched_off(memory_storage: Storage) -> None:
    ids = await seed_secrets(memory_storage)
    async with make_client(create_app(memory_storage, redactor=no_redaction)) as c:
        detail = (await c.get(f"/api/v1/jobs/{ids[-2]}")).json()
        assert detail["args"] == SECRET_ARGS
        assert "hunter2" in (await c.get(f"/jobs/{ids[-2]}")).text


async def test_custom_redactor(memory_storage: Storage) -> None:
    from qml.dashboard import Redactor

    job_id = await memory_storage.enqueue(Job("app.x", {"iban": "NO93", "password": "p"}))
    async with make_client(create_app(memory_storage, redactor=Redactor(r"^iban$"))) as c:
        args = (await c.get(f"/api/v1/jobs/{job_id}")).json()["args"]
        assert args == {"iban": "•••• (redacted)", "password": "p"}
