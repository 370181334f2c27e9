"""Helpers of the retry, poison, deploy, shutdown and cleanup scenarios: worker
processes of another app, raw writes into a backend's storage, and state
histories read back from the storage."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from qml import Storage

from ..raw_writes import postgres_update, redis_hset, sqlite_update
from .harness import start_worker


def start_app_worker(
    app: str,
    storage_url: str,
    audit_dir: Path,
    *args: str,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``qml worker APP`` (a registry of :mod:`tests.chaos.jobs`) with extra CLI args."""
    return start_worker(storage_url, audit_dir, *args, log=log, app=app)


async def write_raw_args(storage: Storage, job_id: str, raw: bytes, field: str = "args") -> None:
    """Overwrite the stored arguments (or ``meta``) of a job with ``raw``, straight
    in the backend (SQL ``UPDATE`` / ``HSET``), bypassing every check of qml."""
    assert field in ("args", "meta")
    backend = storage.backend_name
    if backend == "sqlite":
        sql = f"UPDATE qml_jobs SET {field} = CAST(? AS TEXT) WHERE id = ?"
        n = sqlite_update(storage, sql, (raw, job_id))
    elif backend == "postgres":
        sql = f"UPDATE {{table}} SET {field} = $1::json WHERE id = $2"
        n = await postgres_update(storage, "", sql, raw.decode(), job_id)
    elif backend == "redis":
        key = storage.keys.job_key(job_id)  # type: ignore[attr-defined]
        n = await redis_hset(storage, key, field, raw)
    else:
        raise AssertionError(f"no raw write for {backend}")
    assert n == 1, f"job {job_id} not found in {backend}"


async def wait_ready(
    storage: Storage, procs: list[subprocess.Popen[bytes]], timeout: float = 60.0
) -> float:
    """Wait until every process has registered its server (its signal handlers
    are set by then); returns the time (monotonic) they were all seen."""
    deadline = time.monotonic() + timeout
    want = {p.pid for p in procs}
    while True:
        seen = {s.pid for s in await storage.list_servers()}
        if want <= seen:
            return time.monotonic()
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise AssertionError(f"worker(s) not ready: {want - seen}, exited: {dead}")
        await asyncio.sleep(0.05)


async def install_removal_log(storage: Storage) -> bool:
    """Log every row removed from the job table (id, state, expires_at and the
    time of removal) with a trigger, on the SQL backends; False elsewhere."""
    backend = storage.backend_name
    if backend == "sqlite":
        import sqlite3

        lite = sqlite3.connect(storage.path, timeout=30)  # type: ignore[attr-defined]
        try:
            with lite:
                lite.executescript(
                    """
                    CREATE TABLE IF NOT EXISTS chaos_removed
                        (id TEXT, state TEXT, expires_at REAL, at REAL);
                    CREATE TRIGGER IF NOT EXISTS chaos_removed AFTER DELETE ON qml_jobs
                    BEGIN
                        INSERT INTO chaos_removed VALUES (OLD.id, OLD.state, OLD.expires_at,
                            (julianday('now') - 2440587.5) * 86400.0);
                    END;
                    """
                )
        finally:
            lite.close()
        return True
    if backend == "postgres":
        import asyncpg

        from qml.storage.postgres import quote_ident

        cfg = storage.config  # type: ignore[attr-defined]
        schema = quote_ident(cfg.schema_name)
        table = f"{schema}.{quote_ident(cfg.table_name)}"
        con = await asyncpg.connect(cfg.database_url)
        try:
            await con.execute(
                f"""
                CREATE TABLE {schema}.chaos_removed
                    (id text, state text, expires_at timestamptz, at timestamptz);
                CREATE FUNCTION {schema}.chaos_removed() RETURNS trigger AS $$
                BEGIN
                    INSERT INTO {schema}.chaos_removed
                        VALUES (OLD.id, OLD.state::text, OLD.expires_at, clock_timestamp());
                    RETURN OLD;
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER chaos_removed AFTER DELETE ON {table}
                    FOR EACH ROW EXECUTE FUNCTION {schema}.chaos_removed();
                """
            )
        finally:
            await con.close()
        return True
    return False


async def removal_log(storage: Storage) -> list[tuple[str, str, float | None, float]]:
    """What :func:`install_removal_log` recorded: (id, state, expires_at, removed at)."""
    backend = storage.backend_name
    if backend == "sqlite":
        import sqlite3

        lite = sqlite3.connect(storage.path, timeout=30)  # type: ignore[attr-defined]
        try:
            return list(lite.execute("SELECT id, state, expires_at, at FROM chaos_removed"))
        finally:
            lite.close()
    import asyncpg

    from qml.storage.postgres import quote_ident

    cfg = storage.config  # type: ignore[attr-defined]
    con = await asyncpg.connect(cfg.database_url)
    try:
        rows = await con.fetch(
            f"SELECT id, state, expires_at, at FROM {quote_ident(cfg.schema_name)}.chaos_removed"
        )
    finally:
        await con.close()
    return [
        (r["id"], r["state"], r["expires_at"] and r["expires_at"].timestamp(), r["at"].timestamp())
        for r in rows
    ]
