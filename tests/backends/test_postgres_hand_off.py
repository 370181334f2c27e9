"""PostgreSQL hand-off: a parked waiter (``park`` in queries.sql) is handed the
jobs of an enqueue (``enqueue_hand_off``, ``enqueue_hand_off_one``) through a
NOTIFY on its own channel, and no way a wait can end leaves a job held by
nobody: a dead waiter's jobs come back with their lease, a cancelled one gives
them back, a lost or oversized notification is made up for by the tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from qml import BackgroundJobServer, ServerConfig, WorkerRegistry
from qml.errors import ConfigurationError, DuplicateJobError, StorageUnavailableError
from qml.job import Job, JobState
from qml.storage.postgres import PostgresConfig, PostgresStorage, quote_ident
from qml.storage.postgres.migrate import Migrator
from qml.storage.postgres.sql import Names
from qml.storage.requests import ClaimRequest, Lease, RecoverRequest

pytestmark = pytest.mark.services

Open = Callable[..., Awaitable[PostgresStorage]]


@pytest.fixture
async def open_storage(postgres_dsn: str) -> AsyncIterator[Open]:
    """Storages on one fresh schema, closed and dropped afterwards."""
    schema = f"t_ho_{uuid4().hex[:12]}"
    opened: list[PostgresStorage] = []

    async def make(**options: Any) -> PostgresStorage:
        options.setdefault("max_connections", 4)
        storage = PostgresStorage(
            PostgresConfig(postgres_dsn, schema_name=schema, min_connections=1, **options)
        )
        await storage.open()
        opened.append(storage)
        return storage

    yield make
    for storage in opened:
        await storage.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


def _request(server: str = "srv", limit: int = 5, queue: str = "default") -> ClaimRequest:
    return ClaimRequest(server, [queue], limit, lease_seconds=60)


def _parked_table(storage: PostgresStorage) -> str:
    return f"{quote_ident(storage.names.schema)}.{quote_ident(storage.names.table + '_parked')}"


async def _parkings(storage: PostgresStorage) -> list[str]:
    rows = await storage._run(
        lambda c: c.fetch(f"SELECT server_id FROM {_parked_table(storage)} ORDER BY parked_at"),
        action="test",
    )
    return [r["server_id"] for r in rows]


async def _parked(storage: PostgresStorage, n: int = 1) -> None:
    """Until ``n`` waiters are parked (a condition, not a time)."""
    deadline = asyncio.get_running_loop().time() + 10.0  # a safety net, not a timing
    while len(await _parkings(storage)) < n:
        assert asyncio.get_running_loop().time() < deadline, "not parked"
        await asyncio.sleep(0.002)


async def _deaf(storage: PostgresStorage) -> None:
    """Hand-off notifications no longer reach ``storage`` (as if lost)."""
    await storage.listen()
    assert storage.listener is not None
    storage.listener._on_hand = lambda payload: None


async def _check_held(storage: PostgresStorage, leases: list[Lease], server: str) -> None:
    for lease in leases:
        job = await storage.get_job(lease.job_id)
        assert (job.state, job.server_id, job.lease_token, job.attempts) == (
            JobState.PROCESSING,
            server,
            lease.token,
            1,
        )
        assert job.lease_expires_at == lease.expires_at
        assert [h.state for h in job.history] == [JobState.ENQUEUED, JobState.PROCESSING]


async def test_each_parked_waiter_gets_its_own_jobs(open_storage: Open) -> None:
    a, b, producer = await open_storage(), await open_storage(), await open_storage()
    ta = asyncio.create_task(a.wait_for_claim(_request("a", 1), 30.0, asyncio.Event()))
    await _parked(a, 1)
    tb = asyncio.create_task(b.wait_for_claim(_request("b", 2), 30.0, asyncio.Event()))
    await _parked(a, 2)
    first = await producer.enqueue(Job("m", {"i": 0}))
    got_a = await ta  # the longest parked first
    assert [x.job_id for x in got_a] == [first]
    assert await _parkings(a) == ["b"]  # b was not woken: still parked
    assert not tb.done()
    second = await producer.enqueue_many([Job("m", {"i": i}) for i in (1, 2)])
    got_b = await tb
    assert [x.job_id for x in got_b] == second
    await _check_held(a, got_a, "a")
    await _check_held(a, got_b, "b")
    assert await _parkings(a) == []


async def test_jobs_beyond_the_limit_wake_the_other_waiters(open_storage: Open) -> None:
    a, b, producer = await open_storage(), await open_storage(), await open_storage()
    ta = asyncio.create_task(a.wait_for_claim(_request("a", 1), 30.0, asyncio.Event()))
    await _parked(a, 1)
    tb = asyncio.create_task(b.wait_for_claim(_request("b", 2), 30.0, asyncio.Event()))
    await _parked(a, 2)
    ids = await producer.enqueue_many([Job("m", {"i": i}) for i in range(2)])
    assert [x.job_id for x in await ta] == ids[:1]  # up to its limit
    assert await tb == []  # woken by the one left over, which it claims next
    assert (await a.get_job(ids[1])).state is JobState.ENQUEUED
    assert await _parkings(a) == []


async def test_jobs_are_handed_in_queue_then_priority_order(open_storage: Open) -> None:
    storage = await open_storage()
    request = ClaimRequest("srv", ["high", "low"], 2, lease_seconds=60)
    task = asyncio.create_task(storage.wait_for_claim(request, 30.0, asyncio.Event()))
    await _parked(storage)
    ids = await storage.enqueue_many(
        [
            Job("m", queue="low", priority=9),
            Job("m", queue="high"),
            Job("m", queue="high", priority=5),
        ]
    )
    leases = await task
    assert [x.job_id for x in leases] == [ids[2], ids[1]]
    assert (await storage.get_job(ids[0])).state is JobState.ENQUEUED


async def test_scheduled_jobs_are_not_handed(open_storage: Open) -> None:
    storage, producer = await open_storage(), await open_storage()
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(storage)
    later = await producer.enqueue(Job("m", run_at=datetime.now(UTC) + timedelta(hours=1)))
    assert await _parkings(storage) == ["srv"]  # nobody woken either
    assert (await storage.get_job(later)).state is JobState.SCHEDULED
    assert not task.done()
    job_id = await producer.enqueue(Job("m"))
    assert [x.job_id for x in await task] == [job_id]


async def test_jobs_of_a_paused_queue_are_not_handed(open_storage: Open) -> None:
    storage = await open_storage()
    await storage.pause_queue("default")
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(storage)
    held = await storage.enqueue(Job("m"))
    assert await task == []  # woken (every Enqueued job signals), not handed
    assert (await storage.get_job(held)).state is JobState.ENQUEUED
    assert await _parkings(storage) == []


async def test_an_interrupt_during_the_park_statement_ends_the_wait(open_storage: Open) -> None:
    # as when a suspect of the server's own ends while its park statement is on the
    # way: the server wants to claim again now, not after its polling interval
    storage = await open_storage()
    interrupt = asyncio.Event()
    hot = storage._hot

    async def interrupted(name: str, fn: Any, **kwargs: Any) -> Any:
        interrupt.set()  # after wait_for_claim looked at it, before the reply
        return await hot(name, fn, **kwargs)

    storage._hot = interrupted  # type: ignore[method-assign]
    waiting = storage.wait_for_claim(_request(), 3600.0, interrupt)
    assert await asyncio.wait_for(waiting, 60) == []
    assert await _parkings(storage) == []


async def test_other_signals_end_the_parking(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    task = asyncio.create_task(waiter.wait_for_claim(_request(queue="mine"), 30.0, asyncio.Event()))
    await _parked(waiter)
    other = await producer.enqueue(Job("m", queue="elsewhere"))  # a plain NOTIFY
    assert await task == []
    assert await _parkings(waiter) == []
    assert (await waiter.get_job(other)).state is JobState.ENQUEUED


async def test_a_lost_notification_is_made_up_for_by_the_token(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    await _deaf(waiter)
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 0.3, asyncio.Event()))
    await _parked(waiter)
    job_id = await producer.enqueue(Job("m", {"k": "v"}))
    leases = await task  # timed out, found the parking gone, read the job by its token
    assert [(x.job_id, x.job.args) for x in leases] == [(job_id, {"k": "v"})]
    await _check_held(waiter, leases, "srv")


async def test_jobs_too_large_for_a_notification_are_read_by_token(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(waiter)
    big = {"blob": "x" * 9000}
    job_id = await producer.enqueue(Job("m", big))
    leases = await task
    assert [(x.job_id, x.job.args) for x in leases] == [(job_id, big)]
    await _check_held(waiter, leases, "srv")


async def test_a_cancelled_waiter_gives_back_what_was_handed(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    await _deaf(waiter)  # the hand-off is made but not seen: the task is still waiting
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(waiter)
    job_id = await producer.enqueue(Job("m"))
    assert (await producer.get_job(job_id)).state is JobState.PROCESSING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = await producer.get_job(job_id)
    assert (job.state, job.attempts) == (JobState.ENQUEUED, 0)  # released, not counted
    assert await _parkings(producer) == []


async def test_a_waiter_that_died_parked_gets_its_jobs_back_by_lease(open_storage: Open) -> None:
    storage = await open_storage()
    # a server killed while parked leaves its parking until parked_until
    await storage._run(
        lambda c: c.execute(
            f"INSERT INTO {_parked_table(storage)} VALUES"
            " ('dead.1', 'dead', '{default}', 1.0, '{tok-1}', 'nobody', now(),"
            " now() + interval '1 minute')"
        ),
        action="test",
    )
    job_id = await storage.enqueue(Job("m"))
    job = await storage.get_job(job_id)
    assert (job.state, job.server_id, job.lease_token) == (JobState.PROCESSING, "dead", "tok-1")
    assert job.lease_expires_at is not None
    later = job.lease_expires_at + timedelta(seconds=1)
    assert await storage.recover_expired(RecoverRequest(now=later)) == [job_id]
    job = await storage.get_job(job_id)
    assert (job.state, job.crashes) == (JobState.ENQUEUED, 1)


async def test_an_ended_parking_is_not_used_and_is_pruned(open_storage: Open) -> None:
    storage = await open_storage()
    await storage._run(
        lambda c: c.execute(
            f"INSERT INTO {_parked_table(storage)} VALUES"
            " ('old.1', 'old', '{default}', 30.0, '{tok-1}', 'nobody',"
            " now() - interval '2 minutes', now() - interval '90 seconds')"
        ),
        action="test",
    )
    job_id = await storage.enqueue(Job("m"))
    assert (await storage.get_job(job_id)).state is JobState.ENQUEUED
    await storage.prune()
    assert await _parkings(storage) == []


async def test_a_duplicate_enqueue_leaves_the_parking_in_place(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    first = await producer.enqueue(Job("m", dedup_key="k"))
    assert [x.job_id for x in await producer.claim(_request("other"))] == [first]
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(waiter)
    with pytest.raises(DuplicateJobError):
        await producer.enqueue(Job("m", dedup_key="k"))
    assert await _parkings(waiter) == ["srv"]  # rolled back with the insert
    job_id = await producer.enqueue(Job("m"))
    assert [x.job_id for x in await task] == [job_id]


async def test_hand_off_can_be_switched_off(open_storage: Open) -> None:
    storage = await open_storage(hand_off=False)
    assert not storage.hands_off_claims
    task = asyncio.create_task(storage.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await asyncio.sleep(0.02)
    job_id = await storage.enqueue(Job("m"))
    assert await task == []  # woken, not handed the job
    assert await _parkings(storage) == []
    assert [x.job_id for x in await storage.claim(_request())] == [job_id]
    assert PostgresConfig.from_url("postgresql://h/db?qml_hand_off=0").hand_off is False
    assert PostgresConfig.from_url("postgresql://h/db").hand_off is True
    with pytest.raises(ConfigurationError, match="qml_hand_off"):
        PostgresConfig.from_url("postgresql://h/db?qml_hand_off=maybe")


@pytest.mark.parametrize("hand_off", [True, False])
async def test_an_idle_server_runs_what_is_enqueued(open_storage: Open, hand_off: bool) -> None:
    storage = await open_storage(hand_off=hand_off)
    registry = WorkerRegistry(storage=storage)
    ran: list[int] = []

    @registry.job("record")
    async def record(i: int) -> None:
        ran.append(i)

    server = BackgroundJobServer(
        ServerConfig("hand", worker_count=4, polling_interval=30.0, enable_cleanup=False,
                     enable_recurring=False),
        storage,
        registry,
    )  # fmt: skip
    await server.start()
    try:
        for i in range(5):
            if hand_off:
                await _parked(storage)
            job_id = await record.enqueue(i)
            while (await storage.get_job(job_id)).state is not JobState.SUCCEEDED:
                await asyncio.sleep(0.005)
    finally:
        await server.stop()
    assert ran == [0, 1, 2, 3, 4]
    assert await _parkings(storage) == []  # stop ended the parking


async def test_a_schema_without_the_parking_table_works_without_hand_off(
    postgres_dsn: str,
) -> None:
    schema = f"t_ho_{uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_dsn)
    storage = PostgresStorage(PostgresConfig(postgres_dsn, schema_name=schema, auto_migrate=False))
    try:
        await Migrator(Names(schema, "qml_jobs")).migrate(conn, target=4)
        job_id = await storage.enqueue(Job("m"))  # the first call opens the storage
        assert not storage.hands_off_claims
        await storage.prune()
        waited = await storage.wait_for_claim(_request(), 0.01, asyncio.Event())
        assert waited == []  # a plain wait: the server claims by itself
        assert [x.job_id for x in await storage.claim(_request())] == [job_id]
    finally:
        await storage.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await conn.close()


async def _until_state(storage: PostgresStorage, job_id: str, state: JobState) -> Job:
    deadline = asyncio.get_running_loop().time() + 10.0  # a safety net, not a timing
    while (job := await storage.get_job(job_id)).state is not state:
        assert asyncio.get_running_loop().time() < deadline, (job.state, state)
        await asyncio.sleep(0.005)
    return job


async def test_jobs_handed_to_a_parking_whose_wait_is_over_are_given_back(
    open_storage: Open,
) -> None:
    waiter, producer = await open_storage(), await open_storage()
    await waiter.wait_for_claim(_request(), 0.01, asyncio.Event())  # opened, a wait done
    # a parking of this storage left behind (its end failed), still listened to
    stale = f"{waiter._park_prefix}.999"
    await waiter._run(
        lambda c: c.execute(
            f"INSERT INTO {_parked_table(waiter)} VALUES ($1, 'srv', '{{default}}', 60.0,"
            " '{tok-stale}', $2, now(), now() + interval '1 minute')",
            stale,
            waiter._hand_channel,
        ),
        action="test",
    )
    job_id = await producer.enqueue(Job("m"))
    job = await _until_state(producer, job_id, JobState.ENQUEUED)  # released by the waiter
    assert job.attempts == 0
    assert [h.state for h in job.history][-1] is JobState.ENQUEUED


async def test_a_waiter_cancelled_while_it_ends_its_parking_gives_back(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter, producer = await open_storage(), await open_storage()
    await _deaf(waiter)
    reading, go_on = asyncio.Event(), asyncio.Event()
    real_fetch = waiter._fetch

    async def slow_fetch(name: str, *args: Any, idempotent: bool = True) -> list[Any]:
        if name == "handed":
            reading.set()
            await go_on.wait()
        return await real_fetch(name, *args, idempotent=idempotent)

    monkeypatch.setattr(waiter, "_fetch", slow_fetch)
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 0.2, asyncio.Event()))
    await _parked(waiter)
    job_id = await producer.enqueue(Job("m"))  # handed, but the waiter hears nothing
    await reading.wait()  # timed out, found its parking gone, reading the job by token
    task.cancel()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = await _until_state(producer, job_id, JobState.ENQUEUED)
    assert job.attempts == 0


async def test_a_claim_whose_reply_was_lost_is_given_back(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter = await open_storage()
    ids = await waiter.enqueue_many([Job("m"), Job("m")])
    real_hot = waiter._hot
    lost: list[Any] = []

    async def lossy(name: str, fn: Any, **kwargs: Any) -> Any:
        result = await real_hot(name, fn, **kwargs)
        if not lost:  # the park statement claimed both, then its reply was lost
            lost.append(result)
            raise StorageUnavailableError("connection lost")
        return result

    monkeypatch.setattr(waiter, "_hot", lossy)
    with pytest.raises(StorageUnavailableError):
        await waiter.wait_for_claim(_request(), 30.0, asyncio.Event())
    assert len(lost[0]) == 2
    for job_id in ids:  # found by the tokens the wait drew, and released
        assert (await _until_state(waiter, job_id, JobState.ENQUEUED)).attempts == 0


async def test_a_job_with_a_dedup_key_is_not_handed(open_storage: Open) -> None:
    waiter, producer = await open_storage(), await open_storage()
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(waiter)
    job_id = await producer.enqueue(Job("m", dedup_key="once"))
    assert await task == []  # woken: it claims the job itself
    assert (await producer.get_job(job_id)).state is JobState.ENQUEUED
    with pytest.raises(DuplicateJobError):
        await producer.enqueue(Job("m", dedup_key="once"))


async def test_jobs_left_over_by_a_hand_off_wake_waiters_of_the_same_storage(
    open_storage: Open,
) -> None:
    storage = await open_storage()
    parked = asyncio.create_task(storage.wait_for_claim(_request("a", 1), 30.0, asyncio.Event()))
    await _parked(storage)
    other = asyncio.create_task(storage.wait_for_work(30.0))
    await asyncio.sleep(0)
    ids = await storage.enqueue_many([Job("m"), Job("m")])
    assert [x.job_id for x in await parked] == ids[:1]
    assert await other is True  # woken at once (its own NOTIFY is ignored), not timed out


async def test_without_its_listen_connection_a_waiter_polls_and_claims(
    open_storage: Open,
) -> None:
    storage = await open_storage()
    assert await storage.listen() is True
    assert storage.listener is not None
    await storage.listener.stop()  # nothing could reach a parking: no parking
    job_id = await storage.enqueue(Job("m"))
    leases = await storage.wait_for_claim(_request(), 0.05, asyncio.Event())
    assert [x.job_id for x in leases] == [job_id]  # claimed after the poll interval
    assert await _parkings(storage) == []
    interrupt = asyncio.Event()
    interrupt.set()
    assert await storage.wait_for_claim(_request(), 30.0, interrupt) == []


async def _park_elsewhere(storage: PostgresStorage, token: str) -> None:
    """A parking written as a server of another process would write it (no
    waiter here: nothing of this process knows it parked)."""
    await storage._run(
        lambda c: c.execute(
            f"INSERT INTO {_parked_table(storage)} (park_id, server_id, queues,"
            " lease_seconds, tokens, channel, parked_at, parked_until)"
            " VALUES ('elsewhere.1', 'far', '{default}', 60, ARRAY[$1, $1 || 'b'],"
            " 'qml_nobody_listens', now(), now() + interval '1 hour')",
            token,
        ),
        action="test",
    )


@pytest.mark.parametrize("batch", [1, 2])
async def test_an_enqueue_after_one_that_found_nobody_parked_inserts_and_looks(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # the hint is trusted for a tenth of a second: here for as long as the test runs
    monkeypatch.setattr("qml.storage.postgres.storage._UNPARKED_TTL", 3600.0)
    producer = await open_storage()
    first = await producer.enqueue_many([Job("m") for _ in range(batch)])  # nobody parked
    await _park_elsewhere(producer, "tok-far")
    # inserted without the hand-off (the parking stays), but the look saw the parking
    second = await producer.enqueue_many([Job("m") for _ in range(batch)])
    assert await _parkings(producer) == ["far"]
    for job_id in first + second:
        assert (await producer.get_job(job_id)).state is JobState.ENQUEUED
    # so the next enqueue hands off again
    third = await producer.enqueue_many([Job("m") for _ in range(batch)])
    assert await _parkings(producer) == []
    held = [await producer.get_job(job_id) for job_id in third]
    assert [(j.state, j.server_id) for j in held] == [(JobState.PROCESSING, "far")] * batch
    assert [j.lease_token for j in held] == ["tok-far", "tok-farb"][:batch]


async def test_a_parking_in_this_process_makes_the_next_enqueue_hand_off(
    open_storage: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qml.storage.postgres.storage._UNPARKED_TTL", 3600.0)
    waiter, producer = await open_storage(), await open_storage()
    await producer.enqueue(Job("m"))  # nobody parked: the next enqueue would not look
    assert len(await producer.claim(_request("elsewhere"))) == 1
    task = asyncio.create_task(waiter.wait_for_claim(_request(), 30.0, asyncio.Event()))
    await _parked(waiter)
    job_id = await producer.enqueue(Job("m"))
    assert [x.job_id for x in await task] == [job_id]  # handed, not a plain wake-up
    await _check_held(waiter, await task, "srv")


async def test_a_first_parking_claims_what_was_enqueued_before_it_listened(
    open_storage: Open,
) -> None:
    waiter, producer = await open_storage(), await open_storage()
    job_id = await producer.enqueue(Job("m"))  # no LISTEN yet: no one hears its NOTIFY
    assert not _listening(waiter) and producer.listener is None
    leases = await waiter.wait_for_claim(_request(), 30.0, asyncio.Event())
    assert [x.job_id for x in leases] == [job_id]
    assert _listening(waiter)
    assert producer.listener is None  # it only enqueued


def _listening(storage: PostgresStorage) -> bool:
    listener = storage.listener
    return listener is not None and listener.connected
