"""The Errors page and ``/api/v1/errors``: failures grouped by fingerprint."""

from __future__ import annotations

import asyncio
from typing import Any

from qml.dashboard import create_app
from qml.dashboard.error_groups import (
    fingerprint,
    group_errors,
    normalize_message,
    top_frame,
)
from qml.job import JobState
from qml.storage.base import Storage
from qml.storage.requests import ErrorInfo

from .conftest import make_client
from .support import CSRF, E, F, R, make_failed, states_of


def traceback(line: int, fn: str = "charge", path: str = "/srv/app/billing.py") -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/venv/lib/python3.11/site-packages/qml/worker.py", line 88, in run\n'
        "    result = await call()\n"
        f'  File "{path}", line {line}, in {fn}\n'
        "    raise ValueError(...)\n"
        '  File "/venv/lib/python3.11/site-packages/httpx/_client.py", line 10, in send\n'
        "    raise\n"
        "ValueError: boom\n"
    )


def test_normalized_message_strips_numbers_uuids_and_hex() -> None:
    a = normalize_message(
        "order 1234 of user 0192f3a4-5b6c-7d8e-9f00-112233445566 failed at 0x7f3a9c (3.5 s)"
    )
    b = normalize_message(
        "order 99 of user 0192f3a4-aaaa-7d8e-9f00-bbbbbbbbbbbb failed at 0xdeadbeef (12.25 s)"
    )
    assert a == b == "order <n> of user <uuid> failed at <hex> (<n> s)"
    assert normalize_message("sha deadbeef01 vs cafebabe02") == "sha <hex> vs <hex>"
    assert normalize_message("  spaced\n\tout  ") == "spaced out"
    assert normalize_message(None) == ""


def test_top_frame_prefers_application_code() -> None:
    frame = top_frame(traceback(42))
    assert frame is not None
    assert (frame.file, frame.line, frame.function) == ("/srv/app/billing.py", 42, "charge")
    assert str(frame) == "/srv/app/billing.py:42 in charge"
    assert top_frame(None) is None
    assert top_frame("no frames here") is None


def test_fingerprint_ignores_volatile_parts() -> None:
    base = fingerprint("ValueError", "card 4242 declined", traceback(42))
    assert fingerprint("ValueError", "card 1111 declined", traceback(57)) == base
    # the same code deployed elsewhere: only the last path parts count
    moved = traceback(42, path="/opt/release-7/app/billing.py")
    assert fingerprint("ValueError", "card 1 declined", moved) == base
    assert fingerprint("KeyError", "card 4242 declined", traceback(42)) != base
    assert fingerprint("ValueError", "card 4242 expired", traceback(42)) != base
    assert fingerprint("ValueError", "card 4242 declined", traceback(42, fn="refund")) != base
    assert len(base) == 12


async def _seed(storage: Storage) -> dict[str, list[str]]:
    declined = ErrorInfo("ValueError", "card 4242 declined", traceback(42))
    declined_again = ErrorInfo("ValueError", "card 17 declined", traceback(43))
    timeout = ErrorInfo("TimeoutError", "smtp timed out after 30 s", traceback(7, "send"))
    return {
        "declined": await make_failed(storage, 4, method="app.charge", error=declined)
        + await make_failed(storage, 2, method="app.charge2", error=declined_again)
        + await make_failed(storage, 3, method="app.charge", error=declined, awaiting_retry=True),
        "timeout": await make_failed(storage, 2, method="app.mail", error=timeout),
    }


async def test_errors_api_groups_failures(local_storage: Storage) -> None:
    await _seed(local_storage)
    async with make_client(create_app(local_storage)) as client:
        r = await client.get("/api/v1/errors")
        assert r.status_code == 200
        report = r.json()
        assert (report["scanned"], report["scan_limit"], report["truncated"]) == (11, 10000, False)
        groups = report["groups"]
        assert [(g["error_type"], g["count"]) for g in groups] == [
            ("ValueError", 9),
            ("TimeoutError", 2),
        ]
        first = groups[0]
        assert first["message"] == "card <n> declined"
        assert (first["failed"], first["awaiting_retry"]) == (6, 3)
        assert first["methods"] == ["app.charge", "app.charge2"]
        assert first["top_frame"].endswith("billing.py:42 in charge") or first[
            "top_frame"
        ].endswith("billing.py:43 in charge")
        assert first["first_seen"] <= first["last_seen"]
        assert groups[1]["message"] == "smtp timed out after <n> s"
        r = await client.get("/api/v1/errors", params={"limit": 5})
        assert (r.json()["scanned"], r.json()["truncated"]) == (5, True)
        page = await client.get("/errors")
        assert page.status_code == 200
        assert "the scan stops at the newest 10000" not in page.text
        assert "newest 11 failures" in page.text
        assert f'data-error-group="{first["fingerprint"]}"' in page.text


async def _wait(client: Any, op_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            body: dict[str, Any] = (await client.get(f"/api/v1/operations/{op_id}")).json()
            if body["status"] != "running" and body["status"] != "pending":
                return body
            await asyncio.sleep(0.01)


async def test_retry_and_delete_a_whole_group(local_storage: Storage) -> None:
    seeded = await _seed(local_storage)
    report = await group_errors(local_storage)
    declined, timeout = (g.fingerprint for g in report.groups)
    async with make_client(create_app(local_storage, operation_batch_size=2)) as client:
        r = await client.post(f"/api/v1/errors/{declined}:retry", headers=CSRF)
        assert r.status_code == 202
        assert r.json()["estimate"] == 9
        done = await _wait(client, r.json()["id"])
        assert (done["status"], done["processed"], done["total"]) == ("completed", 9, 9)
        assert done["selection"] == f"error:{declined}"
        assert set((await states_of(local_storage, seeded["declined"])).values()) == {E}
        assert set((await states_of(local_storage, seeded["timeout"])).values()) == {F}
        r = await client.post(f"/api/v1/errors/{timeout}:delete", headers=CSRF)
        done = await _wait(client, r.json()["id"])
        assert done["processed"] == 2
        assert (await client.get("/api/v1/errors")).json()["groups"] == []
        bad = await client.post("/api/v1/errors/XYZ:retry", headers=CSRF)
        assert bad.status_code in (404, 422)
    states = await states_of(local_storage, seeded["timeout"])
    assert set(states.values()) == {JobState.DELETED}
    assert R not in states.values()


async def test_jobs_of_one_group(local_storage: Storage) -> None:
    seeded = await _seed(local_storage)
    declined = (await group_errors(local_storage)).groups[0].fingerprint
    async with make_client(create_app(local_storage)) as client:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"error": declined, "limit": 4}
            if cursor:
                params["cursor"] = cursor
            body = (await client.get("/api/v1/jobs", params=params)).json()
            seen += [j["id"] for j in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(seeded["declined"])
        assert len(seen) == len(set(seen)) == 9
        r = await client.get("/api/v1/jobs", params={"error": declined, "state": "enqueued"})
        assert r.json() == {"items": [], "next_cursor": None}
        r = await client.get("/api/v1/jobs", params={"error": declined, "state": "awaiting_retry"})
        assert len(r.json()["items"]) == 3
        assert (await client.get("/api/v1/jobs", params={"error": "nope"})).status_code == 422
        page = await client.get("/jobs", params={"error": declined})
        assert page.text.count("<tr data-job-id=") == 9
        assert f"error:{declined}" in page.text  # the bulk bar restates the filter
        errors_page = (await client.get("/errors")).text
        assert f'href="/jobs?error={declined}"' in errors_page
        r = await client.post(
            "/api/v1/operations",
            json={"action": "retry", "filter": {"error": declined}, "dry_run": True},
            headers=CSRF,
        )
        assert r.json()["estimate"] == 9
