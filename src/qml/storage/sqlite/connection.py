"""The thread that owns the SQLite connection, and the cross-process wake-up.

Every storage call is one hop to a dedicated thread (a one-thread executor)
that owns the write connection, so the event loop never blocks on SQLite.
Writes run in ``BEGIN IMMEDIATE`` transactions; "database is locked" is retried
with backoff until ``busy_timeout`` passes, and any other driver error leaves
as a :class:`~qml.errors.StorageError` (``from`` the sqlite3 one).

Wake-up: writes that make work available bump ``qml_meta.wake_seq`` in their
transaction and wake this process's waiters at once. While someone waits, a
watcher thread polls ``PRAGMA data_version`` on its own read connection (every
``poll_interval`` while the file changed in the last :data:`_BUSY_WINDOW` seconds,
then at most every :data:`_IDLE_POLL`, so an idle worker costs little CPU); when
another connection committed, it reads ``wake_seq`` and wakes the waiters if the
number moved past the last one seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, cast

from ...errors import ConfigurationError, MigrationError, StorageError, StorageUnavailableError
from ..memory import _Waiters
from .sql import SCHEMA, SCHEMA_VERSION, Q

T = TypeVar("T")
Conn = sqlite3.Connection

log = logging.getLogger("qml.storage.sqlite")

SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: RETURNING (3.35) is used by claims and cleanup.
MIN_SQLITE_VERSION = (3, 35, 0)
#: How long SQLite's own busy handler waits before our retry loop takes over.
_BUSY_SLICE = 0.05
#: The watcher polls every ``poll_interval`` while the file changed this recently
#: (seconds), and at most every ``_IDLE_POLL`` seconds once it has been quiet.
_BUSY_WINDOW = 2.0
_IDLE_POLL = 0.1
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_PERM,
    }
)


def _code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_busy(exc: BaseException) -> bool:
    """Whether a sqlite3 error means "locked by another connection, try again"."""
    return _code(exc) in _BUSY_CODES or "is locked" in str(exc)


def translate(exc: BaseException) -> StorageError:
    """The qml error for a sqlite3 error (raise it ``from exc``)."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    message = f"sqlite: {exc} ({name})"
    if _code(exc) in _UNAVAILABLE_CODES or is_busy(exc):
        return StorageUnavailableError(message)
    return StorageError(message)


def schema_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            if stmt.rstrip(";").strip():
                out.append(stmt)
            buf = ""
    return out


_SCHEMA_STATEMENTS = schema_statements(SCHEMA)

#: Connections and executors inherited through ``fork()``: a child never uses
#: or closes them (closing could checkpoint the parent's WAL); kept alive here.
_INHERITED: list[object] = []


def _icontains(haystack: object, needle: object) -> bool:
    """Case-insensitive substring test with Python's (Unicode) case folding."""
    if haystack is None or not isinstance(needle, str):
        return False
    text = haystack.decode("utf-8", "replace") if isinstance(haystack, bytes) else str(haystack)
    return needle.lower() in text.lower()


def _settle(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[T],
    result: T | None,
    exc: BaseException | None,
) -> None:
    """From another thread: resolve ``fut`` on ``loop`` (unless the caller gave up)."""

    def apply() -> None:
        if fut.done():  # cancelled while the call ran
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(cast(T, result))

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
        loop.call_soon_threadsafe(apply)


def check_path(path: str) -> str:
    """The absolute path of a database file whose directory exists."""
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"SqliteStorage needs a file path, got {path!r} (use MemoryStorage for memory)"
        )
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise ConfigurationError(
            f"cannot open SQLite database {path!r}: directory {parent!r} does not exist"
        )
    if os.path.isdir(full):
        raise ConfigurationError(f"cannot open SQLite database {path!r}: it is a directory")
    return full


class Database:
    """One SQLite file: the connection thread, transactions, retries and wake-ups."""

    def __init__(
        self, path: str, *, synchronous: str, busy_timeout: float, poll_interval: float
    ) -> None:
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        if not busy_timeout >= 0:
            raise ConfigurationError("busy_timeout must be a number of seconds >= 0")
        if not poll_interval > 0:
            raise ConfigurationError("poll_interval must be a positive number of seconds")
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigurationError(
                f"SqliteStorage needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        self.path = path
        self.synchronous = mode
        self.busy_timeout = float(busy_timeout)
        self.poll_interval = float(poll_interval)
        #: How many times a locked database was retried (diagnostics, tests).
        self.busy_retries = 0
        self.waiters = _Waiters()
        self._lock = threading.Lock()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._opening: Future[None] | None = None
        self._conn: Conn | None = None
        self._abspath = ""
        self._pending_wake: int | None = None
        self._wake_seen = 0
        self._waiting = 0
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._watch_wanted = threading.Event()
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's connection and threads (reopen lazily)."""
        if self._pid == os.getpid():
            return
        _INHERITED.append((self._conn, self._executor, self._watcher))
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._executor = self._opening = self._conn = self._watcher = None
        self._watch_stop = threading.Event()
        self._watch_wanted = threading.Event()
        self.waiters = _Waiters()
        self._waiting = 0
        self._pending_wake = None

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> Future[None]:
        self._check_fork()
        with self._lock:
            if self._closed:
                raise StorageUnavailableError(f"SqliteStorage({self.path!r}) is closed")
            if self._opening is None:
                self._abspath = check_path(self.path)
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="qml-sqlite")
                self._opening = self._executor.submit(self._open_sync)
            return self._opening

    async def _ensure_open(self) -> None:
        fut = self._start()
        try:
            await asyncio.wrap_future(fut)
        except BaseException:
            with self._lock:
                executor = None
                if self._opening is fut:
                    executor, self._executor, self._opening = self._executor, None, None
            if executor is not None:
                executor.shutdown(wait=False)
            raise

    async def open(self) -> None:
        """Open the connection and create the schema (idempotent)."""
        with self._lock:
            self._closed = False
        await self._ensure_open()

    async def close(self) -> None:
        """Close the connection and join the threads (idempotent)."""
        self._check_fork()
        with self._lock:
            self._closed = True
            executor, self._executor, self._opening = self._executor, None, None
            watcher, self._watcher = self._watcher, None
            stop = self._watch_stop
        if watcher is not None:
            stop.set()
            self._watch_wanted.set()
            watcher.join()
        if executor is not None:
            try:
                await asyncio.wrap_future(executor.submit(self._close_sync))
            finally:
                executor.shutdown(wait=True)

    def _open_sync(self) -> None:
        try:
            conn = sqlite3.connect(
                self._abspath,
                timeout=min(self.busy_timeout, _BUSY_SLICE),
                isolation_level=None,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _setup(self, conn: Conn) -> None:
        try:
            conn.execute("SELECT json_insert('[]', '$[#]', 1)")
        except sqlite3.Error as exc:
            raise ConfigurationError(
                f"SqliteStorage needs SQLite's JSON functions; SQLite {sqlite3.sqlite_version} "
                "here was built without them"
            ) from exc
        try:
            conn.create_function("qml_icontains", 2, _icontains, deterministic=True)
            mode = self.retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            if mode is None or str(mode[0]).lower() != "wal":
                log.warning(
                    "sqlite database %s is not in WAL mode (%s); several processes "
                    "will contend for it",
                    self.path,
                    mode,
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # 8 MiB of page cache per connection: a queue's hot pages (the claim
            # index front, recent rows) fit, and a worker's memory stays flat
            # (32 MiB grew its RSS by half between 10,000 and 100,000 jobs).
            conn.execute("PRAGMA cache_size = -8192")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            self.transaction(conn, self._create_schema)
            row = conn.execute(Q["read_meta"], ("wake_seq",)).fetchone()
            self._wake_seen = int(row[0]) if row else 0
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise translate(exc) from exc

    @staticmethod
    def _create_schema(conn: Conn) -> None:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'qml_meta'"
        ).fetchone()
        if has_meta:
            row = conn.execute(Q["read_meta"], ("schema_version",)).fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise MigrationError(
                    f"the database has qml schema version {row[0]}, newer than this qml "
                    f"({SCHEMA_VERSION}); upgrade qml"
                )
        for stmt in _SCHEMA_STATEMENTS:
            conn.execute(stmt)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ calls
    async def run(self, fn: Callable[[Conn], T], *, then: Callable[[], None] | None = None) -> T:
        """Run ``fn(connection)`` on the connection thread (one hop); ``then`` runs
        there after the caller has its result, before the thread's next call."""
        executor = self._executor
        if executor is None or self._conn is None or self._pid != os.getpid():
            await self._ensure_open()
            executor = self._executor
            if executor is None:
                raise StorageUnavailableError(f"SqliteStorage({self.path!r}) is closed")
        # The connection thread settles a loop future itself: half the CPU of
        # wrap_future's chain of two futures and callbacks, on every call.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        try:
            job = executor.submit(self._invoke_for, fn, loop, done, then)
        except RuntimeError as exc:  # shut down by a concurrent close()
            raise StorageUnavailableError(f"SqliteStorage({self.path!r}) is closed") from exc
        try:
            return await done
        except asyncio.CancelledError:
            job.cancel()  # not started yet: it never runs (as with wrap_future)
            raise

    def _invoke_for(
        self,
        fn: Callable[[Conn], T],
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[T],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run ``fn`` on the connection thread and settle ``done`` on its loop."""
        try:
            result = self._invoke(fn)
        except BaseException as exc:
            _settle(loop, done, None, exc)
        else:
            _settle(loop, done, result, None)
            if then is not None:
                then()

    def sync_wal(self) -> None:
        """Make every commit so far durable: fsync the WAL file, as a commit under
        ``synchronous=FULL`` does (connection thread only). A WAL that is gone was
        checkpointed into the database file, which the checkpoint synced. Nothing
        to do under ``synchronous=NORMAL`` or ``OFF``: commits are not synced there."""
        if self.synchronous in ("OFF", "NORMAL"):
            return
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        except OSError:
            log.exception("could not sync the WAL of %s", self.path)
        finally:
            os.close(fd)

    async def write(self, body: Callable[[Conn], T], *, durable: bool = True) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction on the connection thread.

        ``durable=False`` is for lease bookkeeping only (claims, heartbeats):
        its commit skips the fsync that ``synchronous=FULL`` adds. The next
        durable commit syncs it along (the WAL is written in order), and a
        claim lost to a power cut only makes its job claimable again, which
        at-least-once delivery allows.
        """
        return await self.run(lambda conn: self.transaction(conn, body, durable=durable))

    async def read(self, body: Callable[[Conn], T]) -> T:
        """Run a read-only ``body`` on the connection thread (retried while locked)."""
        return await self.run(lambda conn: self.retrying(lambda: body(conn)))

    def _invoke(self, fn: Callable[[Conn], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageUnavailableError(f"SqliteStorage({self.path!r}) is closed")
        try:
            return fn(conn)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise translate(exc) from exc

    def retrying(self, op: Callable[[], T]) -> T:
        """Run ``op``, retrying with jittered backoff while the database is locked."""
        deadline: float | None = None
        attempt = 0
        while True:
            try:
                return op()
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise StorageUnavailableError(
                        f"SQLite database {self.path!r} stayed locked for more than "
                        f"{self.busy_timeout:g}s"
                    ) from exc
                attempt += 1
                self.busy_retries += 1
                time.sleep(random.uniform(0.0, min(0.05, 0.0005 * 2 ** min(attempt, 7))))

    def transaction(self, conn: Conn, body: Callable[[Conn], T], *, durable: bool = True) -> T:
        """Run ``body`` in ``BEGIN IMMEDIATE`` … ``COMMIT`` (connection thread only)."""
        if durable or self.synchronous in ("OFF", "NORMAL"):
            return self.retrying(lambda: self._transaction_once(conn, body))
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            return self.retrying(lambda: self._transaction_once(conn, body))
        finally:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def _transaction_once(self, conn: Conn, body: Callable[[Conn], T]) -> T:
        self._pending_wake = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._pending_wake = None
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed on %s", self.path)
            raise
        seq = self._take_pending_wake()
        if seq is not None:
            self._note_seq(seq)
            self.waiters.wake_all()
        return result

    def _take_pending_wake(self) -> int | None:
        seq, self._pending_wake = self._pending_wake, None
        return seq

    def bump_wake(self, conn: Conn) -> None:
        """Inside a write: new work is available (waiters wake once it commits)."""
        row = conn.execute(Q["bump_wake_seq"]).fetchone()
        self._pending_wake = int(row[0]) if row else 0

    # ------------------------------------------------------------------ wake-up
    def _note_seq(self, seq: int) -> bool:
        with self._lock:
            if seq > self._wake_seen:
                self._wake_seen = seq
                return True
            return False

    async def wait(self, timeout: float) -> bool:
        """Wait for new work from this process or another one; False on timeout."""
        if self._conn is None or self._pid != os.getpid():
            await self._ensure_open()
        self._ensure_watcher()
        fut = self.waiters.add()
        with self._lock:
            self._waiting += 1
        self._watch_wanted.set()
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiters.discard(fut)
            with self._lock:
                self._waiting -= 1

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None or self._closed:
                return
            self._watch_stop = stop = threading.Event()
            self._watcher = threading.Thread(
                target=self._watch, args=(stop,), name="qml-sqlite-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self, stop: threading.Event) -> None:
        conn: Conn | None = None
        last_version: int | None = None
        changed = time.monotonic()  # the last time the file changed
        try:
            conn = sqlite3.connect(self._abspath, timeout=_BUSY_SLICE, isolation_level=None)
            while not stop.is_set():
                if self._waiting <= 0:
                    self._watch_wanted.wait()
                    self._watch_wanted.clear()
                    continue
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != last_version:
                        row = conn.execute(Q["read_meta"], ("wake_seq",)).fetchone()
                        last_version = version
                        changed = time.monotonic()
                        if row is not None and self._note_seq(int(row[0])):
                            self.waiters.wake_all()
                except sqlite3.Error as exc:  # locked or briefly unavailable: next tick
                    log.debug("wake-up poll of %s failed: %s", self.path, exc)
                quiet = time.monotonic() - changed > _BUSY_WINDOW
                stop.wait(max(self.poll_interval, _IDLE_POLL) if quiet else self.poll_interval)
        except sqlite3.Error as exc:
            log.warning("cross-process wake-up for %s stopped: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()
