"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

Every page loads with zero console errors, zero responses >= 400 and zero
external requests; state changes made outside the browser appear without a
reload; retry works from the Failed list and from job detail; stored XSS never
runs; secrets never reach the page or a WebSocket frame; a bulk retry of all
jobs matching a filter completes with visible progress; a whole error group is
retried; pausing a queue stops a real ``qml worker`` process and resuming
drains it; the live throughput chart follows the change feed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qml.dashboard.app import dashboard_context
from qml.job import Job, JobState
from qml.recurring import schedule_recurring
from qml.storage.requests import ClaimRequest, ErrorInfo, Outcome

from .browser import FLAGS, LiveDashboard, ensure_chromium
from .support import (
    SECRET_ARGS,
    SECRET_VALUES,
    XSS_CORPUS,
    make_failed,
    register_server,
    seed_states,
    states_of,
)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
Page = Any


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = ensure_chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


async def _seed(dash: LiveDashboard) -> dict[str, Any]:
    storage = dash.storage
    ids = await seed_states(storage)
    xss_id = await storage.enqueue(
        Job(f"m{XSS_CORPUS[1]}", {"p": XSS_CORPUS, XSS_CORPUS[0]: 1}, queue=f"q{XSS_CORPUS[2]}")
    )
    leases = await storage.claim(ClaimRequest("s", [f"q{XSS_CORPUS[2]}"], limit=1))
    await storage.fail(leases[0], ErrorInfo(XSS_CORPUS[3], XSS_CORPUS[1], XSS_CORPUS[0]))
    secret_id = await storage.enqueue(Job("app.login", SECRET_ARGS, queue="secrets"))
    await schedule_recurring(storage, f"r{XSS_CORPUS[1]}", "*/5 * * * *", XSS_CORPUS[0])
    await register_server(storage)
    return {"states": ids, "xss": xss_id, "secret": secret_id}


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def dash(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, browser: Any
) -> Iterator[LiveDashboard]:
    live = LiveDashboard(request.param, Path(tmp_path_factory.mktemp(request.param)))
    live.start()
    try:
        live.seeded = live.call(_seed(live))  # type: ignore[attr-defined]
        yield live
    finally:
        live.close()


@pytest.fixture
def page(browser: Any, dash: LiveDashboard) -> Iterator[Page]:
    ctx = browser.new_context(base_url=dash.url, viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    problems: list[str] = []
    origin = dash.url.rstrip("/")
    ws_origin = origin.replace("http://", "ws://")
    pg.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    pg.on(
        "console",
        lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
    )
    pg.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    pg.on(
        "request",
        lambda r: (
            None
            if r.url.startswith((origin, ws_origin, "data:"))
            else problems.append(f"external request: {r.url}")
        ),
    )
    frames: list[str] = []
    pg.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))),
    )
    pg.ws_frames = frames
    try:
        yield pg
    finally:
        ctx.close()
    assert problems == [], problems


def _pages(dash: LiveDashboard) -> list[str]:
    seeded: dict[str, Any] = dash.seeded  # type: ignore[attr-defined]
    paths = ["/", "/jobs", "/queues", "/recurring", "/servers", "/errors", "/operations"]
    paths += [f"/jobs?state={s.value}" for s in JobState]
    paths += [f"/jobs/{job_id}" for job_id in seeded["states"].values()]
    return [*paths, f"/jobs/{seeded['xss']}", f"/jobs/{seeded['secret']}"]


def test_every_page_loads_cleanly(page: Page, dash: LiveDashboard) -> None:
    for path in _pages(dash):
        page.goto(path)
        expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
        assert page.evaluate("window.__xss === undefined"), path
        assert page.locator("#xss-b").count() == 0, path
        assert page.locator("script").count() == 1, path
        content = page.content()
        for secret in SECRET_VALUES:
            assert secret not in content, (path, secret)
    for frame in page.ws_frames:
        for secret in SECRET_VALUES:
            assert secret not in frame


def test_xss_payloads_show_as_text(page: Page, dash: LiveDashboard) -> None:
    seeded: dict[str, Any] = dash.seeded  # type: ignore[attr-defined]
    page.goto(f"/jobs/{seeded['xss']}")
    expect(page.get_by_test_id("job-error")).to_contain_text(XSS_CORPUS[1])
    expect(page.get_by_test_id("job-traceback")).to_have_text(XSS_CORPUS[0])
    expect(page.locator("h1 code")).to_have_text(f"m{XSS_CORPUS[1]}")
    assert page.evaluate("window.__xss === undefined")


def test_change_outside_the_browser_appears_without_reload(page: Page, dash: LiveDashboard) -> None:
    page.goto("/")
    expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
    tile = page.get_by_test_id("tile-enqueued").locator("[data-count]")
    before = int(tile.inner_text())
    page.evaluate("window.__sameDocument = true")
    dash.call(dash.storage.enqueue(Job("app.outside", {"n": 1}, queue="outside")))
    expect(tile).to_have_text(str(before + 1), timeout=3000)
    expect(page.locator('tr[data-queue="outside"]')).to_have_count(1, timeout=3000)

    job_id = dash.call(dash.storage.enqueue(Job("app.outside.detail", {"n": 2})))
    page.goto(f"/jobs/{job_id}")
    expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
    page.evaluate("window.__sameDocument = true")
    dash.call(dash.storage.delete(job_id))
    expect(page.get_by_test_id("job-state")).to_have_text("Deleted", timeout=3000)
    assert page.evaluate("window.__sameDocument === true")


def _failed_job(dash: LiveDashboard, method: str) -> str:
    async def make() -> str:
        job_id = await dash.storage.enqueue(Job(method, {"n": 1}, queue=method))
        leases = await dash.storage.claim(ClaimRequest("s", [method], limit=1))
        await dash.storage.fail(leases[0], ErrorInfo("RuntimeError", "it broke"))
        return job_id

    return dash.call(make())


def test_retry_from_the_failed_list(page: Page, dash: LiveDashboard) -> None:
    job_id = _failed_job(dash, "app.retry.list")
    page.goto("/jobs?state=failed&method=app.retry.list")
    expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.locator("[data-col=state]")).to_have_text("Failed")
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(0, timeout=3000)
    expect(page.get_by_test_id("no-jobs")).to_be_visible()
    job = dash.call(dash.storage.get_job(job_id))
    assert job.state is JobState.ENQUEUED
    assert job.history[-1].reason == "retried from the dashboard"


def test_retry_from_job_detail(page: Page, dash: LiveDashboard) -> None:
    job_id = _failed_job(dash, "app.retry.detail")
    page.goto(f"/jobs/{job_id}")
    expect(page.get_by_test_id("job-state")).to_have_text("Failed")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_test_id("job-state")).to_have_text("Enqueued", timeout=3000)
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert dash.call(dash.storage.get_job(job_id)).state is JobState.ENQUEUED


def test_pause_and_resume_a_queue(page: Page, dash: LiveDashboard) -> None:
    dash.call(dash.storage.enqueue(Job("app.pausable", queue="pausable")))
    page.goto("/queues")
    row = page.locator('tr[data-queue="pausable"]')
    row.get_by_role("button", name="Pause").click()
    expect(row.locator("[data-col=paused]")).to_have_text("Paused", timeout=3000)
    assert "pausable" in dash.call(dash.storage.paused_queues())
    row.get_by_role("button", name="Resume").click()
    expect(row.locator("[data-col=paused]")).to_have_text("Active", timeout=3000)
    assert "pausable" not in dash.call(dash.storage.paused_queues())


def test_falls_back_to_polling_when_the_socket_is_blocked(page: Page, dash: LiveDashboard) -> None:
    page.route_web_socket("**/api/v1/ws", lambda ws: ws.close())
    page.goto("/")
    expect(page.get_by_test_id("conn-status")).to_have_text("Polling", timeout=10000)
    tile = page.get_by_test_id("tile-scheduled").locator("[data-count]")
    before = int(tile.inner_text())
    dash.call(dash.storage.enqueue(Job("app.polled", run_at=_in_an_hour())))
    expect(tile).to_have_text(str(before + 1), timeout=6000)


def _in_an_hour() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)


def test_reconnects_after_the_socket_drops(page: Page, dash: LiveDashboard) -> None:
    sockets: list[Any] = []

    def proxy(ws: Any) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket("**/api/v1/ws", proxy)
    page.goto("/")
    status = page.get_by_test_id("conn-status")
    expect(status).to_have_text("Live", timeout=5000)
    sockets[0].close()
    expect(status).not_to_have_text("Live", timeout=3000)
    expect(status).to_have_text("Live", timeout=5000)
    assert len(sockets) == 2
    tile = page.get_by_test_id("tile-enqueued").locator("[data-count]")
    before = int(tile.inner_text())
    dash.call(dash.storage.enqueue(Job("app.after.reconnect")))
    expect(tile).to_have_text(str(before + 1), timeout=3000)


def test_bulk_retry_of_all_jobs_matching_a_filter(page: Page, dash: LiveDashboard) -> None:
    method = "app.bulk.ui"
    ids = dash.call(make_failed(dash.storage, 60, queue="bulk-ui", method=method))
    other = dash.call(make_failed(dash.storage, 3, queue="bulk-ui", method="app.bulk.other"))
    operations = dashboard_context(dash.server.app).operations
    operations.batch_size, operations.batch_pause = 3, 0.05  # slow enough to watch
    try:
        page.goto(f"/jobs?state=failed&method={method}&limit=25")
        expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
        expect(page.locator("tr[data-job-id]")).to_have_count(25)
        page.get_by_test_id("select-all-matching").click()
        selection = page.get_by_test_id("selection-text")
        expect(selection).to_have_text(
            f"All 60 jobs matching state:failed method:{method} are selected."
        )
        page.get_by_role("button", name="Retry all 60").click()
        expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
        text = page.get_by_test_id("confirm-text")
        expect(text).to_contain_text(f"Retry all 60 jobs matching state:failed method:{method}")
        page.get_by_test_id("confirm-ok").click()
        page.wait_for_url("**/operations*")
        row = page.locator("tr[data-operation-id]").first
        expect(row.locator("[data-col=status]")).to_have_text("completed", timeout=15000)
        expect(row.locator("[data-col=percent]")).to_have_text("100%")
        expect(row.locator("[data-col=processed]")).to_have_text("60 / 60")
        assert row.locator("progress").get_attribute("value") == "60"
    finally:
        operations.batch_size, operations.batch_pause = 500, 0.0
    progress = [
        json.loads(f)["operation"]["progress"] for f in page.ws_frames if '"op.progress"' in f
    ]
    assert any(0 < p < 1 for p in progress), progress  # progress arrived live, in steps
    assert set(dash.call(states_of(dash.storage, ids)).values()) == {JobState.ENQUEUED}
    assert set(dash.call(states_of(dash.storage, other)).values()) == {JobState.FAILED}


ROOT = Path(__file__).resolve().parents[2]


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("dash", ["sqlite"], indirect=True)  # shared with another process
def test_queue_pause_stops_a_running_worker(page: Page, dash: LiveDashboard) -> None:
    storage = dash.storage
    db = dash.tmp_path / "ui.db"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qml",
            "worker",
            "tests.dashboard.worker_app:registry",
            "--storage",
            f"sqlite:///{db}",
            "--queues",
            "wq,wq-control",
            "--poll-interval",
            "0.2",
            "--workers",
            "4",
            "--name",
            "ui-worker",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def state(job_id: str) -> JobState:
        return dash.call(storage.get_job(job_id)).state

    def drained(job_id: str) -> Callable[[], bool]:
        def check() -> bool:
            assert worker.poll() is None, worker.communicate()[1]
            return state(job_id) is JobState.SUCCEEDED

        return check

    try:
        # the worker is up and takes jobs of the queue
        first = dash.call(storage.enqueue(Job("ui.noop", {"n": 1}, queue="wq")))
        _wait_for(drained(first), 20, "the worker to run a first job")

        page.goto("/queues")
        expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
        row = page.locator('tr[data-queue="wq"]')
        row.get_by_role("button", name="Pause").click()
        expect(row.locator("[data-col=paused]")).to_have_text("Paused", timeout=3000)
        assert "wq" in dash.call(storage.paused_queues())

        held = [dash.call(storage.enqueue(Job("ui.noop", {"n": i}, queue="wq"))) for i in range(5)]
        # proof that the worker kept polling after they were enqueued: control
        # jobs on another of its queues, enqueued later, finish; twice, so at
        # least one full poll cycle happened while the paused jobs were ready
        for n in range(2):
            control = dash.call(storage.enqueue(Job("ui.noop", {"n": n}, queue="wq-control")))
            _wait_for(drained(control), 20, "a control job")
            assert {state(j) for j in held} == {JobState.ENQUEUED}

        row.get_by_role("button", name="Resume").click()
        expect(row.locator("[data-col=paused]")).to_have_text("Active", timeout=3000)
        for job_id in held:
            _wait_for(drained(job_id), 20, "the resumed queue to drain")
        expect(row.locator("td").nth(1)).to_have_text("0", timeout=5000)  # none Enqueued
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0


def test_live_throughput_chart_follows_the_feed(page: Page, dash: LiveDashboard) -> None:
    async def finish(count: int) -> None:
        storage = dash.storage
        queue = f"chart-{dash.backend}"
        await storage.enqueue_many(Job("app.chart", {"i": i}, queue=queue) for i in range(count))
        leases = await storage.claim(ClaimRequest("s", [queue], limit=count))
        assert all(await storage.finish([Outcome.succeed(lease, None, ttl=60) for lease in leases]))

    page.goto("/")
    expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
    rate = page.get_by_test_id("live-rate")
    expect(rate).to_contain_text("succeeded/s", timeout=3000)  # the first tick arrived
    expect(page.get_by_test_id("history-chart")).to_be_visible()
    dash.call(finish(7))
    chart = page.get_by_test_id("live-chart")
    expect(chart).to_have_attribute("data-peak", "7", timeout=3000)
    expect(rate).to_contain_text("1.4 succeeded/s")  # 7 in the last 5 seconds
    assert int(chart.get_attribute("data-samples") or "0") >= 1


def test_bulk_actions_on_a_selection_and_typed_confirmation(
    page: Page, dash: LiveDashboard
) -> None:
    picked = dash.call(make_failed(dash.storage, 3, queue="pick", method="app.pick"))
    many = dash.call(make_failed(dash.storage, 1001, queue="many", method="app.many"))

    # a selection of rows: only those are acted on
    page.goto("/jobs?state=failed&method=app.pick")
    expect(page.get_by_test_id("conn-status")).to_have_text("Live", timeout=5000)
    for job_id in picked[:2]:
        page.locator(f'tr[data-job-id="{job_id}"] input.sel').check()
    expect(page.get_by_test_id("selection-text")).to_have_text("2 jobs selected on this page.")
    page.get_by_role("button", name="Delete selected").click()
    expect(page.get_by_test_id("confirm-text")).to_have_text("Delete 2 selected jobs?")
    page.get_by_test_id("confirm-ok").click()
    expect(page.locator("tr[data-job-id]")).to_have_count(1, timeout=5000)
    states = dash.call(states_of(dash.storage, picked))
    assert [states[i] for i in picked] == [JobState.DELETED, JobState.DELETED, JobState.FAILED]

    # more than 1,000 matching jobs: the count must be typed to confirm
    page.goto("/jobs?state=failed&method=app.many&limit=10")
    page.get_by_test_id("select-all-matching").click()
    page.get_by_role("button", name="Delete all 1001").click()
    expect(page.get_by_test_id("confirm-input")).to_be_visible()
    page.get_by_test_id("confirm-ok").click()  # nothing typed: refused
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.locator("#toast")).to_have_text("Type 1001 to confirm")
    page.get_by_test_id("confirm-input").fill("1001")
    page.get_by_test_id("confirm-ok").click()
    page.wait_for_url("**/operations*")
    row = page.locator("tr[data-operation-id]").first
    expect(row.locator("[data-col=status]")).to_have_text("completed", timeout=15000)
    expect(row.locator("[data-col=processed]")).to_have_text("1001 / 1001")
    assert set(dash.call(states_of(dash.storage, many)).values()) == {JobState.DELETED}


def test_retry_a_whole_error_group(page: Page, dash: LiveDashboard) -> None:
    error = ErrorInfo("LookupError", "tenant 4711 missing", None)
    ids = dash.call(make_failed(dash.storage, 5, queue="grp", method="app.grp", error=error))
    page.goto("/errors")
    row = page.locator("tr[data-error-group]", has_text="LookupError")
    expect(row.locator("[data-col=count]")).to_have_text("5")
    row.get_by_role("button", name="Retry all").click()
    expect(page.get_by_test_id("confirm-text")).to_contain_text("Retry all 5 jobs of the group")
    page.get_by_test_id("confirm-ok").click()
    expect(page.locator("tr[data-error-group]", has_text="LookupError")).to_have_count(
        0, timeout=5000
    )
    assert set(dash.call(states_of(dash.storage, ids)).values()) == {JobState.ENQUEUED}
