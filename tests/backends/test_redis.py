"""RedisStorage beyond the contract suite: isolation, key layout, scripts,
startup guards, restarts, wake-up mechanism, error translation.

Tests use the shared test Redis (``redis_url``) with a fresh key prefix, or a
``redis-server`` they start themselves on a free port in a temp dir when
they need particular settings or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from qml.errors import (
    ConfigurationError,
    DuplicateJobError,
    StorageError,
    StorageUnavailableError,
)
from qml.job import Job, JobState
from qml.serialization import CorruptPayload
from qml.storage.redis import RedisConfig, RedisStorage
from qml.storage.redis.codec import JOB_FIELDS
from qml.storage.redis.errors import text
from qml.storage.redis.keys import LAYOUT, RedisKeys, lua_prelude
from qml.storage.redis.scripts import LIBRARY_NAME, NAMES, READ_ONLY, SCRIPTS, executor
from qml.storage.requests import (
    ClaimRequest,
    ErrorInfo,
    JobQuery,
    Outcome,
    RecurringTemplate,
    ServerInfo,
)

pytestmark = pytest.mark.services

SCRIPT_DIR = Path(__file__).resolve().parents[2] / "src/qml/storage/redis/scripts"
ERROR = ErrorInfo("ValueError", "boom", None)


# ---------------------------------------------------------------------- helpers
def _need_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("QML_REQUIRE_SERVICES", "") == "1":
            pytest.fail("redis-server is required (QML_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip("redis-server is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sync_client(port: int, timeout: float) -> redis.Redis:
    """A client that fails at once instead of retrying (the server is starting or going)."""
    return redis.Redis(port=port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


class RedisServer:
    """A redis-server this test owns: its port, its directory, its settings."""

    def __init__(self, binary: str, directory: Path, args: tuple[str, ...]) -> None:
        self.binary = binary
        self.dir = directory
        self.args = args
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                with _sync_client(self.port, 1) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {(self.dir / 'redis.log').read_text()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE: what survives is what the append-only file holds."""
        if self.proc is None:
            return
        try:
            with _sync_client(self.port, 5) as client:
                client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # the server closes the connection as it exits
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        self.proc = None


ServerMaker = Callable[..., RedisServer]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ServerMaker]:
    """Start redis-servers with given settings; all stopped after the test."""
    binary = _need_redis_server()
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis-{len(servers)}", args)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


OpenStorage = Callable[..., Awaitable[RedisStorage]]


@pytest.fixture
async def open_storage(redis_url: str) -> AsyncIterator[OpenStorage]:
    """Open storages (on the shared Redis unless ``url`` is given); a fresh
    prefix unless ``prefix`` is given. All closed and purged afterwards."""
    opened: list[RedisStorage] = []

    async def make(
        prefix: str | None = None, url: str | None = None, **kwargs: Any
    ) -> RedisStorage:
        config = RedisConfig(url=url or redis_url, key_prefix=prefix or f"tr{uuid4().hex[:12]}",
                             command_timeout=10.0)  # fmt: skip
        storage = RedisStorage(config, **kwargs)
        await storage.open()
        opened.append(storage)
        return storage

    yield make
    for storage in opened:
        with contextlib.suppress(StorageError):  # its own server may be gone already
            await storage.purge()
        await storage.close()


async def workload(storage: RedisStorage, tag: str) -> list[str]:
    """Touch every structure of the layout; returns the ids enqueued."""
    soon = storage.clock.now() + timedelta(minutes=5)
    ids = await storage.enqueue_many([
        Job("m", {"tag": tag, "i": i}, queue=f"q-{tag}", priority=i % 3,
            dedup_key=f"d-{tag}-{i}" if i % 2 else None)
        for i in range(6)
    ])  # fmt: skip
    ids.append(await storage.enqueue(Job("m", {"later": tag}, queue=f"q-{tag}", run_at=soon)))
    leases = await storage.claim(ClaimRequest(f"srv-{tag}", [f"q-{tag}"], 4))
    assert await storage.finish([
        Outcome.succeed(leases[0], {"r": tag}, ttl=60), Outcome.fail(leases[1], ERROR, ttl=60),
        Outcome.retry(leases[2], ERROR, delay=30), Outcome.release(leases[3]),
    ]) == [True] * 4  # fmt: skip
    await storage.delete(ids[-1])
    await storage.pause_queue(f"paused-{tag}")
    await storage.upsert_recurring(RecurringTemplate(
        f"rec-{tag}", "0 * * * * *", "m", {"tag": tag}, queue=f"q-{tag}",
        next_run_at=storage.clock.now() - timedelta(seconds=1)))  # fmt: skip
    claims = await storage.claim_due_recurring(f"srv-{tag}")
    assert len(claims) == 1
    assert await storage.park_recurring(
        claims[0],
        next_run_at=soon,
        last_run_at=claims[0].now,
        jobs=[Job("m", {"tick": tag}, queue=f"q-{tag}", dedup_key=f"tick-{tag}")],
    )
    await storage.heartbeat_server(ServerInfo(f"srv-{tag}", hostname="h", queues=[f"q-{tag}"]))
    assert await storage.wait_for_work(0.01) in (True, False)
    await storage.list_jobs(JobQuery(text=tag, queue=f"q-{tag}", method="m"))
    await storage.queues()
    await storage.stats()
    return ids


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Poll a condition (for state owned by another connection), no fixed sleep."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- config, import
def test_config_defaults_and_fluent_builders() -> None:
    base = RedisConfig()
    assert (
        base.url,
        base.pool_size,
        base.command_timeout,
        base.key_prefix,
        base.completed_job_ttl,
    ) == ("redis://127.0.0.1:6379/0", 20, 5.0, "qml", None)
    cfg = (base.with_url("redis://cache:6379/1").with_pool_size(50)
           .with_command_timeout(timedelta(seconds=2)).with_key_prefix("myapp:jobs")
           .with_completed_job_ttl(timedelta(hours=24)))  # fmt: skip
    assert (cfg.url, cfg.pool_size, cfg.command_timeout, cfg.key_prefix, cfg.completed_job_ttl) == (
        "redis://cache:6379/1",
        50,
        2.0,
        "myapp:jobs",
        86400.0,
    )
    assert base == RedisConfig()  # builders return new values
    assert cfg.with_completed_job_ttl(None).completed_job_ttl is None


def test_config_from_url_keeps_driver_options_and_masks_the_password() -> None:
    cfg = RedisConfig.from_url(
        "redis://:s3cret@cache:6380/2?key_prefix=app&pool_size=7&command_timeout=2.5"
        "&completed_job_ttl=60&health_check_interval=10"
    )
    assert (cfg.pool_size, cfg.command_timeout, cfg.key_prefix, cfg.completed_job_ttl) == (
        7,
        2.5,
        "app",
        60.0,
    )
    assert cfg.url == "redis://:s3cret@cache:6380/2?health_check_interval=10"
    assert "s3cret" not in repr(cfg)
    assert RedisConfig.from_url("unix:///run/redis.sock").url == "unix:///run/redis.sock"
    with pytest.raises(ConfigurationError):
        RedisConfig.from_url("redis://h/0?pool_size=many")


@pytest.mark.parametrize("kwargs", [
    {"url": "http://localhost"}, {"pool_size": 0}, {"pool_size": True},
    {"command_timeout": 0}, {"command_timeout": float("inf")}, {"key_prefix": ""},
    {"key_prefix": "a{b}"}, {"key_prefix": "a*"}, {"key_prefix": "with space"},
    {"key_prefix": "x" * 101}, {"completed_job_ttl": -1},
], ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()))  # fmt: skip
def test_config_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisConfig(**kwargs)


def test_completed_job_ttl_is_the_succeeded_retention() -> None:
    storage = RedisStorage(RedisConfig(completed_job_ttl=90))
    assert storage.retention.succeeded_ttl == timedelta(seconds=90)
    assert RedisStorage().retention.succeeded_ttl == timedelta(hours=24)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)  # fmt: skip


def test_import_qml_does_not_import_redis() -> None:
    done = _python("import sys, qml, qml.storage; print('redis' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_missing_redis_py_names_the_extra() -> None:
    done = _python(
        "import sys; sys.modules['redis'] = None\n"
        "from qml.errors import MissingDependencyError\n"
        "try:\n    import qml.storage.redis\nexcept MissingDependencyError as e:\n"
        "    print(e.package, e.extra, str(e))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("redis redis ")
    assert "pip install 'qml-jobs[redis]'" in done.stdout


# ---------------------------------------------------------------------- layout, scripts
def test_every_script_file_is_used_and_opens_with_its_keys_and_argv() -> None:
    files = {p.stem for p in SCRIPT_DIR.glob("*.lua")}
    assert files == {*NAMES, "_lib"}
    for name in NAMES:
        source = (SCRIPT_DIR / f"{name}.lua").read_text()
        header = []
        for line in source.splitlines():
            if not line.startswith("--"):
                break
            header.append(line)
        assert header[0].startswith(f"-- {name}.lua: "), name
        assert any(line.startswith("-- KEYS[1]") for line in header), name
        assert any(line.startswith("-- ARGV") for line in header), name
        assert any(line.startswith("-- Returns") for line in header), name


def test_key_names_come_from_one_layout() -> None:
    keys = RedisKeys("app:jobs")
    names = [getattr(keys, attr) for attr, _, _ in LAYOUT]
    assert len(set(names)) == len(names)
    assert all(n.startswith("{app:jobs}:") for n in names)
    prefixes = [n for n in names if n.endswith(":")]
    for prefix in prefixes:  # a per-id prefix never swallows a fixed key
        assert not any(n.startswith(prefix) for n in names if n != prefix)
    prelude = lua_prelude()
    for _, lua, suffix in LAYOUT:
        assert f"local {lua} = KEYS[1] .. '{suffix}'" in prelude
    assert all(s.source.startswith(prelude) for s in SCRIPTS.values())


# ---------------------------------------------------------------------- isolation
async def test_two_prefixes_on_one_redis_share_nothing(open_storage: OpenStorage) -> None:
    a = await open_storage()
    b = await open_storage()
    ids_a = await workload(a, "x")
    ids_b = await workload(b, "x")  # the same queue names, dedup keys and template ids
    assert not set(ids_a) & set(ids_b)
    assert await a.get(ids_b[0]) is None and await b.get(ids_a[0]) is None
    assert await a.count() == await b.count() == 8
    template = await a.get_recurring("rec-x")
    assert template is not None
    listed = {j.id for j in (await a.list_jobs(JobQuery(limit=100))).items}
    assert listed == {*ids_a, template.last_job_id}
    await a.pause_queue("q-x")
    assert await b.paused_queues() == {"paused-x"}
    assert [lease.job.id for lease in await b.claim(ClaimRequest("s", ["q-x"], 10))]
    assert await a.claim(ClaimRequest("s", ["q-x"], 10)) == []
    stats_a, stats_b = await a.stats(history_minutes=2), await b.stats(history_minutes=2)
    assert sum(m.succeeded for m in stats_a.history) == 1
    assert stats_a.counts[JobState.PROCESSING] == 0
    assert stats_b.counts[JobState.PROCESSING] > 0
    await a.remove_recurring("rec-x")
    assert [t.id for t in await b.list_recurring()] == ["rec-x"]
    assert await a.list_recurring() == []
    assert [s.id for s in await b.list_servers()] == ["srv-x"]
    await a.remove_server("srv-x")
    assert [s.id for s in await b.list_servers()] == ["srv-x"]
    await b.purge()
    assert await b.count() == 0
    assert await a.count() == 8


async def test_every_key_of_a_prefix_is_in_one_slot(
    open_storage: OpenStorage, redis_url: str
) -> None:
    storage = await open_storage()
    await workload(storage, "slot")
    assert await storage.claim(ClaimRequest("s", ["q-slot"], 1))  # one job holds a lease
    await storage.wait_for_work(0.01)  # and the storage is registered as waiting
    interrupt = asyncio.Event()  # and a server is parked on an empty queue
    parked = asyncio.create_task(
        storage.wait_for_claim(ClaimRequest("s", ["q-empty"], 2), 30.0, interrupt)
    )
    client = Redis.from_url(redis_url)
    try:
        while not await client.hlen(storage.keys.parked):
            await asyncio.sleep(0.005)
        names = [k.decode() async for k in client.scan_iter(match=storage.keys.pattern, count=5000)]
    finally:
        await client.aclose()
        interrupt.set()
    assert await parked == []
    kinds = {suffix for _, _, suffix in LAYOUT if any(
        n == storage.keys.tag + suffix or (suffix.endswith(":") and
                                           n.startswith(storage.keys.tag + suffix))
        for n in names)}  # fmt: skip
    # the channel is no key; a hand-off list lives only until its waiter pops it
    assert {suffix for _, _, suffix in LAYOUT} - kinds == {":wake", ":hand:"}
    names.append(storage.keys.hand + "some-park-id")
    assert {key_slot(n.encode()) for n in names} == {key_slot(storage.keys.tag.encode())}


# ---------------------------------------------------------------------- scripts
def _fields(reply: Any) -> dict[str, Any]:
    """A reply of alternating names and values (``FUNCTION LIST``) by name."""
    if isinstance(reply, dict):
        return {text(k): v for k, v in reply.items()}
    return {text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


async def _calls(client: Redis, command: str) -> int:
    """How many times Redis ran ``command`` (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_scripts_run_as_one_function_library(
    open_storage: OpenStorage, redis_server: ServerMaker
) -> None:
    server = redis_server("--save", "", "--appendonly", "no")
    client = Redis.from_url(server.url)

    async def libraries() -> dict[str, dict[str, list[str]]]:
        """Each loaded library's functions and their flags."""
        out: dict[str, dict[str, list[str]]] = {}
        for lib in await client.function_list(withcode=False):
            info = _fields(lib)
            out[text(info["library_name"])] = {
                text(_fields(f)["name"]): sorted(text(x) for x in _fields(f)["flags"])
                for f in info["functions"]
            }
        return out

    try:
        storage = await open_storage(url=server.url)
        await workload(storage, "one")
        assert await libraries() == {
            LIBRARY_NAME: {
                s.function: ["no-writes"] if name in READ_ONLY else []
                for name, s in SCRIPTS.items()
            }
        }
        assert await _calls(client, "fcall") > 0 and await _calls(client, "evalsha") == 0
        assert int((await client.info("memory"))["number_of_cached_scripts"]) == 0
        for round_ in range(3):  # other prefixes, other values, the functions flushed
            other = await open_storage(url=server.url)
            await workload(other, f"r{round_}-{uuid4().hex[:6]}")
            await client.function_flush()
            assert storage._lane is not None  # the enqueue lane loads it again itself
            await storage.enqueue(Job("m", {"round": round_}))
            await client.function_flush()
            await storage.pause_queue(f"paused-{round_}")  # and the pool
            await workload(storage, f"again{round_}")
        assert list(await libraries()) == [LIBRARY_NAME]
        assert await _calls(client, "evalsha") == 0
    finally:
        await client.aclose()


async def test_without_functions_the_scripts_run_by_sha(
    open_storage: OpenStorage, redis_server: ServerMaker
) -> None:
    # an ACL that refuses FUNCTION stands for a Redis without functions (before 7.0)
    server = redis_server("--save", "", "--appendonly", "no")
    client = Redis.from_url(server.url)
    await client.acl_setuser(
        "app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-function"],
    )  # fmt: skip
    url = server.url.replace("redis://", "redis://app:secret@")

    async def cached() -> int:
        return int((await client.info("memory"))["number_of_cached_scripts"])

    try:
        storage = await open_storage(url=url)
        await workload(storage, "one")
        assert await cached() == len(NAMES)
        assert all(await client.script_exists(*(s.sha for s in SCRIPTS.values())))
        assert await client.function_list() == []
        for round_ in range(3):  # other prefixes, other values, a flushed cache
            other = await open_storage(url=url)
            await workload(other, f"r{round_}-{uuid4().hex[:6]}")
            await client.script_flush()
            await workload(storage, f"again{round_}")  # NOSCRIPT: reloaded by itself
        assert await cached() <= len(NAMES)
        await workload(await open_storage(url=url), "last")
        assert await cached() == len(NAMES)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- startup guards
def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "qml.storage.redis" and r.levelno == level]  # fmt: skip


async def test_startup_warns_about_eviction_and_missing_persistence(
    open_storage: OpenStorage, redis_server: ServerMaker, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server("--maxmemory-policy", "allkeys-lru", "--save", "", "--appendonly", "no")
    caplog.set_level(logging.INFO, logger="qml.storage.redis")
    await open_storage(url=server.url)
    warnings = _messages(caplog, logging.WARNING)
    assert any("maxmemory-policy allkeys-lru" in m and "noeviction" in m for m in warnings)
    assert any("persistence off" in m for m in warnings)


async def test_startup_reports_the_fsync_policy(
    open_storage: OpenStorage, redis_server: ServerMaker, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server("--maxmemory-policy", "noeviction", "--appendonly", "yes",
                          "--appendfsync", "everysec")  # fmt: skip
    caplog.set_level(logging.INFO, logger="qml.storage.redis")
    await open_storage(url=server.url)
    assert _messages(caplog, logging.WARNING) == []
    assert any("appendfsync everysec" in m for m in _messages(caplog, logging.INFO))


async def test_startup_copes_with_config_disabled(
    open_storage: OpenStorage, redis_server: ServerMaker, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server("--rename-command", "CONFIG", "", "--save", "", "--appendonly", "no")
    caplog.set_level(logging.INFO, logger="qml.storage.redis")
    storage = await open_storage(url=server.url)
    assert any("does not allow CONFIG GET" in m for m in _messages(caplog, logging.INFO))
    assert any("no append-only file" in m for m in _messages(caplog, logging.WARNING))
    assert await storage.enqueue(Job("m"))  # it works all the same


@pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])
async def test_used_ids_are_refused_on_a_redis_without_zmscore(
    open_storage: OpenStorage, redis_server: ServerMaker, functions: bool
) -> None:
    """Enqueue looks up every new id in one ZMSCORE (Redis 6.2+); where the
    command is missing it checks each job's key instead, with the same result."""
    server = redis_server("--rename-command", "ZMSCORE", "", "--save", "", "--appendonly", "no")
    storage = await open_storage(url=server.url)
    if not functions:
        assert storage._run is not None
        storage._run.functions = False  # as on Redis 5-6: scripts by SHA (loaded on NOSCRIPT)
    first = await storage.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    used = Job("m", {"again": True})
    used.id = first[1]
    for batch in ([used], [Job("m"), Job("m"), used, Job("m")]):
        with pytest.raises(DuplicateJobError, match=first[1]):
            await storage.enqueue_many(batch)
    assert await storage.count(JobState.ENQUEUED) == 3  # nothing else was written
    assert len(await storage.enqueue_many([Job("m") for _ in range(4)])) == 4
    assert await storage.count(JobState.ENQUEUED) == 7


# ---------------------------------------------------------------------- restart
async def test_acknowledged_enqueues_survive_a_restart_with_aof(
    open_storage: OpenStorage, redis_server: ServerMaker
) -> None:
    server = redis_server("--appendonly", "yes", "--appendfsync", "always", "--save", "")
    producer = await open_storage(url=server.url)
    worker = await open_storage(prefix=producer.config.key_prefix, url=server.url)
    acknowledged = await producer.enqueue_many([Job("m", {"batch": i}) for i in range(200)])
    restarted = asyncio.Event()

    async def produce() -> None:
        for i in range(400):
            job = Job("m", {"one": i})
            while True:
                try:
                    acknowledged.append(await producer.enqueue(job))
                    break
                except DuplicateJobError:  # applied before the connection broke
                    acknowledged.append(job.id)
                    break
                except StorageUnavailableError:
                    await asyncio.sleep(0.02)
            if i == 100:
                restarted.clear()
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start)
                restarted.set()

    await produce()
    assert restarted.is_set()
    assert await worker.count() == len(set(acknowledged)) == 600
    for job_id in acknowledged:
        assert await worker.get(job_id) is not None
    drained: list[str] = []
    while leases := await worker.claim(ClaimRequest("w", ["default"], 100)):
        assert all(await worker.finish([Outcome.succeed(x, None, ttl=60) for x in leases]))
        drained += [lease.job_id for lease in leases]
    assert sorted(drained) == sorted(acknowledged)
    # the wake-up listener resubscribed by itself
    assert worker._listener is not None
    await asyncio.wait_for(worker._listener.subscribed.wait(), 15)
    waiting = asyncio.create_task(worker.wait_for_work(30))
    await _eventually(lambda: _waiting(worker), "the worker waits")
    await producer.enqueue(Job("m", {"after": "restart"}))
    assert await waiting is True


async def _waiting(storage: RedisStorage) -> bool:
    """Whether a wait_for_work call of ``storage`` is registered and waiting."""
    listener = storage._listener
    return listener is not None and bool(listener._waiters) and await _registered(storage)


async def _registered(storage: RedisStorage) -> bool:
    client = await storage._c()
    return await client.zscore(storage.keys.waiters, storage._waiter_id) is not None


# ---------------------------------------------------------------------- wake-up
async def test_wake_up_is_a_published_generation(open_storage: OpenStorage, redis_url: str) -> None:
    idle = await open_storage()
    other = await open_storage(prefix=idle.config.key_prefix)  # like another process
    watcher = Redis.from_url(redis_url)
    pubsub = watcher.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(idle.keys.wake)
        await other.enqueue(Job("m"))  # nobody waits: generation 1 is not published
        assert await idle.wait_for_work(0.02) is False  # it came before the wait
        waiting = asyncio.create_task(idle.wait_for_work(30))
        await _eventually(lambda: _waiting(idle), "the storage waits")
        await other.enqueue(Job("m"))
        assert await waiting is True
        assert (
            await asyncio.wait_for(_next_message(pubsub), 10) == 2
        )  # 1 went unsent: nobody waited
        # a claim unregisters; a signal after it wakes the next wait at once
        assert len(await idle.claim(ClaimRequest("s", ["default"], 10))) == 2
        assert not await _registered(idle)
        await other.enqueue(Job("m"))
        assert await idle.wait_for_work(30) is True
    finally:
        await cast(Callable[[], Awaitable[None]], pubsub.aclose)()
        await watcher.aclose()


async def test_wake_up_survives_a_killed_subscription(
    open_storage: OpenStorage, redis_url: str
) -> None:
    idle = await open_storage()
    other = await open_storage(prefix=idle.config.key_prefix)
    admin = Redis.from_url(redis_url)
    try:
        name = f"qml-wake:{idle.config.key_prefix}"
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == name]
        assert len(ids) == 2  # one subscription per storage handle
        for client_id in ids:
            await admin.client_kill_filter(_id=client_id)
        assert idle._listener is not None
        await _eventually(lambda: _subscribers(admin, idle.keys.wake, 2), "resubscribed")
        waiting = asyncio.create_task(idle.wait_for_work(30))
        await _eventually(lambda: _waiting(idle), "the storage waits")
        await other.enqueue(Job("m"))
        assert await waiting is True
    finally:
        await admin.aclose()


async def _next_message(pubsub: Any) -> int:
    while True:  # the subscribe confirmation reads as None
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            return int(message["data"])


async def _subscribers(client: Redis, channel: str, n: int) -> bool:
    reply = await client.pubsub_numsub(channel)
    return bool(reply and int(reply[0][1]) >= n)


# ---------------------------------------------------------------------- errors
async def test_an_unreachable_redis_is_storage_unavailable() -> None:
    storage = RedisStorage(RedisConfig(url=f"redis://127.0.0.1:{_free_port()}/0",
                                       command_timeout=2))  # fmt: skip
    with pytest.raises(StorageUnavailableError) as info:
        await storage.open()
    assert isinstance(info.value.__cause__, redis.RedisError | OSError)
    await storage.close()


async def test_driver_errors_are_translated(
    open_storage: OpenStorage, redis_server: ServerMaker
) -> None:
    server = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction",
                          "--save", "", "--appendonly", "no")  # fmt: skip
    storage = await open_storage(url=server.url, max_payload_bytes=4 * 1024 * 1024)

    async def fill() -> None:
        for _ in range(10):
            await storage.enqueue(Job("m", "x" * 1024 * 1024))

    with pytest.raises(StorageError) as info:
        await fill()
    assert not isinstance(info.value, StorageUnavailableError)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert "maxmemory" in str(info.value)
    await asyncio.to_thread(server.stop)
    with pytest.raises(StorageUnavailableError) as lost:
        await storage.claim(ClaimRequest("s", ["default"], 1))
    assert isinstance(lost.value.__cause__, redis.RedisError | OSError)
    assert await storage.wait_for_work(0.01) is False  # a poll, not an error


# ---------------------------------------------------------------------- reads, batches
async def test_listing_scans_in_bounded_steps(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    storage.list_scan_budget = 7  # many list.lua calls per page
    ids = await storage.enqueue_many([
        Job("m", {"i": i, "name": "Ünïcode" if i % 5 == 0 else "plain"},
            queue="even" if i % 2 == 0 else "odd")
        for i in range(60)
    ])  # fmt: skip
    even = [job_id for i, job_id in enumerate(ids) if i % 2 == 0]
    seen: list[str] = []
    cursor = None
    while True:
        page = await storage.list_jobs(JobQuery(queue="even", cursor=cursor, limit=4,
                                                ascending=True))  # fmt: skip
        seen += [j.id for j in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == even
    unicode = await storage.list_jobs(JobQuery(text="üNÏ", limit=100, ascending=True))
    assert [j.id for j in unicode.items] == ids[::5]  # a non-ASCII needle: Python-side match
    states = frozenset({JobState.ENQUEUED, JobState.FAILED})
    assert len((await storage.list_jobs(JobQuery(states=states, limit=100))).items) == 60


async def test_a_large_batch_is_all_or_none(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await storage.enqueue(Job("m", dedup_key="taken"))
    batch = [Job("m", {"i": i}) for i in range(5000)] + [Job("m", dedup_key="taken")]
    with pytest.raises(DuplicateJobError):
        await storage.enqueue_many(batch)
    assert await storage.count() == 1
    assert len(await storage.enqueue_many(batch[:-1])) == 5000
    assert await storage.count(state=JobState.ENQUEUED) == 5001


async def test_numbers_are_stored_as_integertext(open_storage: OpenStorage) -> None:
    # scripts format each number once per call (memoized): scores and counters stay
    # exact integer text, and a priority of 0 is never stored as "-0"
    storage = await open_storage()
    raw = Redis.from_url(storage.config.url)
    try:
        ids = await storage.enqueue_many([Job("m", priority=p) for p in (0, 3, -3, 0)])
        # the scores as Redis itself prints them (a stored -0.0 would show as "-0")
        ready = cast(
            list[tuple[bytes, str]],
            await raw.zrange(
                storage.keys.ready + "default", 0, -1, withscores=True, score_cast_func=text
            ),
        )
        assert [text(m)[16:] for m, _ in ready] == [ids[1], ids[0], ids[3], ids[2]]
        assert [s for _, s in ready] == ["-3", "0", "0", "3"]
        leases = await storage.claim(ClaimRequest("srv", ["default"], 4))
        assert await storage.finish([Outcome.release(lease) for lease in leases]) == [True] * 4
        for job_id in ids:
            fields = await raw.hmget(storage.keys.job + job_id, "attempts", "crashes")
            assert fields == [b"0", b"0"]
            job = await storage.get_job(job_id)
            assert [(h.state, h.attempt) for h in job.history] == [
                (JobState.ENQUEUED, 0),
                (JobState.PROCESSING, 1),
                (JobState.ENQUEUED, 0),
            ]
    finally:
        await raw.aclose()


async def test_a_new_job_of_the_common_shape_is_stored_like_any_other(
    open_storage: OpenStorage,
) -> None:
    # insert() writes a job with only a method and args (no run_at, dedup key,
    # claim) by a shorter path: its hash, indexes and counters are the same
    storage = await open_storage()
    raw = Redis.from_url(storage.config.url)
    try:
        plain, full = await storage.enqueue_many([
            Job("m", {"a": 1}, priority=2),
            Job("m", {"a": 1}, priority=2, max_retries=2, timeout=5.0, meta={"k": "v"}),
        ])  # fmt: skip
        lone = await storage.enqueue(Job("m", {"a": 1}, priority=2))
        hashes = {i: await raw.hgetall(storage.keys.job + i) for i in (plain, full, lone)}
        extra = {b"max_retries", b"timeout", b"meta"}
        assert set(hashes[full]) - set(hashes[plain]) == extra
        assert set(hashes[plain]) == set(hashes[lone]) == set(hashes[full]) - extra
        common = set(hashes[plain]) - {b"id"}  # one call, one time: the rest is equal
        assert {f: hashes[plain][f] for f in common} == {f: hashes[full][f] for f in common}
        assert hashes[plain][b"id"] == plain.encode()
        assert await storage.count(JobState.ENQUEUED, "default") == 3
        ready = cast(
            list[tuple[bytes, float]],
            await raw.zrange(storage.keys.ready + "default", 0, -1, withscores=True),
        )
        assert [(text(m)[16:], s) for m, s in ready] == [(plain, -2), (full, -2), (lone, -2)]
        assert await raw.zmscore(storage.keys.all, [plain, full, lone]) == [0, 0, 0]
        assert await raw.zcard(storage.keys.state + "enqueued") == 3
        leases = await storage.claim(ClaimRequest("srv", ["default"], 3))
        assert [lease.job.id for lease in leases] == [plain, full, lone]
        assert [(lease.job.attempts, lease.job.max_retries) for lease in leases] == [
            (1, None),
            (1, 2),
            (1, None),
        ]
    finally:
        await raw.aclose()


async def test_a_lone_new_job_goes_straight_to_a_parked_server(
    open_storage: OpenStorage, redis_server: ServerMaker
) -> None:
    server = redis_server("--save", "", "--appendonly", "no")
    storage = await open_storage(url=server.url)
    producer = await open_storage(url=server.url, prefix=storage.config.key_prefix)
    raw = Redis.from_url(server.url)

    try:
        interrupt = asyncio.Event()
        waiter = asyncio.create_task(
            storage.wait_for_claim(ClaimRequest("srv", ["default"], 10), 30.0, interrupt)
        )
        while not await raw.hlen(storage.keys.parked):
            await asyncio.sleep(0.005)
        pops = await _calls(raw, "zpopmin")
        job = Job("m", {"x": 1}, max_retries=3, timeout=5.0, meta={"k": "v"}, dedup_key="d1")
        job_id = await producer.enqueue(job)
        [lease] = await asyncio.wait_for(waiter, 10)
        assert await _calls(raw, "zpopmin") == pops  # claimed without passing the ready set
        handed = lease.job
        assert (handed.id, handed.state, handed.attempts, handed.server_id) == (
            job_id,
            JobState.PROCESSING,
            1,
            "srv",
        )
        assert [(h.state, h.attempt) for h in handed.history] == [
            (JobState.ENQUEUED, 0), (JobState.PROCESSING, 1)]  # fmt: skip
        # the values built in the script are those stored
        assert handed.to_dict() == (await storage.get_job(job_id)).to_dict()
        assert handed.lease_token == lease.token and handed.lease_expires_at == lease.expires_at
        assert (await storage.count(JobState.PROCESSING), await storage.count()) == (1, 1)
        assert await raw.zcard(storage.keys.ready + "default") == 0
        assert await raw.zscore(storage.keys.state + "processing", job_id) == 0
        assert await raw.zscore(storage.keys.state + "enqueued", job_id) is None
        assert await raw.zscore(storage.keys.leases, job_id) is not None
        assert await raw.zscore(storage.keys.all, job_id) == 0
        assert await raw.hget(storage.keys.dedup, "d1") == job_id.encode()
        assert not await raw.hlen(storage.keys.parked)  # the parking ended
        with pytest.raises(DuplicateJobError):
            await producer.enqueue(Job("m", dedup_key="d1"))
        assert await storage.finish([Outcome.succeed(lease, {"ok": 1}, ttl=60)]) == [True]
        assert (await storage.get_job(job_id)).state is JobState.SUCCEEDED
    finally:
        await raw.aclose()


async def test_a_lone_new_job_does_not_pass_jobs_a_parked_server_takes_first(
    open_storage: OpenStorage,
) -> None:
    storage = await open_storage()
    producer = await open_storage(prefix=storage.config.key_prefix)
    # a job becomes ready in the first of the server's queues without a hand-off
    # (activated, not enqueued), then a lone job comes for its second queue
    soon = storage.clock.now() + timedelta(seconds=60)
    first = await producer.enqueue(Job("m", queue="high", run_at=soon))
    interrupt = asyncio.Event()
    waiter = asyncio.create_task(
        storage.wait_for_claim(ClaimRequest("srv", ["high", "default"], 10), 30.0, interrupt)
    )
    raw = Redis.from_url(storage.config.url)
    try:
        while not await raw.hlen(storage.keys.parked):
            await asyncio.sleep(0.005)
    finally:
        await raw.aclose()
    assert await producer.activate_due(now=soon + timedelta(seconds=1)) == 1
    second = await producer.enqueue(Job("m", queue="default"))
    leases = await asyncio.wait_for(waiter, 10)
    assert leases[0].job.id == first  # the queue order of a claim holds
    if len(leases) == 1:  # woken by the activation first: the second waits its turn
        assert (await storage.get_job(second)).state is JobState.ENQUEUED
    else:
        assert [lease.job.id for lease in leases] == [first, second]


async def test_enqueues_share_the_lane_safely(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    first = await storage.enqueue(Job("m"))
    ids = await asyncio.gather(*(storage.enqueue(Job("m", {"i": i})) for i in range(50)))
    assert len(set(ids)) == 50  # concurrent callers: one on the lane, the others on the pool
    # A call cancelled while its reply is in flight must not leave that reply to the
    # next caller: the duplicate below has to read its own refusal.
    batch = [Job("m", {"i": i}) for i in range(20_000)]
    big = asyncio.create_task(storage.enqueue_many(batch))
    while storage._lane is None or not storage._lane.busy:  # wait until it is sent
        await asyncio.sleep(0)
    await asyncio.sleep(0.005)  # Redis is still storing the batch: the reply is pending
    big.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await big
    with pytest.raises(DuplicateJobError):
        await storage.enqueue(Job("m", id=first))
    last = await storage.enqueue(Job("m", {"last": True}))
    assert (await storage.get_job(last)).args == {"last": True}
    assert await storage.count() in (52, 20_052)


async def test_corrupt_arguments_come_back_as_a_marker(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    job_id = await storage.enqueue(Job("m", {"ok": True}))
    client = await storage._c()
    await client.hset(storage.keys.job_key(job_id), "args", b"{not json")
    job = await storage.get_job(job_id)
    assert isinstance(job.args, CorruptPayload)
    lease = (await storage.claim(ClaimRequest("s", ["default"], 1)))[0]
    assert isinstance(lease.job.args, CorruptPayload)


async def _lane_client_id(storage: RedisStorage, name: str) -> int:
    conn = storage._lanes[name]._conn
    assert conn is not None
    await conn.send_command("CLIENT", "ID")
    return int(await conn.read_response())


async def test_claim_and_finish_lanes_reconnect_after_a_cut(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(3)])
    (lease,) = await storage.claim(ClaimRequest("s", ["default"], 1))
    assert await storage.finish([Outcome.succeed(lease, {"r": 0}, ttl=60)]) == [True]
    client = await storage._c()
    for name in ("claim", "finish"):  # the server closes both idle lane connections
        killed = await executor(client)(
            "CLIENT", "KILL", "ID", await _lane_client_id(storage, name)
        )
        assert killed == 1
    for name in ("claim", "finish"):
        conn = storage._lanes[name]._conn
        assert conn is not None
        reader = getattr(conn, "_reader", None)
        deadline = time.monotonic() + 10  # safety net: the close reaches the client
        while reader is not None and not reader.at_eof() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    # The first calls after the cut succeed on fresh connections.
    (lease,) = await storage.claim(ClaimRequest("s", ["default"], 1))
    assert lease.job.state is JobState.PROCESSING and lease.job.attempts == 1
    assert await storage.finish([Outcome.succeed(lease, {"r": 1}, ttl=60)]) == [True]
    assert (await storage.get_job(lease.job_id)).result == {"r": 1}
    # A lane connection closed on this side connects again on the next call.
    await storage._lanes["claim"]._connection().disconnect()
    (lease,) = await storage.claim(ClaimRequest("s", ["default"], 1))
    assert await storage.count(state=JobState.PROCESSING) == 1


async def test_a_claim_cancelled_mid_call_leaves_no_reply_behind(
    open_storage: OpenStorage,
) -> None:
    storage = await open_storage()
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(6000)])
    (first,) = await storage.claim(ClaimRequest("s", ["default"], 1))  # opens the lane
    big = asyncio.create_task(storage.claim(ClaimRequest("s", ["default"], 5000)))
    while not storage._lanes["claim"].busy:  # wait until it is sent
        await asyncio.sleep(0)
    await asyncio.sleep(0.005)  # Redis is still claiming: the reply is pending
    big.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await big
    # The next calls on the lanes read their own replies, not the cancelled one's.
    leases = await storage.claim(ClaimRequest("s", ["default"], 2))
    assert len(leases) == 2 and all(lease.job.method == "m" for lease in leases)
    assert {lease.job_id for lease in leases}.isdisjoint({first.job_id})
    outcomes = [Outcome.succeed(lease, None, ttl=60) for lease in (first, *leases)]
    assert await storage.finish(outcomes) == [True, True, True]
    assert await storage.count(state=JobState.SUCCEEDED) == 3
    processing = await storage.count(state=JobState.PROCESSING)
    assert processing in (0, 5000)  # the cancelled claim landed whole or not at all
    assert processing + await storage.count(state=JobState.ENQUEUED) == 5997


async def test_concurrent_claims_and_finishes_share_the_lanes(open_storage: OpenStorage) -> None:
    storage = await open_storage()
    await storage.enqueue_many([Job("m", {"i": i}) for i in range(40)])
    batches = await asyncio.gather(
        *(storage.claim(ClaimRequest("s", ["default"], 4)) for _ in range(10))
    )  # one on the lane, the others on the pool
    leases = [lease for batch in batches for lease in batch]
    assert len({lease.job_id for lease in leases}) == 40
    replies = await asyncio.gather(
        *(storage.finish([Outcome.succeed(lease, {"i": n}, ttl=60)]) for n, lease in
          enumerate(leases))
    )  # fmt: skip
    assert replies == [[True]] * 40
    assert await storage.count(state=JobState.SUCCEEDED) == 40


def test_claim_script_returns_the_fields_the_codec_reads() -> None:
    source = (SCRIPT_DIR / "_lib.lua").read_text()
    start = source.index("local JOB_FIELDS = {")
    listed = source[start : source.index("}", start)]
    fields = tuple(f.encode() for f in re.findall(r"'([a-z_]+)'", listed))
    assert fields == JOB_FIELDS


def test_a_forked_child_knows_its_own_pid_for_the_lanes() -> None:
    from qml.storage.redis import lane

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"1" if lane._PID[0] == os.getpid() else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert lane._PID[0] == os.getpid()
