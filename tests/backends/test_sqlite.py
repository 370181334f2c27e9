"""SQLite-specific behaviour (the contract suite covers the shared semantics).

Settings and schema, persistence across reopen, several handles and several
processes on one file, lock contention, corrupt rows, translated errors and
the cross-process wake-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import qml
from qml.errors import (
    ConfigurationError,
    DuplicateJobError,
    MigrationError,
    StorageError,
    StorageUnavailableError,
)
from qml.job import Job, JobState
from qml.serialization import CorruptPayload
from qml.storage.factory import StorageInstance
from qml.storage.requests import (
    ClaimRequest,
    ErrorInfo,
    JobQuery,
    Outcome,
    RecoverRequest,
    RecurringTemplate,
    ServerInfo,
)
from qml.storage.sqlite import SqliteStorage
from qml.storage.sqlite.sql import SCHEMA_VERSION, Q

T = TypeVar("T")
SRC = str(Path(qml.__file__).resolve().parent.parent)
PACKAGE = Path(qml.__file__).resolve().parent / "storage" / "sqlite"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "qml.db")


@pytest.fixture
async def storage(db_path: str) -> AsyncIterator[SqliteStorage]:
    s = SqliteStorage(db_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def on_conn(storage: SqliteStorage, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` on the storage's own connection (its thread)."""
    return await storage._db.run(fn)


def raw(path: str) -> sqlite3.Connection:
    """A separate plain connection to the file (autocommit)."""
    return sqlite3.connect(path, isolation_level=None, timeout=30)


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds (polling, no fixed sleep decides the outcome)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- settings & schema
async def test_wal_and_synchronous_are_applied(db_path: str, tmp_path: Path) -> None:
    async with SqliteStorage(db_path) as s:
        assert await on_conn(s, lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert await on_conn(s, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        await s.enqueue(Job("m"))
        assert await s.claim(ClaimRequest("srv", ["default"], 1))  # a non-durable commit
        assert await on_conn(s, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert await on_conn(s, lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) > 0
    async with SqliteStorage(str(tmp_path / "n.db"), synchronous="normal") as s:
        assert await on_conn(s, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    with raw(db_path) as c:  # WAL is a property of the file
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()


def test_bad_settings_are_configuration_errors(db_path: str) -> None:
    with pytest.raises(ConfigurationError, match="synchronous"):
        SqliteStorage(db_path, synchronous="SOMETIMES")
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SqliteStorage(db_path, busy_timeout=-1)


async def test_missing_directory_is_a_clear_configuration_error(tmp_path: Path) -> None:
    s = SqliteStorage(str(tmp_path / "nope" / "qml.db"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        await s.open()
    with pytest.raises(ConfigurationError, match="does not exist"):
        await s.enqueue(Job("m"))
    await s.close()
    with pytest.raises(ConfigurationError, match="MemoryStorage"):
        await SqliteStorage(":memory:").open()


async def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    s = SqliteStorage(str(path))
    with pytest.raises(StorageError) as info:
        await s.open()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await s.close()


async def test_schema_is_idempotent_and_versioned(db_path: str) -> None:
    async with SqliteStorage(db_path) as s:
        await s.enqueue(Job("m"))
    with raw(db_path) as c:
        before = c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    c.close()
    for _ in range(2):
        async with SqliteStorage(db_path) as s:
            assert await s.count() == 1
    # several handles creating the schema of a fresh file at once
    fresh = db_path + ".fresh"
    handles = [SqliteStorage(fresh) for _ in range(4)]
    await asyncio.gather(*(h.open() for h in handles))
    await asyncio.gather(*(h.close() for h in handles))
    with raw(db_path) as c:
        after = c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        version = c.execute(Q["read_meta"], ("schema_version",)).fetchone()[0]
    c.close()
    assert after == before
    assert version == SCHEMA_VERSION
    assert {n for t, n, _ in after if t == "table"} >= {
        "qml_meta",
        "qml_jobs",
        "qml_counts",
        "qml_minute_stats",
        "qml_dedup",
        "qml_recurring",
        "qml_servers",
        "qml_paused_queues",
    }


async def test_a_newer_schema_is_refused(db_path: str) -> None:
    async with SqliteStorage(db_path):
        pass
    with raw(db_path) as c:
        c.execute(
            "UPDATE qml_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    c.close()
    s = SqliteStorage(db_path)
    with pytest.raises(MigrationError, match="newer"):
        await s.open()
    await s.close()


def test_every_named_query_is_used() -> None:
    code = "\n".join(p.read_text() for p in PACKAGE.glob("*.py"))
    used = set(re.findall(r'Q\["(\w+)"\]', code))
    assert set(Q) == used, f"unused: {set(Q) - used}, missing: {used - set(Q)}"


def test_hot_queries_use_their_indexes() -> None:
    """The job queries search an index: no full scan and no sort of the job table."""
    from qml.storage.sqlite.connection import schema_statements
    from qml.storage.sqlite.sql import SCHEMA

    c = sqlite3.connect(":memory:")
    for stmt in schema_statements(SCHEMA):
        c.execute(stmt)
    expected = {
        "claim_jobs": "qml_jobs_claim",
        "select_expired_leases": "qml_jobs_lease",
        "select_due": "qml_jobs_due",
        "delete_expired": "qml_jobs_expiry",
        "oldest_enqueued": "qml_jobs_oldest_enqueued",
        "select_jobs": "sqlite_autoindex_qml_jobs_1",
        "finish_job": "sqlite_autoindex_qml_jobs_1",
        "get_job": "sqlite_autoindex_qml_jobs_1",
    }
    for name, index in expected.items():
        n = max([int(x) for x in re.findall(r"\?(\d+)", Q[name])] or [1])
        params: list[Any] = ["[]"] + [None] * (n - 1)
        plan = " | ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + Q[name], params))
        assert index in plan, f"{name}: {plan}"
        assert "SCAN qml_jobs" not in plan and "TEMP B-TREE" not in plan, f"{name}: {plan}"
    c.close()


async def test_list_queries_walk_an_index_in_id_order(storage: SqliteStorage) -> None:
    """Every filter combination reads a page from an index in id order (no sort)."""
    ids = await storage.enqueue_many([Job("m", {"i": i}, queue="q") for i in range(5)])
    await storage.move(ids[:2], JobState.DELETED)
    statements: list[str] = []
    await on_conn(storage, lambda c: c.set_trace_callback(statements.append))
    failed, deleted = JobState.FAILED, JobState.DELETED
    queries = [
        JobQuery(limit=2),
        JobQuery(states=frozenset({deleted}), limit=1),
        JobQuery(states=frozenset({failed, deleted}), cursor=ids[-1], limit=1),
        JobQuery(queue="q", limit=2),
        JobQuery(queue="q", states=frozenset({deleted}), ascending=True),
        JobQuery(method="m", cursor=ids[2]),
        JobQuery(queue="q", method="m", states=frozenset({JobState.ENQUEUED})),
    ]
    pages = [await storage.list_jobs(q) for q in queries]
    await on_conn(storage, lambda c: c.set_trace_callback(None))
    assert [len(p.items) for p in pages] == [2, 1, 1, 2, 2, 2, 3]
    assert [j.id for j in pages[1].items] == [ids[1]]
    assert [j.id for j in pages[2].items] == [ids[1]] and pages[2].next_cursor == ids[1]
    assert [j.id for j in pages[4].items] == ids[:2]
    listed = [x for x in statements if x.lstrip().startswith("SELECT id, method")]
    assert len(listed) >= len(queries)
    with raw(storage.path) as c:
        for sql in listed:
            plan = " | ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql))
            assert "TEMP B-TREE" not in plan, f"{sql}: {plan}"
            assert "SCAN qml_jobs" not in plan or "autoindex" in plan, f"{sql}: {plan}"
    c.close()


# ---------------------------------------------------------------------- lifecycle
async def test_open_and_close_are_idempotent_and_join_threads(db_path: str) -> None:
    s = SqliteStorage(db_path)
    await s.open()
    await s.open()
    assert await s.wait_for_work(0.01) is False  # starts the watcher thread too
    await s.close()
    await s.close()
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("qml-sqlite")], names
    with pytest.raises(StorageUnavailableError, match="closed"):
        await s.count()
    await s.open()  # an explicit open brings it back
    assert await s.count() == 0
    await s.close()


async def test_first_call_opens_lazily(db_path: str) -> None:
    s = StorageInstance.sqlite(db_path)
    assert isinstance(s, SqliteStorage)
    try:
        job_id = await s.enqueue(Job("lazy", {"n": 1}))
        assert (await s.get_job(job_id)).args == {"n": 1}
    finally:
        await s.close()


async def test_from_url_opens_a_sqlite_storage(db_path: str) -> None:
    s = await StorageInstance.from_url(f"sqlite:///{db_path}")
    try:
        assert isinstance(s, SqliteStorage)
        assert s.path == db_path
    finally:
        await s.close()


async def test_from_url_reads_its_options(db_path: str) -> None:
    url = f"sqlite:///{db_path}?synchronous=normal&busy_timeout=2.5&poll_interval=0.05"
    s = await StorageInstance.from_url(url)
    try:
        assert isinstance(s, SqliteStorage)
        assert (s._db.synchronous, s._db.busy_timeout, s._db.poll_interval) == ("NORMAL", 2.5, 0.05)
        level = await s._db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert level == 1  # NORMAL
    finally:
        await s.close()
    s = await StorageInstance.from_url(f"sqlite:///{db_path}?busy_timeout=1", busy_timeout=7.0)
    try:  # an explicit keyword wins over the URL
        assert isinstance(s, SqliteStorage) and s._db.busy_timeout == 7.0
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("journal=wal", "unknown sqlite URL option 'journal'"),
        ("busy_timeout=soon", "is not a number"),
        ("synchronous=sometimes", "synchronous must be one of"),
    ],
)
async def test_from_url_refuses_bad_options(db_path: str, query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await StorageInstance.from_url(f"sqlite:///{db_path}?{query}")


# ---------------------------------------------------------------------- persistence
async def test_everything_persists_across_close_and_reopen(db_path: str) -> None:
    at = datetime.now(UTC)
    async with SqliteStorage(db_path) as s:
        kept = await s.enqueue(
            Job(
                "keep",
                {"x": [1, "é", None]},
                queue="q1",
                priority=7,
                max_retries=3,
                timeout=2.5,
                dedup_key="k-1",
                meta={"trace": "abc"},
            )
        )
        done = await s.enqueue(Job("done", {"y": 2}, queue="q2"))
        later = await s.enqueue(Job("later", {}, run_at=at + timedelta(hours=1)))
        lease = (await s.claim(ClaimRequest("srv", ["q2"], 1)))[0]
        await s.finish([Outcome.succeed(lease, {"answer": 42}, ttl=3600)])
        await s.pause_queue("q3")
        await s.upsert_recurring(
            RecurringTemplate("nightly", "0 0 3 * * *", "report", {"kind": "n"}, next_run_at=at)
        )
        await s.heartbeat_server(ServerInfo("srv", hostname="h", pid=9, queues=["q1"]))
        before = {j: await s.get_job(j) for j in (kept, done, later)}
        stats_before = await s.stats(history_minutes=2)
    async with SqliteStorage(db_path) as s:
        for job_id, job in before.items():
            assert await s.get_job(job_id) == job
        after = await s.get_job(done)
        assert after.state is JobState.SUCCEEDED and after.result == {"answer": 42}
        assert (await s.get_job(later)).state is JobState.SCHEDULED
        assert await s.stats(history_minutes=2) == stats_before
        assert await s.paused_queues() == {"q3"}
        template = await s.get_recurring("nightly")
        assert template is not None and template.args == {"kind": "n"}
        assert [x.id for x in await s.list_servers()] == ["srv"]
        with pytest.raises(DuplicateJobError):
            await s.enqueue(Job("again", dedup_key="k-1"))


async def test_history_times_are_exact(storage: SqliteStorage) -> None:
    """Epoch floats round-trip exactly through the JSON history and REAL columns."""
    now = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    await storage.enqueue(Job("m"))
    lease = (await storage.claim(ClaimRequest("srv", ["default"], 1, now=now)))[0]
    assert lease.job.started_at == now
    assert lease.job.history[-1].at == now
    assert lease.job.history[-1].attempt == 1
    assert lease.job.history[-1].server_id == "srv"
    await storage.finish([Outcome.retry(lease, ErrorInfo("E", "m"), delay=1.5)], now=now)
    job = await storage.get_job(lease.job.id)
    assert job.run_at == now + timedelta(seconds=1.5)
    assert job.history[-1].at == now and job.updated_at == now


# ---------------------------------------------------------------------- corrupt data & errors
async def test_corrupt_args_come_back_as_a_marker(storage: SqliteStorage) -> None:
    bad_json = await storage.enqueue(Job("m", {"ok": True}))
    bad_utf8 = await storage.enqueue(Job("m", {"ok": True}))
    with raw(storage.path) as c:
        c.execute("UPDATE qml_jobs SET args = '{not json' WHERE id = ?", (bad_json,))
        c.execute("UPDATE qml_jobs SET args = CAST(x'7b22ff22' AS TEXT) WHERE id = ?", (bad_utf8,))
    c.close()
    for job_id, text in ((bad_json, "{not json"), (bad_utf8, '{"\ufffd"')):
        job = await storage.get_job(job_id)
        assert isinstance(job.args, CorruptPayload)
        assert job.args.raw == text
    page = await storage.list_jobs(JobQuery(text="not json"))
    assert [j.id for j in page.items] == [bad_json]
    leases = await storage.claim(ClaimRequest("srv", ["default"], 10))
    assert len(leases) == 2
    assert all(isinstance(lease.job.args, CorruptPayload) for lease in leases)


async def test_other_damaged_columns_never_break_a_read(storage: SqliteStorage) -> None:
    job_id = await storage.enqueue(Job("m", {"ok": True}, meta={"k": 1}))
    good = (await storage.get_job(job_id)).history
    with raw(storage.path) as c:
        c.execute(
            "UPDATE qml_jobs SET meta = 'nope', result = '{', "
            "history = json_insert(history, '$[#]', json('{\"state\": \"bogus\"}')) "
            "WHERE id = ?",
            (job_id,),
        )
    c.close()
    job = await storage.get_job(job_id)
    assert job.args == {"ok": True}
    assert job.meta == {}
    assert isinstance(job.result, CorruptPayload)
    assert job.history == good


async def test_driver_errors_are_translated(storage: SqliteStorage) -> None:
    with raw(storage.path) as c:
        c.execute("DROP TABLE qml_servers")
    c.close()
    with pytest.raises(StorageError) as info:
        await storage.list_servers()
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_a_call_cancelled_before_it_starts_never_runs(storage: SqliteStorage) -> None:
    started = threading.Event()
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> str:
        started.set()
        release.wait(30)
        return "held"

    ran: list[str] = []
    busy = asyncio.create_task(storage._db.run(hold))  # occupies the connection thread
    await asyncio.to_thread(started.wait, 30)
    queued = asyncio.create_task(storage._db.run(lambda conn: ran.append("queued")))
    await asyncio.sleep(0)  # submitted, waiting behind `hold`
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()
    assert await busy == "held"
    assert await storage._db.run(lambda conn: "next") == "next"
    assert ran == []
    with pytest.raises(StorageError):  # errors still travel back from the thread
        await storage._db.run(lambda conn: conn.execute("SELECT * FROM no_such_table"))


async def test_unicode_text_search_is_case_insensitive(storage: SqliteStorage) -> None:
    hit = await storage.enqueue(Job("m", {"city": "ÉCOLE Zürich"}))
    await storage.enqueue(Job("m", {"city": "Paris"}))
    for text in ("école", "ZÜRICH", "cole z", "%", "_"):
        page = await storage.list_jobs(JobQuery(text=text))
        expected = [hit] if text not in ("%", "_") else []
        assert [j.id for j in page.items] == expected, text


# ---------------------------------------------------------------------- contention
async def test_a_locked_database_is_waited_for_not_surfaced(db_path: str) -> None:
    async with SqliteStorage(db_path) as s:
        blocker = raw(db_path)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            task = asyncio.create_task(s.enqueue(Job("m")))
            await eventually(lambda: s._db.busy_retries > 0)
            assert not task.done()
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        job_id = await task
        assert (await s.get_job(job_id)).state is JobState.ENQUEUED


async def test_a_lock_held_past_busy_timeout_is_storage_unavailable(db_path: str) -> None:
    async with SqliteStorage(db_path, busy_timeout=0.2) as s:
        blocker = raw(db_path)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailableError, match="locked") as info:
                await s.enqueue(Job("m"))
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await s.count() == 0


async def test_two_handles_claiming_concurrently_never_share_a_job(db_path: str) -> None:
    async with SqliteStorage(db_path) as a, SqliteStorage(db_path) as b:
        ids = set(await a.enqueue_many([Job("m", {"i": i}) for i in range(300)]))

        async def drain(s: SqliteStorage, name: str) -> list[str]:
            got: list[str] = []
            while leases := await s.claim(ClaimRequest(name, ["default"], 4)):
                got += [x.job.id for x in leases]
                await s.finish([Outcome.succeed(x, None, ttl=60) for x in leases])
            return got

        got_a, got_b = await asyncio.gather(drain(a, "a"), drain(b, "b"))
        assert len(got_a) + len(got_b) == len(ids)
        assert set(got_a) | set(got_b) == ids
        assert await a.count(JobState.SUCCEEDED) == len(ids)


CHILD = r"""
import asyncio, json, sys
from qml.job import Job
from qml.storage.requests import ClaimRequest, Outcome
from qml.storage.sqlite import SqliteStorage

async def main(path: str, mode: str) -> None:
    storage = SqliteStorage(path)
    await storage.open()
    try:
        if mode == "enqueue":
            await storage.enqueue(Job("from.child", {}))
            return
        print("ready", flush=True)
        sys.stdin.readline()
        claimed = []
        while True:
            leases = await storage.claim(ClaimRequest("child", ["default"], 3))
            if not leases:
                break
            claimed += [lease.job.id for lease in leases]
            applied = await storage.finish([Outcome.succeed(x, None, ttl=60) for x in leases])
            assert all(applied)
        print(json.dumps(claimed), flush=True)
    finally:
        await storage.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _spawn(path: str, mode: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        path,
        mode,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish_child(proc: asyncio.subprocess.Process) -> str:
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.timeout(180)
async def test_two_processes_claiming_concurrently_each_job_once(storage: SqliteStorage) -> None:
    ids = set(await storage.enqueue_many([Job("m", {"i": i}) for i in range(500)]))
    children = [await _spawn(storage.path, "claim") for _ in range(2)]
    for child in children:  # both are connected before either starts claiming
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"ready", line
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        await child.stdin.drain()
    claimed: list[str] = []
    for child in children:
        claimed += json.loads((await _finish_child(child)).strip().splitlines()[-1])
    assert len(claimed) == len(ids), "a job was claimed twice or not at all"
    assert set(claimed) == ids
    assert await storage.count(JobState.SUCCEEDED) == len(ids)
    assert await storage.count() == len(ids)


# ---------------------------------------------------------------------- wake-up
@pytest.mark.timeout(120)
async def test_an_enqueue_in_another_process_wakes_a_waiter(storage: SqliteStorage) -> None:
    waiter = asyncio.create_task(storage.wait_for_work(60))
    child = await _spawn(storage.path, "enqueue")
    await _finish_child(child)
    assert await waiter is True
    assert [j.method for j in (await storage.list_jobs()).items] == ["from.child"]


@pytest.mark.timeout(120)
async def test_work_enqueued_elsewhere_before_waiting_still_wakes(storage: SqliteStorage) -> None:
    await _finish_child(await _spawn(storage.path, "enqueue"))
    assert await storage.wait_for_work(60) is True


async def test_own_writes_and_non_work_writes_do_not_wake_later_waiters(
    db_path: str,
) -> None:
    async with SqliteStorage(db_path) as a, SqliteStorage(db_path) as b:
        await a.enqueue(Job("m"))
        lease = (await a.claim(ClaimRequest("srv", ["default"], 1)))[0]
        await b.heartbeat_server(ServerInfo("other"))
        await b.finish([Outcome.succeed(lease, None, ttl=60)])
        assert await a.wait_for_work(0.2) is False


async def test_work_made_available_in_another_handle_wakes(db_path: str) -> None:
    now = datetime.now(UTC)
    async with SqliteStorage(db_path) as a, SqliteStorage(db_path) as b:
        await a.enqueue(Job("m", run_at=now + timedelta(seconds=30)))
        waiter = asyncio.create_task(a.wait_for_work(60))
        assert await b.activate_due(now=now + timedelta(seconds=31)) == 1
        assert await waiter is True
        lease = (await a.claim(ClaimRequest("srv", ["default"], 1, lease_seconds=5)))[0]
        waiter = asyncio.create_task(a.wait_for_work(60))
        recovered = await b.recover_expired(
            RecoverRequest(now=datetime.now(UTC) + timedelta(seconds=10), crash_backoff=0)
        )
        assert recovered == [lease.job.id]
        assert await waiter is True


# ---------------------------------------------------------------------- counters
async def test_counters_match_the_job_table(storage: SqliteStorage) -> None:
    now = datetime.now(UTC)
    ids = await storage.enqueue_many(
        [Job("m", {"i": i}, queue=f"q{i % 3}") for i in range(60)]
        + [Job("m", run_at=now + timedelta(seconds=5)) for _ in range(5)]
    )
    leases = await storage.claim(ClaimRequest("srv", ["q0", "q1", "q2"], 30, lease_seconds=5))
    outcomes = []
    for i, lease in enumerate(leases):
        kind = i % 4
        if kind == 0:
            outcomes.append(Outcome.succeed(lease, {"i": i}, ttl=1))
        elif kind == 1:
            outcomes.append(Outcome.fail(lease, ErrorInfo("E", "boom"), ttl=1))
        elif kind == 2:
            outcomes.append(Outcome.retry(lease, ErrorInfo("E", "again"), delay=2))
    await storage.finish(outcomes)
    await storage.move(ids[-12:-6], JobState.DELETED)
    await storage.recover_expired(RecoverRequest(now=now + timedelta(seconds=10)))
    await storage.activate_due(now + timedelta(seconds=60))
    await storage.delete_expired(now=now + timedelta(days=30))

    def truth(c: sqlite3.Connection) -> dict[tuple[str, str], int]:
        rows = c.execute("SELECT queue, state, count(*) FROM qml_jobs GROUP BY queue, state")
        return {(q, s): n for q, s, n in rows}

    counted = {(q, s.value): n for (q, s), n in (await storage._counts()).items()}
    assert counted == await on_conn(storage, truth)
    assert sum(counted.values()) == await storage.count() > 0


# ---------------------------------------------------------------------- fork
def test_a_forked_child_opens_its_own_connection(db_path: str) -> None:
    """A storage opened before ``fork()`` works in the child on a connection of
    its own, and the parent's keeps working."""
    s = SqliteStorage(db_path)
    asyncio.run(s.enqueue_many([Job("m"), Job("m")]))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(60)  # a hanging child dies instead of outliving the test
        try:

            async def child() -> int:
                leases = await s.claim(ClaimRequest("child", ["default"], 1))
                await s.enqueue(Job("from.fork"))
                await s.close()
                return len(leases)

            os.write(write_end, str(asyncio.run(child())).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        reply = f.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert reply == b"1"

    async def parent() -> None:
        try:
            assert await s.count(JobState.PROCESSING) == 1
            assert await s.count(JobState.ENQUEUED) == 2
        finally:
            await s.close()

    asyncio.run(parent())


# ---------------------------------------------------------------------- WAL sync after a claim
def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the files fsync'd from now on."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


async def test_outcomes_carried_by_a_claim_are_synced_before_the_next_statement(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finish_and_claim commits without the fsync and syncs the WAL right after
    its caller has the reply, on the connection thread, before anything else runs
    there: nothing can be read or written on top of an unsynced outcome."""
    async with SqliteStorage(db_path) as s:
        await s.enqueue_many([Job("m") for _ in range(3)])
        (lease,) = await s.claim(ClaimRequest("srv", ["default"], 1))
        events: list[str] = []
        sync = s._db.sync_wal

        def recorded_sync() -> None:
            sync()
            events.append("sync")

        monkeypatch.setattr(s._db, "sync_wal", recorded_sync)
        synced = record_fsyncs(monkeypatch)
        results, leases = await s.finish_and_claim(
            [Outcome.succeed(lease, ttl=60)], ClaimRequest("srv", ["default"], 2)
        )
        assert results == [True] and len(leases) == 2
        await s._db.run(lambda c: events.append("next"))
        assert events == ["sync", "next"]
        assert synced == [s._db.path + "-wal"]


async def test_no_wal_sync_under_synchronous_normal(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteStorage(db_path, synchronous="NORMAL") as s:
        await s.enqueue_many([Job("m") for _ in range(2)])
        (lease,) = await s.claim(ClaimRequest("srv", ["default"], 1))
        synced = record_fsyncs(monkeypatch)
        await s.finish_and_claim(
            [Outcome.succeed(lease, ttl=60)], ClaimRequest("srv", ["default"], 1)
        )
        await s._db.run(lambda c: None)
        assert synced == []


async def test_a_missing_wal_needs_no_sync(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with SqliteStorage(db_path) as s:
        await s.enqueue(Job("m"))
        await s._db.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        os.rename(db_path + "-wal", db_path + "-wal.moved")
        try:
            synced = record_fsyncs(monkeypatch)
            await s._db.run(lambda c: None, then=s._db.sync_wal)
            assert synced == []
        finally:
            os.rename(db_path + "-wal.moved", db_path + "-wal")
