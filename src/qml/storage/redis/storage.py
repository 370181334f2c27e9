"""``RedisStorage``: jobs in Redis, every multi-key change one Lua script.

The key layout is in :mod:`.keys`, the scripts in ``scripts/*.lua`` (see
:mod:`.scripts`), the encoding in :mod:`.codec`, the wake-up signal in
:mod:`.wake`, recurring templates and servers in :mod:`.registry`. Times
come from Redis ``TIME`` unless a request carries an explicit ``now``.
redis-py errors never escape: they become :class:`StorageUnavailableError`
(connection lost, timed out, read-only replica) or :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...clock import Clock
from ...errors import DuplicateJobError, StorageError, StorageUnavailableError
from ...job import Job, JobState
from ...serialization import dumps
from ...states import DEFAULT_RETENTION, WORKER_CRASHED, Retention
from ..base import CAP_DURABLE, CAP_MULTI_PROCESS, CAP_STORAGE_CLOCK, Storage
from ..factory import mask_url
from ..requests import (
    ClaimRequest,
    HeartbeatReply,
    JobQuery,
    Lease,
    MinuteStat,
    Outcome,
    OutcomeKind,
    Page,
    RecoverRequest,
    Transition,
)
from .codec import (
    Arg,
    decode_job,
    decode_values,
    encode_new_job,
    from_us,
    micros,
    opt_us,
    to_us,
)
from .config import RedisConfig
from .errors import hash_reply, text, tokens, translate
from .guards import check_server
from .keys import RedisKeys
from .lane import Lane
from .packing import fast_packing
from .registry import RegistryHooks
from .scripts import ScriptRunner, executor
from .wake import WakeListener

log = logging.getLogger("qml.storage.redis")

_STATES = {s.value: s for s in JobState}


class RedisStorage(RegistryHooks, Storage):
    """Jobs in Redis (redis-py asyncio): durable, shared by many processes and hosts.

    ``RedisStorage(RedisConfig(url=..., key_prefix=...))``; keyword arguments
    go to :class:`~qml.storage.base.Storage` (``clock``, ``max_payload_bytes``,
    ``retention``). ``config.completed_job_ttl`` overrides the Succeeded TTL.
    The storage opens itself on first use; :meth:`open` does it explicitly and
    runs the startup checks (see :mod:`.guards`).
    """

    backend_name = "redis"
    capabilities = frozenset({CAP_DURABLE, CAP_MULTI_PROCESS, CAP_STORAGE_CLOCK})

    #: Ids a single ``list.lua`` call may examine (bounds the time Redis is busy).
    list_scan_budget = 5000
    #: Dedup keys dropped per ``prune.lua`` call.
    prune_batch = 10_000

    def __init__(
        self,
        config: RedisConfig | None = None,
        *,
        clock: Clock | None = None,
        retention: Retention = DEFAULT_RETENTION,
        **kwargs: Any,
    ) -> None:
        self.config = config or RedisConfig()
        if self.config.completed_job_ttl is not None:
            retention = replace(
                retention, succeeded_ttl=timedelta(seconds=self.config.completed_job_ttl)
            )
        super().__init__(clock=clock, retention=retention, **kwargs)
        self.keys = RedisKeys(self.config.key_prefix)
        self._where = mask_url(self.config.url)
        self._client: Redis | None = None
        self._wake_client: Redis | None = None
        self._run: ScriptRunner | None = None
        self._listener: WakeListener | None = None
        self._claim_gen: int | None = None
        self._waiter_id = secrets.token_hex(8)
        self._waiting = 0
        self._parks = 0
        self._open_lock = asyncio.Lock()
        self._companion = False
        self._lanes: dict[str, Lane] = {}

    def __repr__(self) -> str:
        return f"RedisStorage({self._where!r}, key_prefix={self.config.key_prefix!r})"

    # ------------------------------------------------------------------ lifecycle
    def sibling(self) -> RedisStorage:
        """A storage on the same keys with a small pool of its own and no wake-up
        subscription, for another thread's event loop (lease renewals)."""
        other = RedisStorage(
            replace(self.config, pool_size=2),
            clock=self.clock,
            retention=self.retention,
            max_payload_bytes=self.max_payload_bytes,
        )
        other._companion = True
        return other

    async def open(self) -> None:
        """Connect, check the server (see :mod:`.guards`), load the scripts and
        subscribe to wake-up signals; idempotent."""
        if self._client is None:
            async with self._open_lock:
                await self._connect()

    async def _connect(self) -> None:
        if self._client is not None:  # opened while we waited for the lock
            return
        cfg = self.config
        conn: dict[str, Any] = {
            "socket_timeout": cfg.command_timeout,
            "socket_connect_timeout": cfg.command_timeout,
            "retry": Retry(NoBackoff(), 0),
            **_no_maintenance_notifications(),
        }
        pool = BlockingConnectionPool.from_url(
            cfg.url, max_connections=cfg.pool_size, timeout=cfg.command_timeout, **conn
        )
        pool.connection_class = fast_packing(pool.connection_class)
        client = Redis.from_pool(pool)
        wake_client = Redis.from_pool(
            ConnectionPool.from_url(
                cfg.url,
                max_connections=2,
                health_check_interval=30,
                client_name=f"qml-wake:{cfg.key_prefix}",
                **conn,
            )
        )
        run = ScriptRunner(client, self.keys.tag)
        listener: WakeListener | None = None
        try:
            with translate("open"):
                if not self._companion:  # the first storage checked the server
                    await check_server(client, self._where)
                await run.load()
            if self._companion:  # lease renewals only: no wake-up subscription
                await wake_client.aclose()
                self._client, self._run = client, run
                return

            async def read_generation() -> int:
                return int(await executor(client)("GET", self.keys.wake_gen) or 0)

            listener = WakeListener(wake_client, self.keys.wake, read_generation)
            listener.start()
            try:
                await asyncio.wait_for(listener.subscribed.wait(), cfg.command_timeout)
            except TimeoutError:
                log.warning(
                    "redis wake-up subscription at %s not ready; polling until it is",
                    self._where,
                    extra={"action": "redis_wake_pending"},
                )
        except BaseException:
            if listener is not None:
                await listener.stop()
            await wake_client.aclose()
            await client.aclose()
            raise
        self._client, self._wake_client, self._run = client, wake_client, run
        self._listener = listener
        log.debug(
            "redis storage open at %s, prefix %s",
            self._where,
            cfg.key_prefix,
            extra={"action": "redis_open"},
        )

    async def close(self) -> None:
        """Stop listening and close every connection; idempotent."""
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            await lane.close()
        listener, self._listener = self._listener, None
        clients = (self._wake_client, self._client)
        self._client = self._wake_client = None
        self._run = None
        if listener is not None:
            await listener.stop()
        for client in clients:
            if client is not None:
                await client.aclose()

    async def _c(self) -> Redis:
        if self._client is None:
            await self.open()
        assert self._client is not None
        return self._client

    async def _script(self, name: str, *args: Arg) -> Any:
        if self._run is None:
            await self.open()
        assert self._run is not None
        with translate(name):
            return await self._run(name, *args)

    @property
    def _lane(self) -> Lane | None:
        """The enqueue lane (None until the first enqueue on an open storage)."""
        return self._lanes.get("enqueue")

    async def _hot(self, name: str, *args: Arg) -> Any:
        """Run script ``name`` on the lane of its own (see :mod:`.lane`): one per
        hot operation (enqueue, claim, finish, extend), as the server's fetch and
        flush loops each make one call at a time. A caller that finds the lane
        busy, or a storage not yet open, uses the pool."""
        lane = self._lanes.get(name)
        if lane is None:
            client, run = self._client, self._run
            if client is None or run is None:
                return await self._script(name, *args)
            lane = self._lanes[name] = Lane(client, self.keys.tag, run)
        if lane.busy:
            return await self._script(name, *args)
        with translate(name):
            return await lane.script(name, *args)

    async def _cmd(self, command: str, *args: Arg) -> Any:
        client = await self._c()
        with translate(command.lower()):
            return await executor(client)(command, *args)

    def _observe(self, generation: Any) -> None:
        if generation and self._listener is not None:
            self._listener.observe(int(generation))

    async def _redis_now(self, now: datetime | None) -> int:
        if now is not None:
            return to_us(now)
        reply = await self._cmd("TIME")
        return int(reply[0]) * 1_000_000 + int(reply[1])

    async def purge(self) -> int:
        """Delete every key of this storage's prefix (tests, teardown); returns how many."""
        client = await self._c()
        n = 0
        with translate("purge"):
            batch: list[bytes] = []
            async for key in client.scan_iter(match=self.keys.pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    n += await client.unlink(*batch)
                    batch = []
            if batch:
                n += await client.unlink(*batch)
        return n

    # ------------------------------------------------------------------ enqueue, claim
    async def _enqueue(self, jobs: list[Job], payloads: list[bytes], connection: Any) -> list[str]:
        args: list[Arg] = ["", len(jobs)]
        for job, payload in zip(jobs, payloads, strict=True):
            args += encode_new_job(job, payload)
        ok, detail = await self._hot("enqueue", *args)
        if not ok:
            raise DuplicateJobError(text(detail))
        self._observe(detail)
        return [j.id for j in jobs]

    async def _claim(self, request: ClaimRequest) -> list[Lease]:
        reply = await self._hot(
            "claim",
            opt_us(request.now),
            request.server_id,
            micros(request.lease_seconds),
            request.limit,
            tokens(request.limit),
            "" if self._waiting else self._waiter_id,
            "" if request.max_suspects is None else request.max_suspects,
            request.suspect_crashes,
            *request.queues,
        )
        self._claim_gen = int(reply[2])
        self._observe(reply[2])
        return _leases(from_us(reply[1]), reply[3:])

    async def _finish(self, outcomes: Sequence[Outcome], now: datetime | None) -> list[bool]:
        args: list[Arg] = [opt_us(now), len(outcomes)]
        for o in outcomes:
            sets: list[Arg] = []
            dels: list[Arg] = []
            if o.kind is OutcomeKind.SUCCEED:
                if o.result is None:
                    dels.append("result")
                else:
                    sets += ["result", dumps(o.result)]
            if o.kind is OutcomeKind.SUCCEED or o.kind is OutcomeKind.FAIL:
                amount = micros(o.ttl or 0.0)
            else:
                amount = micros(o.delay)
            if o.error is not None:
                sets += ["error_type", o.error.type, "error", o.error.message]
                if o.error.traceback is None:
                    dels.append("traceback")
                else:
                    sets += ["traceback", o.error.traceback]
            args += [
                o.job_id,
                o.token,
                o.target_state.value,
                amount,
                o.reason or "",
                len(sets) // 2,
                *sets,
                len(dels),
                *dels,
            ]
        reply = await self._hot("finish", *args)
        self._observe(reply[0])
        return [bool(x) for x in reply[1:]]

    async def _extend_leases(
        self, leases: Sequence[tuple[str, str]], lease_seconds: float, now: datetime | None
    ) -> list[HeartbeatReply]:
        args: list[Arg] = [opt_us(now), micros(lease_seconds)]
        for job_id, token in leases:
            args += [job_id, token]
        reply = await self._hot("extend", *args)
        expires = from_us(reply[0])
        return [
            HeartbeatReply(True, x == 2, expires) if x else HeartbeatReply(False) for x in reply[1:]
        ]

    async def _recover_expired(self, request: RecoverRequest) -> list[str]:
        if request.limit <= 0:
            return []
        reply = await self._script(
            "recover",
            opt_us(request.now),
            request.limit,
            request.max_crashes,
            micros(request.crash_backoff),
            micros(request.failed_ttl),
            WORKER_CRASHED,
        )
        self._observe(reply[0])
        return [text(x) for x in reply[1:]]

    async def _activate_due(self, now: datetime | None, limit: int) -> int:
        if limit <= 0:
            return 0
        generation, n = await self._script("activate", opt_us(now), limit)
        self._observe(generation)
        return int(n)

    async def _transition_many(
        self, job_ids: list[str], t: Transition, now: datetime | None
    ) -> list[str]:
        sources = [s.value for s in t.from_states]
        reply = await self._script(
            "transition",
            opt_us(now),
            t.to.value,
            t.reason or "",
            "" if t.ttl is None else micros(t.ttl),
            "1" if t.reset_attempts else "0",
            opt_us(t.run_at),
            len(sources),
            *sources,
            *job_ids,
        )
        self._observe(reply[0])
        return [text(x) for x in reply[1:]]

    async def _request_cancel(self, job_id: str) -> bool:
        return bool(await self._script("cancel", job_id))

    # ------------------------------------------------------------------ reads
    async def _get(self, job_id: str) -> Job | None:
        h = hash_reply(await self._cmd("HGETALL", self.keys.job_key(job_id)))
        return decode_job(h) if h else None

    async def _get_many(self, job_ids: Sequence[str]) -> list[Job]:
        if not job_ids:
            return []
        client = await self._c()
        with translate("hgetall"):
            async with client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hgetall(self.keys.job_key(job_id))
                replies = await pipe.execute()
        return [decode_job(h) for h in map(hash_reply, replies) if h]

    async def _list_jobs(self, query: JobQuery) -> Page:
        index, allowed = "", []
        if query.states is not None:
            if not query.states:
                return Page([], None)
            if len(query.states) == 1:
                index = next(iter(query.states)).value
            else:
                allowed = sorted(s.value for s in query.states)
        needle = query.text or ""
        in_python = bool(needle) and not needle.isascii()  # Lua lowers ASCII only
        want = query.limit + 1
        budget = self.list_scan_budget
        found: list[str] = []
        cursor = query.cursor or ""
        while len(found) < want:
            reply = await self._script(
                "list",
                index,
                cursor,
                "1" if query.ascending else "0",
                budget if in_python else want - len(found),
                budget,
                query.queue or "",
                query.method or "",
                "" if in_python else needle.lower(),
                *allowed,
            )
            cursor = text(reply[1])
            ids = [text(x) for x in reply[2:]]
            if in_python:
                ids = await self._match_text(ids, needle)
            found += ids
            if reply[0] == 1:
                break
        found = found[:want]
        items = await self._get_many(found[: query.limit])
        more = len(found) > query.limit
        return Page(items, found[query.limit - 1] if more else None)

    async def _match_text(self, job_ids: list[str], needle: str) -> list[str]:
        needle = needle.lower()
        client = await self._c()
        with translate("hmget"):
            async with client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.keys.job_key(job_id), ["args", "error"])
                replies = await pipe.execute()
        out = []
        for job_id, (args, error) in zip(job_ids, replies, strict=True):
            hay = [
                job_id,
                (args or b"").decode("utf-8", "replace"),
                (error or b"").decode("utf-8", "replace"),
            ]
            if any(needle in h.lower() for h in hay):
                out.append(job_id)
        return out

    async def _counts(self) -> dict[tuple[str, JobState], int]:
        h = hash_reply(await self._cmd("HGETALL", self.keys.counts))
        out = {}
        for field, n in h.items():
            state, _, queue = field.decode().partition(":")
            if int(n):
                out[(queue, _STATES[state])] = int(n)
        return out

    async def _history(self, minutes: int, now: datetime | None) -> list[MinuteStat]:
        if minutes <= 0:
            return []
        end = await self._redis_now(now) // 60_000_000
        span = range(end - minutes + 1, end + 1)
        fields: list[Arg] = []
        for m in span:
            fields += [f"s:{m}", f"f:{m}"]
        values = await self._cmd("HMGET", self.keys.stats, *fields)
        return [
            MinuteStat(
                from_us(m * 60_000_000), int(values[2 * i] or 0), int(values[2 * i + 1] or 0)
            )
            for i, m in enumerate(span)
        ]

    async def _oldest_enqueued(self, queues: list[str]) -> dict[str, datetime]:
        if not queues:
            return {}
        reply = await self._script("oldest", *queues)
        return {text(reply[i]): from_us(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def _set_queue_paused(self, queue: str, paused: bool) -> None:
        self._observe(await self._script("queue_pause", queue, "1" if paused else "0"))

    async def _paused_queues(self) -> set[str]:
        return {text(q) for q in await self._cmd("SMEMBERS", self.keys.paused)}

    # ------------------------------------------------------------------ cleanup
    async def _delete_expired(self, limit: int, now: datetime | None) -> int:
        return int(await self._script("delete_expired", opt_us(now), limit))

    async def _prune(
        self, dedup_older_than: float, stats_older_than: float, now: datetime | None
    ) -> None:
        while True:
            n = await self._script(
                "prune",
                opt_us(now),
                micros(dedup_older_than),
                micros(stats_older_than),
                self.prune_batch,
            )
            if int(n) < self.prune_batch:
                return

    # ------------------------------------------------------------------ hand-off
    @property
    def hands_off_claims(self) -> bool:
        return self.config.hand_off and not self._companion

    async def _wait_for_claim(
        self, request: ClaimRequest, timeout: float, interrupt: asyncio.Event
    ) -> list[Lease]:
        """Park the claim (``park.lua``) and block on the list the hand-off
        pushes to, while also listening for other wake-ups; see ``hand_off``
        in ``scripts/_lib.lua``."""
        if not self.hands_off_claims:
            return await self._wait_interruptibly(timeout, interrupt)
        if interrupt.is_set():
            return []
        if self._listener is None:
            await self.open()
        listener = self._listener
        if listener is None:  # closed meanwhile
            return await self._wait_then_claim(request, timeout, interrupt)
        # The park request goes out at once, and on a local socket its send can cost
        # the sender Redis's wake-up: let jobs the server just started begin first.
        await asyncio.sleep(0)
        self._parks += 1
        park_id = f"{self._waiter_id}.{self._parks}"
        self._waiting += 1
        try:
            try:
                reply = await self._hot(
                    "park",
                    park_id,
                    self._waiter_id,
                    micros(timeout + _PARK_GRACE),
                    request.server_id,
                    micros(request.lease_seconds),
                    request.limit,
                    tokens(request.limit),
                    "" if request.max_suspects is None else request.max_suspects,
                    request.suspect_crashes,
                    *request.queues,
                )
            except StorageError as exc:  # Redis unreachable: a plain poll interval
                log.debug("wait for work without Redis: %s", exc)
                return await self._wait_then_claim(request, timeout, interrupt)
            except asyncio.CancelledError:  # the parking may be registered: end it
                await asyncio.shield(self._abandon(park_id, None))
                raise
            leases = _leases(from_us(reply[1]), reply[4:])
            if leases or not int(reply[3]):
                return leases
            return await self._parked(park_id, int(reply[2]), timeout, interrupt, listener)
        finally:
            self._waiting -= 1

    async def _parked(
        self,
        park_id: str,
        generation: int,
        timeout: float,
        interrupt: asyncio.Event,
        listener: WakeListener,
    ) -> list[Lease]:
        # The pop runs in this task, so a claim handed over is returned without
        # another turn of the event loop; a watcher ends the pop (with the '' of
        # unpark.lua) when the waiter is woken otherwise, interrupted or timed out.
        watch = _Watch(self, park_id)
        watcher = asyncio.create_task(watch.run(generation, timeout, interrupt, listener))
        try:
            claim = await self._pop(self.keys.hand + park_id, timeout + _PARK_GRACE)
        except asyncio.CancelledError:  # end the parking; what was handed over goes back
            await asyncio.shield(self._abandon(park_id, watcher))
            raise
        except (StorageError, OSError, TimeoutError) as exc:
            await watch.stop(watcher)
            taken = await self._unpark_and_take(park_id)
            if taken:
                return taken
            # Raised, not swallowed: a pop that fails every time (an ACL without
            # blocking commands, no connection to spare) must not park in a loop.
            raise StorageUnavailableError(f"redis blocking pop failed: {exc}") from exc
        nudged = await watch.stop(watcher)
        if claim is None:  # the pop timed out: take what came in the meantime
            return await self._unpark_and_take(park_id)
        if not claim:  # the watcher's '' (the parking ended)
            return []
        if nudged:  # the claim came first: the watcher's '' stays behind
            with contextlib.suppress(StorageError):
                await self._cmd("DEL", self.keys.hand + park_id)
        return _handed(claim)

    async def _pop(self, key: str, timeout: float) -> bytes | None:
        lane = self._lanes.get("pop")
        spare = lane is not None and lane.busy  # a second parked waiter on this storage
        if lane is None or spare:
            lane = Lane(await self._c(), self.keys.tag)
            if not spare:
                self._lanes["pop"] = lane
        try:
            with translate("blpop"):
                return await lane.pop(key, timeout, self.config.command_timeout)
        finally:
            if spare:
                await lane.close()

    async def _unpark_and_take(self, park_id: str) -> list[Lease]:
        """End the parking and take the claims handed over before it ended."""
        try:
            reply = await self._script("unpark", park_id, "0")
        except StorageError as exc:  # they come back when their leases expire
            log.warning(
                "could not end the parking %s (%s); jobs handed to it return when their"
                " leases expire",
                park_id,
                exc,
                extra={"action": "redis_unpark_error"},
            )
            return []
        return [lease for claim in reply[1:] for lease in _handed(claim)]

    async def _abandon(self, park_id: str, watcher: asyncio.Task[None] | None) -> None:
        """The waiter was cancelled: end the parking and give back what it held."""
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        with contextlib.suppress(StorageError):
            await self._give_back(await self._unpark_and_take(park_id))

    # ------------------------------------------------------------------ wake-up
    async def _wait_for_work(self, timeout: float) -> bool:
        if self._listener is None:
            await self.open()
        listener = self._listener
        if listener is None:  # closed meanwhile
            await asyncio.sleep(timeout)
            return False
        self._waiting += 1
        try:
            try:
                generation = int(await self._script("wait", self._waiter_id, micros(timeout + 1)))
            except StorageError as exc:  # Redis unreachable: a plain poll interval
                log.debug("wait for work without Redis: %s", exc)
                await asyncio.sleep(timeout)
                return False
            if self._claim_gen is not None and generation > self._claim_gen:
                # a signal came after our last claim began: that claim may have missed work
                self._claim_gen = generation
                return True
            return await listener.wait(generation, timeout)
        finally:
            self._waiting -= 1


class _Watch:
    """Ends a parked waiter's blocking pop when something else comes first."""

    def __init__(self, storage: RedisStorage, park_id: str) -> None:
        self.storage = storage
        self.park_id = park_id
        self.ending = False  # unpark.lua was sent: its '' is on the way to the pop

    async def run(
        self, generation: int, timeout: float, interrupt: asyncio.Event, listener: WakeListener
    ) -> None:
        woke = asyncio.create_task(listener.wait(generation, timeout))
        stop = asyncio.create_task(interrupt.wait())
        try:
            await asyncio.wait({woke, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woke.cancel()
            stop.cancel()
        self.ending = True
        try:
            await self.storage._script("unpark", self.park_id, "1")
        except StorageError as exc:  # the pop ends by its own timeout
            log.debug("could not end a parking: %s", exc)

    async def stop(self, watcher: asyncio.Task[None]) -> bool:
        """The pop returned: stop watching. True if the watcher ended the parking."""
        if not self.ending:
            watcher.cancel()  # not awaited: the claimed jobs need not wait for it
            return False
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        return True


#: How much longer than its wait a parking lasts (and a blocking pop blocks):
#: the waiter ends it itself; this only bounds a parking whose waiter died.
_PARK_GRACE = 0.5


def _leases(expires: datetime, rows: Sequence[Sequence[Any]]) -> list[Lease]:
    leases = []
    for values in rows:
        job = decode_values(values)
        assert job.lease_token is not None
        leases.append(Lease(job, job.lease_token, expires))
    return leases


def _handed(claim: bytes | str) -> list[Lease]:
    """The leases of one claim pushed by ``hand_off`` (JSON: now, deadline,
    then each job's values, false for an absent field)."""
    reply = orjson.loads(claim)
    rows = [[v.encode() if isinstance(v, str) else None for v in row] for row in reply[2:]]
    return _leases(from_us(int(reply[1])), rows)


def _no_maintenance_notifications() -> dict[str, Any]:
    """Connection options that switch off redis-py's maintenance notifications
    where it has them: while they are on, its pool hands out a pooled
    connection without checking that it is still alive, so the first call after
    a Redis restart or a cut connection fails instead of reconnecting."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # pragma: no cover - redis-py without them
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
