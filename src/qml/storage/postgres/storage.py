"""``PostgresStorage``: the Storage contract on PostgreSQL through asyncpg.

Each hot-path operation is one statement, one round trip, for a whole batch:
claims are ``FOR UPDATE SKIP LOCKED`` with the lease token and deadline taken
from the database; outcomes (one JSON parameter), lease renewals, recoveries and
transitions are ``UPDATE … FROM`` the batch, guarded row by row (token and
state). A long ``enqueue_many`` is the exception: one transaction of statements
of 200 jobs, each chunk prepared while the one before is inserted. Counts per
queue and state and the NOTIFY wake-up are kept by triggers, outcomes per
minute by the statements that finish jobs, each in the same transaction as
the change. The SQL lives in ``queries.sql`` and ``install.sql`` beside this
module.

An idle server parks its claim (:meth:`PostgresStorage.wait_for_claim`): the
enqueue of one ready job then claims it for the longest-parked server in the
same statement and sends it over with ``NOTIFY`` on the server's own channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import asyncpg
from asyncpg import exceptions as pg

from ...clock import ensure_aware, from_epoch
from ...errors import (
    ConfigurationError,
    DuplicateJobError,
    StorageError,
)
from ...job import Job, JobState
from ...states import WORKER_CRASHED
from ..base import (
    CAP_DURABLE,
    CAP_MULTI_PROCESS,
    CAP_STORAGE_CLOCK,
    CAP_TRANSACTIONAL_ENQUEUE,
    Storage,
)
from ..requests import (
    ClaimRequest,
    HeartbeatReply,
    JobQuery,
    Lease,
    MinuteStat,
    Outcome,
    Page,
    RecoverRequest,
    RecurringClaim,
    RecurringTemplate,
    ServerInfo,
    Transition,
)
from .config import PostgresConfig, mask_password
from .driver import Conn, call_with_retry, translate
from .lane import Lane
from .listener import Listener, Waiters
from .migrate import Migrator, SchemaStatus
from .rows import (
    enqueue_json,
    enqueue_params,
    finish_json,
    json_to_jobs,
    list_jobs_sql,
    recurring_params,
    row_to_job,
    row_to_recurring,
    row_to_server,
    server_params,
)
from .sql import Names, latest_version, named_queries

logger = logging.getLogger("qml.storage.postgres")

T = TypeVar("T")
_COMPACT_EVERY = 1.0  # seconds between count compactions by one storage instance
#: Seconds a parking outlives its waiter's timeout (the waiter ends it before).
_PARK_GRACE = 0.5
#: The schema version that added the parking table (migration 0005).
_PARKED_SINCE = 5
#: Settings of every qml connection: UTC for readable timestamps in history
#: JSON; JIT off, as it only adds latency to short queue statements.
_SERVER_SETTINGS = {"application_name": "qml", "timezone": "UTC", "jit": "off"}
#: Jobs per statement of a long ``enqueue_many`` (PostgresStorage._enqueue_batch):
#: small enough that the client prepares a chunk in about the time the database
#: inserts one, large enough that a statement's fixed cost stays small.
STREAM_CHUNK = 200
_END = object()  # the end of a batch's jobs (a None among them is a bad job, not the end)
#: Seconds an enqueue trusts an earlier one that found no server parked for its
#: queue (``PostgresStorage._nobody_parked``); queues remembered at most.
_UNPARKED_TTL = 0.1
_UNPARKED_MAX = 1024
#: Parkings by any storage of this process (a one-item list, shared by instances).
_PARKS = [0]


class PostgresStorage(Storage):
    """Jobs in PostgreSQL, shared by any number of servers on any number of hosts.

    ``await storage.open()`` (or ``async with storage``) creates the pool and
    installs or upgrades the schema when ``config.auto_migrate`` is set.
    Operations open the storage lazily; the LISTEN connection is started by the
    first wait for work (:meth:`listen`).
    """

    backend_name = "postgres"
    capabilities = frozenset(
        {CAP_DURABLE, CAP_MULTI_PROCESS, CAP_TRANSACTIONAL_ENQUEUE, CAP_STORAGE_CLOCK}
    )

    def __init__(self, config: PostgresConfig | str | None = None, **kwargs: Any) -> None:
        """``config``: a :class:`PostgresConfig`, a ``postgresql://`` URL, or None
        for :meth:`PostgresConfig.from_env`. ``kwargs`` go to :class:`Storage`."""
        super().__init__(**kwargs)
        if isinstance(config, str):
            config = PostgresConfig.from_url(config)
        self.config = config if config is not None else PostgresConfig.from_env()
        self.names = Names(self.config.schema_name, self.config.table_name)
        self._q = {k: self.names.render(v) for k, v in named_queries().items()}
        self._migrator = Migrator(self.names)
        self._pool: asyncpg.Pool[Any] | None = None
        self._lanes: dict[str, Lane] = {}
        #: Server settings of a lane's connection by its name (others: the pool's).
        #: Without ``durable_claims`` the claim's commits do not wait for their WAL
        #: flush (the flush of any later durable commit covers them).
        self._lane_settings: dict[str, dict[str, str]] = (
            {}
            if self.config.durable_claims
            else {"claim": {**_SERVER_SETTINGS, "synchronous_commit": "off"}}
        )
        self._listener: Listener | None = None
        self._waiters = Waiters()
        self._own_pids: set[int] = set()
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._ready = False
        self._last_compact = 0.0
        self._claimed_since_vacuum = 0
        self._vacuum_task: asyncio.Task[None] | None = None
        #: Vacuums of the job table this instance ran (see PostgresConfig.vacuum_every).
        self.vacuums = 0
        self._companion = False
        self.synchronous_commit: str | None = None
        # hand-off: this instance's channel, its parkings and what was sent to them
        self._hand_channel = f"{self.names.channel}_{secrets.token_hex(6)}"
        self._park_prefix = secrets.token_hex(6)
        self._parks = 0
        self._hands: dict[str, asyncio.Future[Any]] = {}
        #: False on a schema older than the parking table (auto_migrate off).
        self._hand_off = self.config.hand_off
        self._has_parked = True
        #: Queues whose last enqueue found no server parked: queue -> monotonic time,
        #: valid while this process has not parked since (``_unparked_parks``).
        self._unparked: dict[str, float] = {}
        self._unparked_parks = _PARKS[0]
        self._background: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return (
            f"PostgresStorage({mask_password(self.config.database_url)!r}, "
            f"schema={self.names.schema!r}, table={self.names.table!r})"
        )

    # ------------------------------------------------------------------ lifecycle
    def sibling(self) -> PostgresStorage:
        """A storage on the same schema with one connection of its own and no
        LISTEN connection, for another thread's event loop (lease renewals)."""
        cfg = dataclasses.replace(
            self.config, min_connections=1, max_connections=1, auto_migrate=False
        )
        other = PostgresStorage(
            cfg,
            clock=self.clock,
            max_payload_bytes=self.max_payload_bytes,
            retention=self.retention,
        )
        other._companion = True
        return other

    async def open(self) -> None:
        """Connect, log the durability setting, install or upgrade the schema when
        ``auto_migrate`` is set and it is not current, and start listening for
        wake-ups. Idempotent; operations call it themselves when needed."""
        if self._ready:
            return
        if self._closed:
            raise StorageError("this PostgresStorage is closed")
        async with self._open_lock:
            await self._open_once()

    async def _open_once(self) -> None:
        if self._ready:  # another task opened it while we waited for the lock
            return
        pool = await self._create_pool()
        if self._companion:  # a second connection of an open storage: no LISTEN, no schema work
            self._pool, self._ready = pool, True
            return
        self._pool = pool
        try:
            status = await self._call(pool, self._migrator.status, "open", idempotent=True)
            self._log_open(status)
            if not status.up_to_date and self.config.auto_migrate:
                await self._call(pool, self._migrator.migrate, "migrate")
            elif status.current < _PARKED_SINCE:
                self._hand_off = self._has_parked = False
        except BaseException:
            self._pool = None
            try:
                await asyncio.wait_for(pool.close(), self.config.connect_timeout)
            except (Exception, asyncio.CancelledError):
                pool.terminate()
            raise
        self._ready = True

    async def listen(self) -> bool:
        """Start listening for wake-ups (the LISTEN connection) if this storage is
        not yet, and wait until that connection is up (at most ``connect_timeout``
        the first time). The first wait for work calls it: a storage that only
        enqueues never listens, so the NOTIFY of each enqueue does not wake every
        producing process (and its database process) for nothing. True when this
        call started it."""
        if not self._ready:
            await self.open()
        if self._companion or self._closed:
            return False
        listener = self._listener
        started = listener is None
        if listener is None:
            listener = self._listener = Listener(
                self._connect_listener,
                self.names.channel,
                self._own_pids,
                self._wake,
                hand_channel=self._hand_channel if self.config.hand_off else None,
                on_hand=self._on_hand,
            )
            await listener.start()
        # Until it first connects, wait for it (reconnections signal the waiters).
        connected = listener.connections > 0 or await listener.wait_connected(
            self.config.connect_timeout
        )
        if not connected and started:
            logger.warning(
                "LISTEN connection not ready; idle servers poll until it is",
                extra={"action": "listen_failed", "channel": self.names.channel},
            )
        return started

    async def _create_pool(self) -> asyncpg.Pool[Any]:
        cfg = self.config
        try:
            return await asyncpg.create_pool(
                cfg.database_url,
                min_size=cfg.min_connections,
                max_size=cfg.max_connections,
                timeout=cfg.connect_timeout,
                command_timeout=cfg.command_timeout,
                server_settings=_SERVER_SETTINGS,
                init=self._init_connection,
                reset=_keep_session,
            )
        except Exception as exc:
            raise (translate(exc, "connect") or StorageError(str(exc))) from exc

    def _log_open(self, status: SchemaStatus) -> None:
        self.synchronous_commit = status.synchronous_commit
        durable = status.synchronous_commit in ("on", "remote_apply", "remote_write", "local")
        logger.log(
            logging.INFO if durable else logging.WARNING,
            "PostgreSQL storage open: schema %s version %s, synchronous_commit=%s%s",
            self.names.schema,
            status.current or "(none)",
            status.synchronous_commit,
            "" if durable else " (a crash may lose acknowledged writes)",
            extra={
                "action": "storage_open",
                "backend": "postgres",
                "synchronous_commit": status.synchronous_commit,
                "schema": self.names.schema,
                "table": self.names.table,
                "schema_version": status.current,
            },
        )
        if not status.up_to_date and not self.config.auto_migrate:
            logger.warning(
                "schema %s is not at version %d and auto_migrate is off: call migrate()",
                self.names.schema,
                latest_version(),
                extra={"action": "schema_outdated", "schema": self.names.schema},
            )

    async def _init_connection(self, conn: Conn) -> None:
        pid = conn.get_server_pid()
        self._own_pids.add(pid)
        conn.add_termination_listener(lambda _c: self._own_pids.discard(pid))

    async def _connect_listener(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(
            self.config.database_url,
            timeout=self.config.connect_timeout,
            command_timeout=self.config.command_timeout,
            server_settings=_SERVER_SETTINGS,
        )

    async def _connect_lane(
        self, settings: dict[str, str] = _SERVER_SETTINGS
    ) -> asyncpg.Connection[Any]:
        """A connection of a :class:`Lane`, set up as the pool's are (``settings``:
        its server settings)."""
        cfg = self.config
        conn = await asyncpg.connect(
            cfg.database_url,
            timeout=cfg.connect_timeout,
            command_timeout=cfg.command_timeout,
            server_settings=settings,
        )
        await self._init_connection(conn)
        return conn

    async def close(self) -> None:
        """Stop listening and close the pool. Idempotent; a closed storage cannot
        be reopened (make a new one)."""
        self._closed = True
        self._ready = False
        vacuum, self._vacuum_task = self._vacuum_task, None
        if vacuum is not None and not vacuum.done():
            vacuum.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await vacuum
        listener, pool = self._listener, self._pool
        self._listener = self._pool = None
        if self._background:  # hand-offs being given back: let them end
            _, late = await asyncio.wait(self._background, timeout=self.config.command_timeout)
            for task in late:
                task.cancel()
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            await lane.close(self.config.command_timeout)
        if listener is not None:
            await listener.stop()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.config.command_timeout)
            except (Exception, asyncio.CancelledError):
                pool.terminate()
                raise

    # ------------------------------------------------------------------ schema
    async def migrate(self) -> list[int]:
        """Install or upgrade the schema; return the migration versions applied
        (empty when it was current). Safe to run from many processes at once."""
        return await self._run(self._migrator.migrate, action="migrate")

    async def schema_status(self) -> SchemaStatus:
        """Whether the schema is installed, and its applied migration versions."""
        return await self._run(self._migrator.status, action="schema_status", idempotent=True)

    async def schema_exists(self) -> bool:
        """Whether the job table and its version table exist."""
        status = await self.schema_status()
        return status.installed and bool(status.versions)

    async def migrate_if_needed(self) -> bool:
        """Migrate only when the schema is missing or older than this qml;
        return whether anything was applied."""
        if (await self.schema_status()).up_to_date:
            return False
        return bool(await self.migrate())

    @staticmethod
    def schema_version() -> int:
        """The schema version this qml installs (the latest migration)."""
        return latest_version()

    async def get_job_count(self, queue: str) -> int:
        """Number of jobs in ``queue``, all states (from the counters)."""
        return int(await self._fetchval("job_count", queue))

    # ------------------------------------------------------------------ plumbing
    async def _run(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        action: str,
        idempotent: bool = False,
        resume: Callable[[Conn], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``fn`` on a pooled connection of the opened storage (see :meth:`_call`)."""
        if not self._ready:
            await self.open()
        pool = self._pool
        if pool is None:
            raise StorageError("this PostgresStorage is closed")
        return await self._call(pool, fn, action, idempotent=idempotent, resume=resume)

    async def _call(
        self,
        pool: asyncpg.Pool[Any],
        fn: Callable[[Conn], Awaitable[T]],
        action: str,
        *,
        idempotent: bool = False,
        resume: Callable[[Conn], Awaitable[T]] | None = None,
    ) -> T:
        return await call_with_retry(
            pool,
            fn,
            action,
            acquire_timeout=self.config.connect_timeout,
            idempotent=idempotent,
            resume=resume,
        )

    async def _hot(
        self,
        name: str,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        resume: Callable[[Conn], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``fn`` (not idempotent) on the connection of its own for ``name``
        (see :mod:`.lane`), with the pool's retry rules; on the pool when that
        connection is busy, and always on a companion storage (one connection)."""
        if not self._ready:
            await self.open()
        lane = self._lanes.get(name)
        if lane is None:
            if self._companion or self._pool is None:
                return await self._run(fn, action=name, resume=resume)
            settings = self._lane_settings.get(name, _SERVER_SETTINGS)
            lane = self._lanes[name] = Lane(functools.partial(self._connect_lane, settings))
        if lane.busy:
            return await self._run(fn, action=name, resume=resume)
        lane.busy = True
        try:
            return await call_with_retry(
                cast("asyncpg.Pool[Any]", lane),  # only its acquire(timeout=...) is used
                fn,
                name,
                acquire_timeout=self.config.connect_timeout,
                resume=resume,
            )
        finally:
            lane.busy = False

    async def _fetch(self, name: str, *args: Any, idempotent: bool = True) -> list[Any]:
        sql, params = self._q[name], _utc_args(args)
        return await self._run(lambda c: c.fetch(sql, *params), action=name, idempotent=idempotent)

    async def _fetchval(self, name: str, *args: Any, idempotent: bool = True) -> Any:
        sql, params = self._q[name], _utc_args(args)
        return await self._run(
            lambda c: c.fetchval(sql, *params), action=name, idempotent=idempotent
        )

    async def _execute(self, name: str, *args: Any, idempotent: bool = True) -> str:
        sql, params = self._q[name], _utc_args(args)
        return await self._run(
            lambda c: c.execute(sql, *params), action=name, idempotent=idempotent
        )

    def _start_vacuum(self) -> None:
        if self._vacuum_task is not None and not self._vacuum_task.done():
            return  # the running one covers these claims too
        self._claimed_since_vacuum = 0
        self._vacuum_task = asyncio.create_task(self._vacuum(), name="qml-pg-vacuum")

    async def _vacuum(self) -> None:
        """VACUUM the job table on a connection of its own (VACUUM cannot run in a
        transaction), one instance at a time (a session advisory lock; another
        holder means a vacuum is under way). Best effort: failures are logged."""
        conn: asyncpg.Connection[Any] | None = None
        try:
            conn = await self._connect_lane()
            key = self.names.lock_key("vacuum")
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                try:
                    await conn.execute(f"VACUUM {self.names.qualified_table}")
                    self.vacuums += 1
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a later claim tries again
            logger.warning(
                "vacuum of %s failed: %s",
                self.names.qualified_table,
                exc,
                extra={"action": "vacuum_failed"},
            )
        finally:
            if conn is not None:
                await _close_quietly(conn, self.config.command_timeout)

    def _wake(self) -> None:
        """Wake this process's waiters now (our own NOTIFYs are ignored)."""
        self._waiters.wake_all()

    async def _maybe_compact(self) -> None:
        """Fold count deltas into the counts (at most every second per instance;
        best effort: a failure only leaves more deltas for the next time)."""
        now = time.monotonic()
        if now - self._last_compact < _COMPACT_EVERY:
            return
        self._last_compact = now
        try:
            await self._execute("compact_counts", self.names.lock_key("compact"))
        except StorageError as exc:
            logger.warning("count compaction failed: %s", exc, extra={"action": "compact_failed"})

    # ------------------------------------------------------------------ enqueue
    async def _enqueue(self, jobs: list[Job], payloads: list[bytes], connection: Any) -> list[str]:
        params = (enqueue_json(jobs, payloads),)
        if not self._ready:
            await self.open()  # installs the schema if auto_migrate (and tells its version)
        # Not inside the caller's transaction (it would hold the parking until it
        # ends), nor with dedup keys (see enqueue_hand_off in queries.sql).
        ready: set[str] = set()
        if (
            connection is None
            and self._hand_off
            and not any(job.dedup_key is not None for job in jobs)
        ):
            # by this client's clock; the statements decide by the database's
            ready = {job.queue for job in jobs if job.state is JobState.ENQUEUED}
        probe = bool(ready) and self._nobody_parked(ready)
        if not ready:
            sql = self._q["enqueue"]
        elif probe:  # a plain insert that also looks for parkings
            sql = self._q["enqueue_probe"]
        else:
            sql = self._q["enqueue_hand_off_one" if len(jobs) == 1 else "enqueue_hand_off"]
        parks = _PARKS[0]
        handed = 0
        parked = False

        async def insert(conn: Conn) -> None:
            nonlocal handed, parked
            try:
                if conn.is_in_transaction():  # a savepoint inside the caller's transaction
                    async with conn.transaction():
                        await conn.execute(sql, *params)
                elif probe:
                    parked = bool(await conn.fetchval(sql, *params))
                elif ready:  # a row back: jobs went to a parked server
                    rows = await conn.fetch(sql, *params)
                    handed = int(rows[0]["handed"]) if rows else 0
                else:  # one statement is atomic by itself: no BEGIN/COMMIT round trips
                    await conn.execute(sql, *params)
            except pg.UniqueViolationError as exc:
                raise self._duplicate(exc) from exc

        if connection is None:
            await self._hot("enqueue", insert)
            if ready:
                self._saw_parkings(ready, parked or handed > 0, parks)
            if handed < len(jobs):  # our own NOTIFYs are ignored: wake local waiters
                self._wake()
        else:
            if not isinstance(connection, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
                raise ConfigurationError(
                    "connection must be an asyncpg connection (or pool connection)"
                )
            try:
                await insert(connection)
            except Exception as exc:
                err = translate(exc, "enqueue")
                if err is None:
                    raise
                raise err from exc
        return [j.id for j in jobs]

    async def _enqueue_batch(
        self, jobs: Iterable[Job], now: datetime, connection: Any = None
    ) -> list[str]:
        """A batch longer than :data:`STREAM_CHUNK` (outside a caller's transaction)
        is stored in one transaction, a statement per chunk, each chunk prepared and
        encoded while the database inserts the one before (the client's work and
        the database's overlap: two processes). Shorter batches take
        :meth:`_enqueue`'s single statement."""
        if connection is not None:
            return await super()._enqueue_batch(jobs, now, connection)
        it = iter(jobs)

        def take() -> list[tuple[Job, bytes]]:
            return [self.prepare(j, now) for j in itertools.islice(it, STREAM_CHUNK)]

        first = take()
        following: Job | object = next(it, _END)
        if following is _END:
            if not first:
                return []
            return await self._enqueue([p[0] for p in first], [p[1] for p in first], None)
        it = itertools.chain((cast(Job, following),), it)
        chunks: list[str] = []
        ids: list[str] = []
        done = False  # the jobs are used up: every chunk is in ``chunks``

        def encode_next(batch: list[tuple[Job, bytes]] | None = None) -> bool:
            """Encode ``batch`` or else the next chunk of jobs; False when none is left."""
            nonlocal done
            batch = take() if batch is None else batch
            if not batch:
                done = True
                return False
            chunks.append(enqueue_json([p[0] for p in batch], [p[1] for p in batch]))
            ids.extend(p[0].id for p in batch)
            return True

        encode_next(first)
        sql = self._q["enqueue"]

        async def stream(conn: Conn) -> None:
            # A retry (nothing was committed) sends the chunks encoded so far
            # again, then goes on with the jobs not prepared yet.
            pending: asyncio.Future[str] | None = None
            sent = 0
            try:
                async with conn.transaction():
                    try:
                        while sent < len(chunks) or (not done and encode_next()):
                            if pending is not None:
                                await pending
                            pending = asyncio.ensure_future(conn.execute(sql, chunks[sent]))
                            sent += 1
                            await asyncio.sleep(0)  # sends it; then encode the next chunk
                            if sent == len(chunks) and not done:
                                encode_next()
                        if pending is not None:
                            await pending
                    finally:
                        if pending is not None and not pending.done():
                            # leaving early (a job failed to prepare, or cancelled): the
                            # statement in flight ends before the transaction rolls back
                            await asyncio.wait([pending])
                            if not pending.cancelled():
                                pending.exception()  # retrieved: the first error wins
            except pg.UniqueViolationError as exc:
                raise self._duplicate(exc) from exc

        await self._hot("enqueue", stream)
        self._wake()  # our own NOTIFYs are ignored: wake local waiters
        return ids

    def _nobody_parked(self, queues: set[str]) -> bool:
        """Whether the last enqueue into each of ``queues`` found no server parked
        for it, less than ``_UNPARKED_TTL`` seconds ago and with no parking by this
        process since: the next enqueue then skips the hand-off statement, whose
        extra work costs a one-job enqueue about a fifth of its time (the probe
        statement looks again, so the one after hands off once a server parks)."""
        if self._unparked_parks != _PARKS[0]:  # a server of this process parked since
            self._unparked.clear()
            self._unparked_parks = _PARKS[0]
            return False
        now = time.monotonic()
        for queue in queues:
            seen = self._unparked.get(queue)
            if seen is None or now - seen > _UNPARKED_TTL:
                return False
        return True

    def _saw_parkings(self, queues: set[str], parked: bool, parks: int) -> None:
        """Record what an enqueue into ``queues`` found: a parked server (hand off
        next time) or none. ``parks``: this process's parkings when it was sent; a
        server of this process that parked meanwhile may have been missed."""
        if parks != _PARKS[0] or self._unparked_parks != parks:
            return
        if parked:
            for queue in queues:
                self._unparked.pop(queue, None)
            return
        if len(self._unparked) >= _UNPARKED_MAX:
            self._unparked.clear()
        now = time.monotonic()
        for queue in queues:
            self._unparked[queue] = now

    def _duplicate(self, exc: pg.UniqueViolationError) -> DuplicateJobError:
        if (exc.constraint_name or "").startswith(self.names.table + "_dedup"):
            return DuplicateJobError("a job with this dedup_key already exists")
        return DuplicateJobError("a job with this id already exists")

    # ------------------------------------------------------------------ claim & finish
    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        queues = list(dict.fromkeys(request.queues))
        sql = self._q["claim"]
        params = _utc_args(
            (
                request.server_id,
                queues,
                request.limit,
                request.now,
                float(request.lease_seconds),
                request.max_suspects,
                request.suspect_crashes,
                None,
            )
        )
        rows = await self._hot("claim", lambda c: c.fetch(sql, *params))
        return self._claimed(rows)

    def _claimed(self, rows: list[Any]) -> list[Lease]:
        """The leases of the rows a claim returned, in claim order."""
        if rows and self.config.vacuum_every:
            self._claimed_since_vacuum += len(rows)
            if self._claimed_since_vacuum >= self.config.vacuum_every:
                self._start_vacuum()
        return [_lease(row) for row in sorted(rows, key=lambda r: r["rn"])]

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        # The same (job, token) twice: only the first can apply, as in memory.
        first: dict[tuple[str, str], int] = {}
        for i, o in enumerate(outcomes):
            first.setdefault((o.job_id, o.token), i)
        unique = [outcomes[i] for i in sorted(first.values())]
        encoded = finish_json(unique)
        at = ensure_aware(now) if now is not None else None
        sql, check = self._q["finish"], self._q["finish_applied"]

        async def apply(conn: Conn, subset: list[int]) -> dict[int, str]:
            if not subset:
                return {}
            if len(subset) == len(unique):
                rows = await conn.fetch(sql, encoded, at)
            else:
                rows = await conn.fetch(sql, finish_json([unique[i] for i in subset]), at)
            return {subset[r["ord"] - 1]: r["target"] for r in rows}

        async def once(conn: Conn) -> dict[int, str]:
            return await apply(conn, list(range(len(unique))))

        async def after_loss(conn: Conn) -> dict[int, str]:
            # The lost statement may have committed: keep what landed, redo the rest.
            rows = await conn.fetch(check, [o.job_id for o in unique], [o.token for o in unique])
            landed = {r["ord"] - 1 for r in rows}
            done = {i: unique[i].target_state.value for i in landed}
            done.update(await apply(conn, [i for i in range(len(unique)) if i not in landed]))
            return done

        applied = await self._hot("finish", once, resume=after_loss)
        if any(t == JobState.ENQUEUED.value for t in applied.values()):
            self._wake()
        index = {(o.job_id, o.token): i for i, o in enumerate(unique)}
        return [
            first[(o.job_id, o.token)] == pos and index[(o.job_id, o.token)] in applied
            for pos, o in enumerate(outcomes)
        ]

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        pairs = list(dict.fromkeys(leases))
        rows = await self._fetch(
            "extend_leases", [p[0] for p in pairs], [p[1] for p in pairs], float(lease_seconds), now
        )
        got = {
            pairs[r["ord"] - 1]: HeartbeatReply(True, r["cancel_requested"], r["lease_expires_at"])
            for r in rows
        }
        return [got.get((job_id, token), HeartbeatReply(False)) for job_id, token in leases]

    async def _recover_expired(self, request: RecoverRequest) -> list[str]:
        rows = await self._fetch(
            "recover_expired",
            request.now,
            request.limit,
            request.max_crashes,
            float(request.crash_backoff),
            WORKER_CRASHED,
            float(request.failed_ttl),
        )
        if rows:
            self._wake()
        return [r["id"] for r in rows]

    async def _activate_due(self, now: datetime | None, limit: int) -> int:
        n = int(await self._fetchval("activate_due", now, limit))
        if n:
            self._wake()
        await self._maybe_compact()
        return n

    async def _transition_many(
        self, job_ids: list[str], t: Transition, now: datetime | None
    ) -> list[str]:
        rows = await self._fetch(
            "transition_many",
            job_ids,
            t.to.value,
            [s.value for s in t.from_states],
            t.reason,
            t.ttl,
            t.reset_attempts,
            t.run_at,
            now,
            idempotent=False,
        )
        moved = sorted(r["ord"] for r in rows)
        if moved and t.to is JobState.ENQUEUED:
            self._wake()
        return [job_ids[i - 1] for i in moved]

    async def _request_cancel(self, job_id: str) -> bool:
        return await self._fetchval("request_cancel", job_id) is not None

    # ------------------------------------------------------------------ reads
    async def _get(self, job_id: str) -> Job | None:
        rows = await self._fetch("get_job", job_id)
        return row_to_job(rows[0]) if rows else None

    async def _list_jobs(self, query: JobQuery) -> Page:
        sql, args = list_jobs_sql(self._q["list_jobs"], query)
        rows = await self._run(lambda c: c.fetch(sql, *args), action="list_jobs", idempotent=True)
        items = [row_to_job(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return Page(items, items[-1].id if more and items else None)

    async def _counts(self) -> dict[tuple[str, JobState], int]:
        await self._maybe_compact()
        rows = await self._fetch("counts")
        return {(r["queue"], JobState(r["state"])): int(r["n"]) for r in rows}

    async def _history(self, minutes: int, now: datetime | None) -> list[MinuteStat]:
        rows = await self._fetch("history", minutes, now)
        return [
            MinuteStat(from_epoch(r["m"] * 60.0), int(r["succeeded"]), int(r["failed"]))
            for r in rows
        ]

    async def _oldest_enqueued(self, queues: list[str]) -> dict[str, datetime]:
        rows = await self._fetch("oldest_enqueued", queues)
        return {r["queue"]: r["oldest"] for r in rows}

    # ------------------------------------------------------------------ queues
    async def _set_queue_paused(self, queue: str, paused: bool) -> None:
        await self._execute("pause_queue" if paused else "resume_queue", queue)
        if not paused:
            self._wake()

    async def _paused_queues(self) -> set[str]:
        return {r["queue"] for r in await self._fetch("paused_queues")}

    # ------------------------------------------------------------------ recurring
    async def _upsert_recurring(self, template: RecurringTemplate) -> None:
        await self._execute("upsert_recurring", *recurring_params(template))

    async def _get_recurring(self, template_id: str) -> RecurringTemplate | None:
        rows = await self._fetch("get_recurring", template_id)
        return row_to_recurring(rows[0]) if rows else None

    async def _list_recurring(self) -> list[RecurringTemplate]:
        return [row_to_recurring(r) for r in await self._fetch("list_recurring")]

    async def _remove_recurring(self, template_id: str) -> bool:
        return await self._fetchval("remove_recurring", template_id, idempotent=False) is not None

    async def _set_recurring_paused(self, template_id: str, paused: bool) -> bool:
        return await self._fetchval("set_recurring_paused", template_id, paused) is not None

    async def _claim_due_recurring(
        self, server_id: str, limit: int, claim_seconds: float, now: datetime | None
    ) -> list[RecurringClaim]:
        rows = await self._fetch(
            "claim_due_recurring", server_id, limit, float(claim_seconds), now, idempotent=False
        )
        out = []
        for row in sorted(rows, key=lambda r: r["id"]):
            token = row["claimed_by"].rsplit("#", 1)[1]
            out.append(RecurringClaim(row_to_recurring(row), token, row["claimed_at"]))
        return out

    async def _park_recurring(
        self,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool:
        q = self._q
        params = enqueue_params(jobs, payloads, stamped=True)

        async def park(conn: Conn) -> bool:
            async with conn.transaction():
                held = await conn.fetchval(
                    q["lock_recurring_claim"], claim.template.id, claim.token
                )
                if held is None:
                    return False
                inserted: set[str] = set()
                if jobs:
                    rows = await conn.fetch(q["enqueue_skip_used"], *params)
                    inserted = {r["id"] for r in rows}
                last = next((j.id for j in reversed(jobs) if j.id in inserted), None)
                await conn.execute(
                    q["park_recurring"],
                    claim.template.id,
                    *_utc_args((next_run_at, last_run_at)),
                    last,
                )
                return True

        parked = await self._run(park, action="park_recurring")
        if parked and jobs:
            self._wake()
        return parked

    # ------------------------------------------------------------------ cleanup
    async def _delete_expired(self, limit: int, now: datetime | None) -> int:
        n = int(await self._fetchval("delete_expired", now, limit))
        await self._maybe_compact()
        return n

    async def _prune(
        self, dedup_older_than: float, stats_older_than: float, now: datetime | None
    ) -> None:
        await self._execute("prune_dedup", float(dedup_older_than), now)
        await self._execute("prune_stats", float(stats_older_than), now)
        if self._has_parked:
            await self._execute("prune_parked", now)

    # ------------------------------------------------------------------ servers
    async def _heartbeat_server(self, info: ServerInfo) -> None:
        await self._execute("heartbeat_server", *server_params(info))

    async def _remove_server(self, server_id: str) -> None:
        await self._execute("remove_server", server_id)

    async def _list_servers(self) -> list[ServerInfo]:
        return [row_to_server(r) for r in await self._fetch("list_servers")]

    async def _prune_servers(self, dead_after: float, now: datetime | None) -> int:
        return int(await self._fetchval("prune_servers", float(dead_after), now))

    # ------------------------------------------------------------------ wake-up
    async def _wait_for_work(self, timeout: float) -> bool:
        # Work enqueued before the LISTEN began was not signalled: the first wait
        # looks for it once the LISTEN is up.
        if await self.listen() and await self._fetchval("any_ready"):
            return True
        return await self._waiters.wait(timeout)

    # ------------------------------------------------------------------ hand-off
    @property
    def hands_off_claims(self) -> bool:
        return self._hand_off and not self._companion

    async def _wait_for_claim(
        self, request: ClaimRequest, timeout: float, interrupt: asyncio.Event
    ) -> list[Lease]:
        """Claim for ``request``, or park it (``park`` in queries.sql) and wait for
        jobs an enqueue claims for this parking (``enqueue_hand_off``), another
        wake-up, ``interrupt`` or the timeout; then end the parking (``unpark``).
        However the wait ends, what was claimed for it is returned or given back
        (a cancelled or failed wait), never left held by nobody."""
        if not self._ready:
            await self.open()
        if not self.hands_off_claims:
            return await self._wait_interruptibly(timeout, interrupt)
        if interrupt.is_set():
            return []
        await self.listen()  # the park statement claims what came before the LISTEN
        listener = self._listener
        if listener is None or not listener.connected:  # nothing would reach it: poll
            return await self._wait_then_claim(request, timeout, interrupt)
        self._parks += 1
        _PARKS[0] += 1  # enqueues of this process hand off again (_nobody_parked)
        park_id = f"{self._park_prefix}.{self._parks}"
        # The claim of the park statement and a later hand-off use these tokens.
        tokens = [str(uuid.uuid4()) for _ in range(request.limit)]
        # One future for the whole wait: jobs sent here set it to their JSON, any
        # other wake-up (also one during the park statement) to None.
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._hands[park_id] = fut
        self._waiters.add(fut)
        try:
            sql = self._q["park"]
            params = _utc_args(
                (
                    request.server_id,
                    list(dict.fromkeys(request.queues)),
                    request.limit,
                    request.now,
                    float(request.lease_seconds),
                    request.max_suspects,
                    request.suspect_crashes,
                    tokens,
                    park_id,
                    self._hand_channel,
                    float(timeout + _PARK_GRACE),
                )
            )
            try:
                rows = await self._hot("claim", lambda c: c.fetch(sql, *params))
            except BaseException as exc:  # it may have parked or claimed all the same
                await self._abandon_after(exc, park_id, tokens)
                raise
            finally:  # and once parked: enqueues sent meanwhile may not have seen it
                _PARKS[0] += 1
            if rows:
                return self._claimed(rows)
            # An interrupt that came during the park statement ends the wait at once
            # (the caller wants another claim: a suspect of its own has ended, say).
            stop = None if interrupt.is_set() else asyncio.ensure_future(interrupt.wait())
            try:
                if stop is not None and not fut.done():
                    await asyncio.wait(
                        {fut, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
            except BaseException as exc:
                await self._abandon_after(exc, park_id, tokens)
                raise
            finally:
                if stop is not None:
                    stop.cancel()
            # Shielded: cancelled now, what it takes is given back, not dropped.
            settling = asyncio.ensure_future(self._settle(park_id, tokens))
            try:
                return await asyncio.shield(settling)
            except asyncio.CancelledError:
                settling.add_done_callback(self._give_back_settled)
                raise
        finally:
            self._waiters.discard(fut)
            self._hands.pop(park_id, None)

    def _on_hand(self, payload: str) -> None:
        """A notification on the hand-off channel: ``<park id> <jobs JSON>``."""
        park_id, _, jobs = payload.partition(" ")
        fut = self._hands.get(park_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(jobs)
            return
        if park_id.startswith(self._park_prefix + ".") and jobs:
            # a parking of ours whose wait is over (its end failed or raced): give back
            self._in_background(self._give_back_json(jobs))

    async def _settle(self, park_id: str, tokens: list[str]) -> list[Lease]:
        """After a wait: the jobs sent to the parking, else end it (``unpark``) and
        take what was claimed for it before it ended."""
        fut = self._hands.get(park_id)
        if fut is not None and fut.done() and fut.result():
            return await self._handed(fut.result(), tokens)
        sql = self._q["unpark"]
        try:
            try:
                ended = await self._hot("claim", lambda c: c.fetch(sql, park_id))
            except StorageError:  # once more, on any connection (a repeat finds no row)
                ended = await self._run(
                    lambda c: c.fetch(sql, park_id), action="unpark", idempotent=True
                )
        except StorageError as exc:  # it ends by itself; a job handed meanwhile comes back
            _unpark_failed(park_id, exc)
            return []
        if ended:
            return []  # nothing was handed to it
        if fut is not None and fut.done() and fut.result():  # arrived meanwhile
            return await self._handed(fut.result(), tokens)
        return await self._take(tokens)

    async def _handed(self, jobs_json: str, tokens: list[str]) -> list[Lease]:
        """The jobs sent to a parking (read by their tokens when they did not fit)."""
        if not jobs_json:
            return await self._take(tokens)
        leases = [_lease_of(job) for job in json_to_jobs(jobs_json)]
        if any(lease.token not in tokens for lease in leases):  # never run another's
            raise StorageError("a hand-off arrived with another parking's token")
        return leases

    async def _take(self, tokens: list[str]) -> list[Lease]:
        """The jobs claimed with a parking's tokens whose notification was not read."""
        try:
            rows = await self._fetch("handed", tokens)
        except StorageError as exc:
            logger.warning(
                "could not read the jobs handed to a parking (%s); they return when their"
                " leases expire",
                exc,
                extra={"action": "hand_off_lost"},
            )
            return []
        return [_lease(row) for row in rows]

    async def _abandon_after(self, exc: BaseException, park_id: str, tokens: list[str]) -> None:
        """End a wait that failed (in the background: the storage may be down) or
        was cancelled (before the cancellation goes on, shielded from another)."""
        ending = self._in_background(self._abandon(park_id, tokens))
        if isinstance(exc, asyncio.CancelledError):
            await asyncio.shield(ending)

    async def _abandon(self, park_id: str, tokens: list[str]) -> None:
        """The wait failed or was cancelled: end the parking and give back what was
        claimed for it (a release, no attempt counted)."""
        try:
            leases = await self._settle(park_id, tokens)
        except Exception as exc:
            _unpark_failed(park_id, exc)
            return
        await self._give_back(leases)

    async def _give_back_json(self, jobs_json: str) -> None:
        try:
            leases = [_lease_of(job) for job in json_to_jobs(jobs_json)]
        except Exception as exc:  # unreadable: they return when their leases expire
            logger.warning("unreadable hand-off (%s)", exc, extra={"action": "hand_off_lost"})
            return
        await self._give_back(leases)

    def _give_back_settled(self, settling: asyncio.Future[list[Lease]]) -> None:
        if not settling.cancelled() and settling.exception() is None:
            self._in_background(self._give_back(settling.result()))

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run ``coro`` on its own (a reference is kept until it ends)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection's supervisor (None until the first wait for work
        or :meth:`listen`)."""
        return self._listener


async def _close_quietly(conn: asyncpg.Connection[Any], timeout: float) -> None:
    """Close ``conn``; drop it instead if that fails (a cancellation still propagates)."""
    try:
        await asyncio.wait_for(conn.close(), timeout)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:
        conn.terminate()


def _unpark_failed(park_id: str, exc: Exception) -> None:
    logger.warning(
        "could not end the parking %s (%s); jobs handed to it return when their leases expire",
        park_id,
        exc,
        extra={"action": "unpark_failed"},
    )


def _lease(row: Any) -> Lease:
    return _lease_of(row_to_job(row))


def _lease_of(job: Job) -> Lease:
    assert job.lease_token is not None and job.lease_expires_at is not None
    return Lease(job, job.lease_token, job.lease_expires_at)


def _utc_args(args: Sequence[Any]) -> tuple[Any, ...]:
    """Naive datetimes mean UTC in qml (asyncpg would read them as local time)."""
    return tuple(ensure_aware(a) if isinstance(a, datetime) else a for a in args)


async def _keep_session(conn: Conn) -> None:
    """Pool reset hook: qml leaves no session state behind (no SET, LISTEN or
    session locks), so skip asyncpg's reset query, one round trip per release.
    asyncpg still rolls back a transaction left open."""


__all__ = ["PostgresStorage"]
