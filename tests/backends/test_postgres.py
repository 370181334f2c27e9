"""PostgreSQL backend specifics (the shared behaviour is in tests/contract).

Each test works in schemas of its own, dropped afterwards. Nothing here waits
on a fixed sleep: wake-ups are asserted through the mechanism (a waiter with a
60 s timeout returns True because a NOTIFY arrived), never through timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from qml.errors import (
    ConfigurationError,
    DuplicateJobError,
    MigrationError,
    StorageError,
    StorageUnavailableError,
)
from qml.job import Job, JobState
from qml.storage.base import CAP_STORAGE_CLOCK, CAP_TRANSACTIONAL_ENQUEUE
from qml.storage.factory import StorageInstance
from qml.storage.postgres import PostgresConfig, PostgresStorage, quote_ident
from qml.storage.postgres.migrate import Migrator
from qml.storage.postgres.rows import finish_json
from qml.storage.postgres.sql import (
    Names,
    _split_queries,
    latest_version,
    migrations,
    named_queries,
)
from qml.storage.postgres.storage import STREAM_CHUNK
from qml.storage.requests import ClaimRequest, ErrorInfo, Outcome

pytestmark = pytest.mark.services

ERROR = ErrorInfo("ValueError", "boom")
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "qml" / "storage" / "postgres"


# ---------------------------------------------------------------------- fixtures
class Schemas:
    """Unique schema names for one test, dropped at teardown."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.names: list[str] = []
        self.storages: list[PostgresStorage] = []

    def new(self, name: str | None = None) -> str:
        name = name or f"t_pg_{uuid4().hex[:12]}"
        self.names.append(name)
        return name

    def config(self, schema: str | None = None, **kwargs: Any) -> PostgresConfig:
        kwargs.setdefault("min_connections", 1)
        kwargs.setdefault("max_connections", 4)
        return PostgresConfig(self.dsn, schema_name=schema or self.new(), **kwargs)

    async def storage(
        self, schema: str | None = None, *, opened: bool = True, **kwargs: Any
    ) -> PostgresStorage:
        storage = PostgresStorage(self.config(schema, **kwargs))
        self.storages.append(storage)
        if opened:
            await storage.open()
        return storage

    async def connect(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(self.dsn)

    async def cleanup(self) -> None:
        for storage in self.storages:
            await storage.close()
        conn = await self.connect()
        try:
            for name in self.names:
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[Schemas]:
    schemas = Schemas(postgres_dsn)
    try:
        yield schemas
    finally:
        await schemas.cleanup()


@pytest.fixture
async def storage(pg: Schemas) -> PostgresStorage:
    return await pg.storage()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds (a safety net for asynchronous effects)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- configuration
def test_config_from_env_url_and_fluent_setters() -> None:
    cfg = PostgresConfig.from_env(
        {
            "DATABASE_URL": "postgresql://app:secret@db:5433/jobs",
            "QML_MAX_CONNECTIONS": "20",
            "QML_MIN_CONNECTIONS": "2",
            "QML_AUTO_MIGRATE": "false",
        }
    )
    assert (cfg.max_connections, cfg.min_connections, cfg.auto_migrate) == (20, 2, False)
    assert "secret" not in repr(cfg) and "***" in repr(cfg)
    url = PostgresConfig.from_url(
        "postgresql://u@h/db?sslmode=disable&qml_schema=Jobs%20X&qml_table=t&qml_auto_migrate=0"
    )
    assert (url.schema_name, url.table_name, url.auto_migrate) == ("Jobs X", "t", False)
    assert url.database_url == "postgresql://u@h/db?sslmode=disable"
    fluent = (
        PostgresConfig()
        .with_database_url("postgres://x/y")
        .with_max_connections(50)
        .with_min_connections(5)
        .with_connect_timeout(3)
        .with_command_timeout(4)
        .with_schema_name("s")
        .with_table_name("t")
        .with_auto_migrate(False)
    )
    assert fluent == PostgresConfig("postgres://x/y", False, 50, 5, 3, 4, "s", "t")
    defaults = PostgresConfig()
    assert (defaults.auto_migrate, defaults.schema_name, defaults.table_name) == (
        True,
        "qml",
        "qml_jobs",
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"database_url": "mysql://x"},
        {"max_connections": 0},
        {"min_connections": 5, "max_connections": 2},
        {"connect_timeout": 0},
        {"command_timeout": float("nan")},
        {"schema_name": ""},
        {"schema_name": "a\x00b"},
        {"table_name": "t" * 41},
        {"table_name": "x$qml$y"},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PostgresConfig(**kwargs)


@pytest.mark.parametrize(
    "env",
    [{"QML_MAX_CONNECTIONS": "many"}, {"QML_AUTO_MIGRATE": "maybe"}, {"DATABASE_URL": "redis://x"}],
)
def test_config_rejects_bad_environment(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        PostgresConfig.from_env(env)


def test_importing_qml_does_not_import_asyncpg() -> None:
    code = (
        "import sys, qml, qml.storage, qml.storage.factory\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_driver_names_the_extra() -> None:
    code = (
        "import sys\nsys.modules['asyncpg'] = None\n"
        "from qml.errors import MissingDependencyError\n"
        "try:\n    import qml.storage.postgres\nexcept MissingDependencyError as e:\n"
        '    assert "qml-jobs[postgres]" in str(e), e\nelse:\n    raise SystemExit(1)\n'
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_named_query_is_used_and_every_placeholder_known() -> None:
    source = "\n".join(p.read_text() for p in PACKAGE.glob("*.py"))
    unused = [n for n in named_queries() if f'"{n}"' not in source]
    assert not unused, f"queries.sql has unused queries: {unused}"
    names = Names("s", "t")
    for text in [
        *named_queries().values(),
        *(m.sql for m in migrations()),
        (PACKAGE / "install.sql").read_text(),
    ]:
        assert "{{" not in names.render(text)


def test_queries_share_parts_written_into_them() -> None:
    text = (
        "-- part: rows\n-- a comment\nt AS (SELECT 1 AS x)\n\n"
        "-- name: one\nWITH {{part_rows}} SELECT x FROM t\n\n"
        "-- name: two\nWITH {{part_rows}}, u AS ({{query_one}}) SELECT * FROM u\n"
    )
    assert _split_queries(text) == {
        "one": "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
        "two": "WITH t AS (SELECT 1 AS x), u AS (WITH t AS (SELECT 1 AS x) SELECT x FROM t)"
        " SELECT * FROM u",
    }
    with pytest.raises(ValueError, match="parts no query uses"):
        _split_queries("-- part: rows\nt AS (SELECT 1)\n-- name: one\nSELECT 1\n")
    with pytest.raises(ValueError, match="part 'rows' is defined twice"):
        _split_queries("-- part: rows\nx\n-- part: rows\ny\n-- name: one\n{{part_rows}}\n")


def test_backend_declares_its_capabilities() -> None:
    caps = PostgresStorage.capabilities
    assert {CAP_TRANSACTIONAL_ENQUEUE, CAP_STORAGE_CLOCK} <= caps
    assert PostgresStorage.backend_name == "postgres"


# ---------------------------------------------------------------------- schema
CATALOG = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' '
       || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || coalesce(co.collname, '')
       || ' #' || a.attnum
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
UNION ALL
SELECT 'relation', c.relname,
       c.relkind::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'i', 'S')
UNION ALL
SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
UNION ALL
SELECT 'index', i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND NOT t.tgisinternal
UNION ALL
SELECT 'function', p.proname, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
UNION ALL
SELECT 'enum', t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 GROUP BY t.typname
UNION ALL
SELECT 'comment', coalesce(c.relname, p.proname, t.typname) || '.' || d.objsubid, d.description
FROM pg_description d
LEFT JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
LEFT JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND p.oid = d.objoid
LEFT JOIN pg_type t ON d.classoid = 'pg_type'::regclass AND t.oid = d.objoid
JOIN pg_namespace n ON n.oid = coalesce(c.relnamespace, p.pronamespace, t.typnamespace)
WHERE n.nspname = $1
"""


async def catalog(conn: asyncpg.Connection[Any], schema: str) -> list[tuple[str, str, str]]:
    """The schema's objects as text, with its own name and NOTIFY channel masked."""
    channel = Names(schema, "qml_jobs").channel
    rows = await conn.fetch(CATALOG, schema)
    return sorted(
        (r[0], r[1], r[2].replace(schema, "<schema>").replace(channel, "<channel>")) for r in rows
    )


async def test_migrations_add_up_to_install_sql(pg: Schemas) -> None:
    a, b = pg.new(f"t_pg_a{uuid4().hex[:10]}"), pg.new(f"t_pg_b{uuid4().hex[:10]}")
    conn = await pg.connect()
    try:
        every = list(range(1, latest_version() + 1))
        assert await Migrator(Names(a, "qml_jobs")).migrate(conn) == every
        assert await Migrator(Names(b, "qml_jobs")).migrate(conn, use_install_script=False) == every
        installed, migrated = await catalog(conn, a), await catalog(conn, b)
        assert len(installed) > 100
        assert installed == migrated
        assert (
            await conn.fetchval(f"SELECT count(*) FROM {quote_ident(a)}.qml_jobs_migrations")
            == latest_version()
        )
    finally:
        await conn.close()


async def test_every_table_and_column_has_a_comment(storage: PostgresStorage) -> None:
    conn = await asyncpg.connect(storage.config.database_url)
    try:
        missing = await conn.fetch(
            """SELECT c.relname, a.attname FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                    AND NOT a.attisdropped
               WHERE n.nspname = $1 AND c.relkind = 'r'
                 AND col_description(c.oid, a.attnum) IS NULL
               UNION ALL
               SELECT c.relname, NULL FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relkind = 'r' AND obj_description(c.oid) IS NULL
               UNION ALL
               SELECT p.proname, NULL FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = $1 AND obj_description(p.oid) IS NULL""",
            storage.names.schema,
        )
        assert [tuple(r) for r in missing] == []
    finally:
        await conn.close()


async def test_eight_concurrent_migrations_install_once(pg: Schemas) -> None:
    schema = pg.new()
    storages = [
        await pg.storage(
            schema, opened=False, auto_migrate=False, min_connections=0, max_connections=1
        )
        for _ in range(8)
    ]
    results = await asyncio.gather(*(s.migrate() for s in storages))
    every = list(range(1, latest_version() + 1))
    assert sorted(results) == [[]] * 7 + [every]
    conn = await pg.connect()
    try:
        rows = await conn.fetch(
            f"SELECT version FROM {quote_ident(schema)}.qml_jobs_migrations ORDER BY 1"
        )
        assert [r[0] for r in rows] == every
    finally:
        await conn.close()
    assert all([await s.schema_exists() for s in storages])
    assert not await storages[0].migrate_if_needed()


async def test_an_old_schema_is_upgraded_in_order(pg: Schemas) -> None:
    schema = pg.new()
    conn = await pg.connect()
    try:
        assert await Migrator(Names(schema, "qml_jobs")).migrate(conn, target=1) == [1]
    finally:
        await conn.close()
    storage = await pg.storage(schema, opened=False, auto_migrate=False)
    assert (await storage.schema_status()).current == 1
    assert not (await storage.schema_status()).up_to_date
    assert await storage.migrate_if_needed() is True
    assert (await storage.schema_status()).versions == tuple(range(1, latest_version() + 1))
    assert await storage.migrate_if_needed() is False


async def test_without_auto_migrate_nothing_is_installed(
    pg: Schemas, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await pg.storage(auto_migrate=False)
    assert "call migrate()" in caplog.text
    assert not await storage.schema_exists()
    with pytest.raises(MigrationError, match="migrate"):
        await storage.enqueue(Job("m"))
    assert await storage.migrate() == list(range(1, latest_version() + 1))
    assert await storage.schema_exists()
    await storage.enqueue(Job("m"))
    assert await storage.get_job_count("default") == 1


async def test_a_newer_or_foreign_schema_is_refused(pg: Schemas) -> None:
    newer, foreign = pg.new(), pg.new()
    conn = await pg.connect()
    try:
        await Migrator(Names(newer, "qml_jobs")).migrate(conn)
        await conn.execute(
            f"INSERT INTO {quote_ident(newer)}.qml_jobs_migrations VALUES (999, 'future')"
        )
        await conn.execute(
            f"CREATE SCHEMA {quote_ident(foreign)}; "
            f"CREATE TABLE {quote_ident(foreign)}.qml_jobs (x int)"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="newer"):
        await (await pg.storage(newer, opened=False, auto_migrate=False)).migrate()
    with pytest.raises(MigrationError, match="not a qml table"):
        await pg.storage(foreign)


ODD = ['Odd "Schéma"; DROP TABLE x; --', "jobs-$1 'T' \"q\""]


async def test_custom_schema_and_table_names_with_odd_characters(pg: Schemas) -> None:
    schema = pg.new(ODD[0] + uuid4().hex[:6])
    storage = await pg.storage(schema, table_name=ODD[1])
    job_id = await storage.enqueue(Job("m", {"x": 1}, queue="q"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["q"], 5))
    await storage.complete(lease, {"ok": True})
    assert (await storage.get_job(job_id)).state is JobState.SUCCEEDED
    assert await storage.count(JobState.SUCCEEDED) == 1
    conn = await pg.connect()
    try:
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            schema,
        )
        assert ODD[1] in [r[0] for r in tables]
        assert all(r[0].startswith(ODD[1]) for r in tables)
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'x'") == 0
    finally:
        await conn.close()


# ---------------------------------------------------------------------- transactional enqueue
async def test_transactional_enqueue_commits_or_rolls_back_with_the_caller(
    pg: Schemas, storage: PostgresStorage
) -> None:
    conn = await pg.connect()
    try:
        rolled_back = Job("m", {"n": 1})
        tx = conn.transaction()
        await tx.start()
        await storage.enqueue(rolled_back, connection=conn)
        seen = await conn.fetchval(f"SELECT count(*) FROM {storage.names.qualified_table}")
        await tx.rollback()  # the caller's own work failed
        assert seen == 1
        assert await storage.get(rolled_back.id) is None
        assert await storage.claim(ClaimRequest("srv", ["default"], 10)) == []

        committed = Job("m", {"n": 2}, dedup_key="k")
        async with conn.transaction():
            await storage.enqueue(committed, connection=conn)
            assert await storage.get(committed.id) is None  # not visible before commit
            with pytest.raises(DuplicateJobError):  # a savepoint keeps the transaction usable
                await storage.enqueue(Job("m", dedup_key="k"), connection=conn)
            await conn.execute("SELECT 1")
        (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 10))
        assert lease.job_id == committed.id
        assert await storage.get_job_count("default") == 1
    finally:
        await conn.close()
    with pytest.raises(ConfigurationError):
        await storage.enqueue(Job("m"), connection=object())


# ---------------------------------------------------------------------- streamed enqueue
def _qualified(storage: PostgresStorage, suffix: str) -> str:
    return f"{quote_ident(storage.names.schema)}.{quote_ident(storage.names.table + suffix)}"


async def test_a_long_batch_is_one_transaction_of_chunks_with_one_timestamp(
    pg: Schemas, storage: PostgresStorage
) -> None:
    n = 2 * STREAM_CHUNK + 50
    ids = await storage.enqueue_many(Job("m", {"i": i}) for i in range(n))
    conn = await pg.connect()
    try:
        rows = await conn.fetch(
            f"SELECT xmin::text AS tx, created_at, enqueued_at, history::text AS h "
            f"FROM {storage.names.qualified_table} WHERE id = ANY($1::text[])",
            ids,
        )
        # one statement per chunk: the insert trigger counts each statement's rows
        deltas = await conn.fetch(f"SELECT n FROM {_qualified(storage, '_count_deltas')}")
    finally:
        await conn.close()
    assert len(rows) == n
    assert len({r["tx"] for r in rows}) == 1
    assert len({(r["created_at"], r["enqueued_at"], r["h"]) for r in rows}) == 1
    assert sorted(r["n"] for r in deltas) == [50, STREAM_CHUNK, STREAM_CHUNK]
    assert await storage.count(JobState.ENQUEUED) == n


async def test_a_long_batch_cancelled_anywhere_is_all_or_nothing(
    storage: PostgresStorage,
) -> None:
    # Cancelled after a growing wait: before the transaction, during it with a
    # statement in flight, during its COMMIT, or after it. A cancellation that
    # lands during the COMMIT may find it done (the caller cannot tell, as for
    # any statement cut on the wire), so each batch is checked for all or
    # nothing by the count, and a batch that returned must be stored whole.
    n = 2 * STREAM_CHUNK + 10
    stored = cut = 0
    for wait in range(60):
        task = asyncio.create_task(storage.enqueue_many(Job("m", {"i": i}) for i in range(n)))
        await asyncio.sleep(wait / 5000)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        added = await storage.count() - stored
        assert added in (0, n)
        assert task.cancelled() or added == n
        stored += added
        cut += added == 0
    assert cut  # some were cut
    ids = await storage.enqueue_many(Job("m") for _ in range(STREAM_CHUNK + 1))
    assert await storage.count() == stored + len(ids)


async def test_a_long_batch_rolled_back_by_a_deadlock_is_sent_again_whole(
    pg: Schemas, storage: PostgresStorage, caplog: pytest.LogCaptureFixture
) -> None:
    # Another transaction holds the dedup key of the second chunk, then asks for
    # the first chunk's: PostgreSQL rolls the batch back to break the cycle, and
    # the batch is sent again, every chunk of it, once the other one is gone.
    jobs = [Job("m", {"i": i}) for i in range(2 * STREAM_CHUNK + 10)]
    jobs[3].dedup_key = "first"
    jobs[STREAM_CHUNK + 5].dedup_key = "second"
    dedup = _qualified(storage, "_dedup")
    other = await pg.connect()
    watch = await pg.connect()
    try:
        await other.execute("SET deadlock_timeout = '60s'")  # the batch finds the cycle
        tx = other.transaction()
        await tx.start()
        await other.execute(f"INSERT INTO {dedup} VALUES ('second', 'x', now())")
        batch = asyncio.create_task(storage.enqueue_many(iter(jobs)))

        async def batch_waits() -> bool:
            return bool(
                await watch.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND pid = ANY($1::int[])",
                    list(storage._own_pids),
                )
            )

        await until(batch_waits)
        # completes the cycle; returns once the batch has been rolled back
        await other.execute(f"INSERT INTO {dedup} VALUES ('first', 'x', now())")
        await tx.rollback()
        ids = await batch
    finally:
        await other.close()
        await watch.close()
    assert ids == [j.id for j in jobs]
    assert await storage.count() == len(jobs)
    assert (await storage.get_job(jobs[-1].id)).args == {"i": len(jobs) - 1}
    assert "retrying enqueue" in caplog.text


# ---------------------------------------------------------------------- wake-up
async def test_an_idle_waiter_is_woken_by_notify_from_another_process(
    pg: Schemas, storage: PostgresStorage
) -> None:
    other = await pg.storage(storage.names.schema)  # a second handle: its own connections
    await storage.listen()
    assert storage.listener is not None and storage.listener.connected
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    await asyncio.sleep(0)
    await other.enqueue(Job("m"))
    assert await asyncio.wait_for(waiter, 30) is True
    assert storage.listener.received >= 1

    # A job enqueued in a caller's transaction wakes servers at commit.
    received = storage.listener.received
    conn = await pg.connect()
    try:
        waiter = asyncio.create_task(storage.wait_for_work(60.0))
        async with conn.transaction():
            await storage.enqueue(Job("m"), connection=conn)
        assert await asyncio.wait_for(waiter, 30) is True
        assert storage.listener.received > received
    finally:
        await conn.close()


async def test_due_jobs_and_resumed_queues_notify(pg: Schemas, storage: PostgresStorage) -> None:
    other = await pg.storage(storage.names.schema)
    await storage.listen()
    assert storage.listener is not None
    await storage.pause_queue("q")
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    await other.resume_queue("q")
    assert await asyncio.wait_for(waiter, 30) is True

    await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("s", ["default"], 1))
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    assert await other.finish([Outcome.release(lease)]) == [True]
    assert await asyncio.wait_for(waiter, 30) is True


async def test_own_writes_wake_local_waiters_and_own_notifies_are_ignored(
    storage: PostgresStorage,
) -> None:
    await storage.listen()
    assert storage.listener is not None
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    await asyncio.sleep(0)
    await storage.enqueue(Job("m"))
    assert await asyncio.wait_for(waiter, 30) is True
    assert storage.listener.received == 0
    assert await storage.wait_for_work(0.05) is False


async def test_the_listener_reconnects_by_itself(pg: Schemas, storage: PostgresStorage) -> None:
    await storage.listen()
    listener = storage.listener
    assert listener is not None and listener.server_pid is not None
    conn = await pg.connect()
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", listener.server_pid)
    finally:
        await conn.close()

    async def reconnected() -> bool:
        return listener.connections >= 2 and listener.connected

    await until(reconnected)
    other = await pg.storage(storage.names.schema)
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    await asyncio.sleep(0)
    await other.enqueue(Job("m"))
    assert await asyncio.wait_for(waiter, 30) is True


# ---------------------------------------------------------------------- query plans
async def plan(storage: PostgresStorage, name: str, *args: Any) -> str:
    conn = await asyncpg.connect(storage.config.database_url)
    try:
        rows = await conn.fetch("EXPLAIN " + storage._q[name], *args)
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.close()


async def test_hot_queries_use_their_indexes(storage: PostgresStorage) -> None:
    queues = [f"q{i}" for i in range(20)]
    await storage.enqueue_many([Job("m", queue=q) for q in queues for _ in range(50)])
    while done := await storage.claim(ClaimRequest("srv", queues, 1000)):
        await storage.finish([Outcome.succeed(x, ttl=60) for x in done])
    conn = await asyncpg.connect(storage.config.database_url)
    try:  # statistics of an emptied queue: nothing Enqueued, nothing Processing
        await conn.execute(f"ANALYZE {storage.names.qualified_table}")
    finally:
        await conn.close()
    await storage.enqueue_many([Job("m", {"i": i}, queue=f"q{i % 20}") for i in range(20000)])
    leases = await storage.claim(ClaimRequest("srv", queues, 1000))
    await storage.finish(
        [Outcome.succeed(x, ttl=60) for x in leases[:300]]
        + [Outcome.retry(x, ERROR, delay=60) for x in leases[300:600]]
    )
    for suspects in (None, 1):
        claim = await plan(storage, "claim", "srv", ["q1", "q2"], 10, None, 30.0, suspects, 2, None)
        assert "Index Scan using qml_jobs_claim_idx" in claim, claim
        assert re.search(r"Seq Scan on qml_jobs\b", claim) is None, claim
        assert "qml_jobs_state_idx" not in claim, claim
        if suspects is not None:  # the few suspects a claim may take: on their own index
            assert "qml_jobs_suspects_idx" in claim, claim
    park = await plan(
        storage, "park", "srv", ["q1"], 10, None, 30.0, 1, 2, ["t"] * 10, "p.1", "ch", 1.0
    )
    assert "Index Scan using qml_jobs_claim_idx" in park, park
    # the jobs handed to a parking, read by their tokens: among the Processing ones
    handed = await plan(storage, "handed", ["t1", "t2"])
    assert "qml_jobs_lease_idx" in handed, handed
    # Periodic services select through their partial indexes.
    for name, args, index in [
        ("activate_due", (None, 100), "qml_jobs_due_idx"),
        ("recover_expired", (None, 100, 3, 1.0, "worker_crashed", 60.0), "qml_jobs_lease_idx"),
        ("delete_expired", (None, 100), "qml_jobs_expiry_idx"),
    ]:
        text = await plan(storage, name, *args)
        assert f"Index Scan using {index}" in text, (name, text)
    # Guarded batch writes find their rows by primary key, never by scanning
    # every row of a state (the statistics above say nothing is Processing).
    held = leases[600:700]
    ids, tokens = [x.job_id for x in held], [x.token for x in held]
    writes: list[tuple[str, tuple[Any, ...]]] = [
        ("finish", (finish_json([Outcome.succeed(x, ttl=60) for x in held]), None)),
        ("extend_leases", (ids, tokens, 30.0, None)),
        ("transition_many", (ids, "deleted", ["failed"], None, 60.0, False, None, None)),
    ]
    for name, params in writes:
        text = await plan(storage, name, *params)
        assert "Index Scan using qml_jobs_pkey" in text, (name, text)
        assert re.search(r"qml_jobs_(state|lease)_idx", text) is None, (name, text)


# ---------------------------------------------------------------------- errors
async def test_unreachable_server_is_storage_unavailable() -> None:
    storage = PostgresStorage(
        PostgresConfig("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    )
    with pytest.raises(StorageUnavailableError) as info:
        await storage.open()
    assert isinstance(info.value.__cause__, OSError | asyncpg.PostgresError)
    await storage.close()


async def test_driver_errors_are_translated(pg: Schemas, storage: PostgresStorage) -> None:
    missing_db = PostgresStorage(
        PostgresConfig(pg.dsn.rsplit("/", 1)[0] + "/qml_no_such_db", connect_timeout=5)
    )
    with pytest.raises(StorageError) as info:
        await missing_db.open()
    assert isinstance(info.value.__cause__, asyncpg.PostgresError)
    await missing_db.close()

    job_id = await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    conn = await pg.connect()
    try:  # a lock held elsewhere outlasts the command timeout
        slow = await pg.storage(storage.names.schema, command_timeout=0.5)
        async with conn.transaction():
            await conn.execute(
                f"SELECT 1 FROM {storage.names.qualified_table} WHERE id = $1 FOR UPDATE", job_id
            )
            with pytest.raises(StorageUnavailableError) as timeout:
                await slow.request_cancel(job_id)
        assert timeout.value.__cause__ is not None
        await conn.execute(f"DROP SCHEMA {quote_ident(storage.names.schema)} CASCADE")
    finally:
        await conn.close()
    with pytest.raises(MigrationError):
        await storage.complete(lease)


async def test_reads_are_retried_after_a_lost_connection(
    pg: Schemas, storage: PostgresStorage
) -> None:
    job_id = await storage.enqueue(Job("m"))
    conn = await pg.connect()
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'qml' AND pid = ANY($1::int[])",
            list(storage._own_pids),
        )
        assert killed >= 1
    finally:
        await conn.close()
    assert (await storage.get_job(job_id)).id == job_id


async def test_a_finish_retried_after_a_lost_connection_keeps_its_write(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    real_fetch = asyncpg.connection.Connection.fetch
    lost: list[str] = []

    async def fetch_then_lose(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        rows = await real_fetch(self, query, *args, **kwargs)
        if query == storage._q["finish"] and not lost:
            lost.append(query)  # the statement committed, but its reply never arrives
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection lost")
        return rows

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", fetch_then_lose)
    assert await storage.finish([Outcome.succeed(lease, {"r": 1}, ttl=60)]) == [True]
    assert lost
    job = await storage.get_job(job_id)
    assert job.state is JobState.SUCCEEDED and job.result == {"r": 1}
    assert [c.state for c in job.history].count(JobState.SUCCEEDED) == 1


# ---------------------------------------------------------------------- misc
async def test_counts_survive_compaction(storage: PostgresStorage) -> None:
    await storage.enqueue_many([Job("m", queue=q) for q in ("a", "b", "b")])
    await storage.claim(ClaimRequest("srv", ["b"], 1))
    storage._last_compact = 0.0
    assert await storage.count(queue="b") == 2
    assert await storage.count(JobState.PROCESSING) == 1
    conn = await asyncpg.connect(storage.config.database_url)
    try:
        deltas = await conn.fetchval(
            storage.names.render("SELECT count(*) FROM {{schema}}.{{table_count_deltas}}")
        )
        assert deltas == 0
    finally:
        await conn.close()
    assert await storage.get_job_count("b") == 2
    assert await storage.get_job_count("nope") == 0


async def test_open_logs_the_durability_setting(
    pg: Schemas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qml.storage.postgres")
    storage = await pg.storage()
    assert storage.synchronous_commit
    assert f"synchronous_commit={storage.synchronous_commit}" in caplog.text


async def test_storage_instance_builds_postgres_from_a_url(pg: Schemas) -> None:
    schema = pg.new()
    storage = await StorageInstance.from_url(f"{pg.dsn}?qml_schema={schema}")
    try:
        assert isinstance(storage, PostgresStorage)
        assert storage.names.schema == schema and await storage.schema_exists()
    finally:
        await storage.close()
    other = await StorageInstance.postgres(pg.config(schema))
    try:
        assert await other.schema_exists()
    finally:
        await other.close()


async def test_naive_times_mean_utc(storage: PostgresStorage) -> None:
    """As in the core (``ensure_aware``), whatever the host's time zone."""
    aware = datetime.now(UTC).replace(microsecond=0)
    naive = aware.replace(tzinfo=None)
    await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1, 30.0, naive))
    assert lease.expires_at == aware + timedelta(seconds=30)
    (reply,) = await storage.extend_leases([(lease.job_id, lease.token)], 60.0, naive)
    assert reply.expires_at == aware + timedelta(seconds=60)


async def test_a_url_is_a_config_and_enqueue_in_a_transaction_opens_the_storage(
    pg: Schemas,
) -> None:
    schema = pg.new()
    storage = PostgresStorage(f"{pg.dsn}?qml_schema={schema}")
    pg.storages.append(storage)
    assert storage.names.schema == schema
    conn = await pg.connect()
    try:
        async with conn.transaction():  # the schema is installed on first use
            job_id = await storage.enqueue(Job("m"), connection=conn)
    finally:
        await conn.close()
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED


async def test_claim_and_finish_lanes_reconnect_after_a_cut(
    pg: Schemas, storage: PostgresStorage
) -> None:
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    assert await storage.finish([Outcome.succeed(lease, {"r": 0}, ttl=60)]) == [True]
    lanes = [storage._lanes[name] for name in ("claim", "finish")]
    pids = [lane._conn.get_server_pid() for lane in lanes if lane._conn is not None]
    assert len(pids) == 2 and set(pids) <= storage._own_pids  # NOTIFYs from them are ours
    conn = await pg.connect()
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid = ANY($1::int[])",
            pids,
        )
        assert killed == 2
    finally:
        await conn.close()
    deadline = time.monotonic() + 10  # safety net: the close reaches the client
    while not all(lane._conn is None or lane._conn.is_closed() for lane in lanes):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # The first calls after the cut succeed on fresh connections.
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    assert lease.job.state is JobState.PROCESSING and lease.job.attempts == 1
    assert await storage.finish([Outcome.succeed(lease, {"r": 1}, ttl=60)]) == [True]
    assert (await storage.get_job(lease.job_id)).result == {"r": 1}
    assert all(lane._conn is not None and lane._conn.get_server_pid() not in pids for lane in lanes)


async def test_a_claim_cancelled_mid_call_drops_its_connection(storage: PostgresStorage) -> None:
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(2000)])
    (first,) = await storage.claim(ClaimRequest("srv", ["default"], 1))  # opens the lane
    lane = storage._lanes["claim"]
    old = lane._conn
    big = asyncio.create_task(storage.claim(ClaimRequest("srv", ["default"], 1500)))
    while not lane.busy:  # wait until it is sent
        await asyncio.sleep(0)
    await asyncio.sleep(0.002)
    big.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await big
    leases = await storage.claim(ClaimRequest("srv", ["default"], 2))
    assert len(leases) == 2 and first.job_id not in {lease.job_id for lease in leases}
    assert old is not None and old.is_closed() and lane._conn is not old
    outcomes = [Outcome.succeed(lease, None, ttl=60) for lease in (first, *leases)]
    assert await storage.finish(outcomes) == [True, True, True]
    assert await storage.count(state=JobState.SUCCEEDED) == 3
    processing = await storage.count(state=JobState.PROCESSING)
    assert processing in (0, 1500)  # the cancelled claim committed whole or not at all
    assert processing + await storage.count(state=JobState.ENQUEUED) == 1997


async def test_concurrent_claims_and_finishes_share_the_lanes(storage: PostgresStorage) -> None:
    await asyncio.gather(
        *(
            storage.enqueue_many([Job("m", {"i": i}) for i in range(n, n + 4)])
            for n in range(0, 40, 4)
        )
    )  # one on the enqueue lane, the others on the pool
    batches = await asyncio.gather(
        *(storage.claim(ClaimRequest("srv", ["default"], 4)) for _ in range(10))
    )  # one on the lane, the others on the pool
    leases = [lease for batch in batches for lease in batch]
    assert len({lease.job_id for lease in leases}) == 40
    replies = await asyncio.gather(
        *(storage.finish([Outcome.succeed(lease, {"i": n}, ttl=60)]) for n, lease in
          enumerate(leases))
    )  # fmt: skip
    assert replies == [[True]] * 40
    assert await storage.count(state=JobState.SUCCEEDED) == 40


@pytest.mark.parametrize("durable", [True, False])
async def test_claims_wait_for_their_wal_flush_unless_durable_claims_is_off(
    pg: Schemas, durable: bool
) -> None:
    storage = await pg.storage(pg.new(), durable_claims=durable)
    await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    await storage.finish([Outcome.succeed(lease, None, ttl=60)])
    setting = {
        name: await lane._conn.fetchval("SHOW synchronous_commit")
        for name, lane in storage._lanes.items()
        if lane._conn is not None
    }
    default = await storage._run(lambda c: c.fetchval("SHOW synchronous_commit"), action="t")
    assert default == storage.synchronous_commit
    # off: the outcome's commit flushes the WAL up to it, the claim's with it
    claim = default if durable else "off"
    assert setting == {"claim": claim, "enqueue": default, "finish": default}


def test_durable_claims_is_a_config_and_url_option() -> None:
    assert PostgresConfig().durable_claims is True
    url = "postgresql://h/db?qml_durable_claims=0"
    assert PostgresConfig.from_url(url).durable_claims is False
    assert PostgresConfig().with_durable_claims(False).durable_claims is False
    with pytest.raises(ConfigurationError, match="qml_durable_claims"):
        PostgresConfig.from_url("postgresql://h/db?qml_durable_claims=maybe")
    with pytest.raises(ConfigurationError, match="durable_claims"):
        PostgresConfig(durable_claims="no")  # type: ignore[arg-type]


async def test_closing_the_storage_closes_its_lanes(storage: PostgresStorage) -> None:
    await storage.enqueue(Job("m"))
    (lease,) = await storage.claim(ClaimRequest("srv", ["default"], 1))
    await storage.finish([Outcome.succeed(lease, None, ttl=60)])
    assert sorted(storage._lanes) == ["claim", "enqueue", "finish"]
    conns = [lane._conn for lane in storage._lanes.values()]
    await storage.close()
    assert all(c is not None and c.is_closed() for c in conns)


# ---------------------------------------------------------------------- vacuum assist
async def vacuum_count(storage: PostgresStorage) -> int:
    conn = await asyncpg.connect(storage.config.database_url)
    try:
        n = await conn.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
            storage.config.schema_name,
            storage.config.table_name,
        )
        return int(n or 0)
    finally:
        await conn.close()


async def drain_all(storage: PostgresStorage, n: int) -> None:
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(n)])
    while leases := await storage.claim(ClaimRequest("srv", ["default"], 50)):
        await storage.finish([Outcome.succeed(x, ttl=60) for x in leases])


async def test_claims_trigger_a_vacuum_of_the_job_table(pg: Schemas) -> None:
    """Claims leave dead entries at the front of the claim index, where the next
    claims start; after every ``vacuum_every`` claimed jobs the table is vacuumed."""
    storage = await pg.storage(vacuum_every=100)
    for n in (1, 2):
        await drain_all(storage, 150)

        async def vacuumed(n: int = n) -> bool:
            return storage.vacuums >= n and await vacuum_count(storage) >= n

        await until(vacuumed, timeout=60)


async def test_no_vacuum_when_vacuum_every_is_0(pg: Schemas) -> None:
    storage = await pg.storage(vacuum_every=0)
    await drain_all(storage, 120)
    assert storage.vacuums == 0
    assert await vacuum_count(storage) == 0


def test_vacuum_every_is_checked_and_read_from_the_url() -> None:
    cfg = PostgresConfig.from_url("postgresql://u@h/db?qml_vacuum_every=5000&sslmode=disable")
    assert cfg.vacuum_every == 5000
    assert cfg.database_url == "postgresql://u@h/db?sslmode=disable"
    assert PostgresConfig("postgresql://u@h/db").vacuum_every == 20_000
    with pytest.raises(ConfigurationError, match="vacuum_every"):
        PostgresConfig("postgresql://u@h/db", vacuum_every=-1)


async def test_only_a_storage_that_waits_for_work_listens(
    pg: Schemas, storage: PostgresStorage
) -> None:
    other = await pg.storage(storage.names.schema)
    await other.enqueue(Job("m"))  # before anyone listens
    await storage.enqueue(Job("m"))
    assert not _listening(storage) and other.listener is None
    # The first wait starts listening, then finds the jobs whose NOTIFY went out
    # before the LISTEN: it returns at once, they do not wait for a poll.
    assert await asyncio.wait_for(storage.wait_for_work(3600.0), 30) is True
    assert _listening(storage)
    assert len(await storage.claim(ClaimRequest("s", ["default"], 10))) == 2
    assert await storage.wait_for_work(0.05) is False  # now it waits
    waiter = asyncio.create_task(storage.wait_for_work(60.0))
    await asyncio.sleep(0)
    await other.enqueue(Job("m"))
    assert await asyncio.wait_for(waiter, 30) is True
    assert other.listener is None
    assert await storage.listen() is False  # already listening


def _listening(storage: PostgresStorage) -> bool:
    listener = storage.listener
    return listener is not None and listener.connected
