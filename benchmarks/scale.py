"""Drain, worker memory and worker CPU with many jobs queued; CPU of an idle worker.

    python benchmarks/scale.py run --storage sqlite:////tmp/qml-scale.db --jobs 1000000
    python benchmarks/scale.py run --storage redis://127.0.0.1:6379/7 --jobs 1000000
    python benchmarks/scale.py run --storage postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/scale.py idle --storage redis://127.0.0.1:6379/7 --seconds 60

Every store is a fresh one, removed afterwards: SQLite ``DIR/NAME-<tag>.db`` beside
the file named in the URL, Redis under ``key_prefix=qmlscale<tag>``, PostgreSQL in
schema ``qml_scale_<tag>``.

``run`` enqueues ``--jobs`` no-op jobs (``qml.bench.noop``) with ``enqueue_many`` in
batches, prints the claim query's plan with all of them queued (PostgreSQL:
``EXPLAIN`` and ``EXPLAIN (ANALYZE, BUFFERS)`` rolled back, of the named query
``claim``; SQLite: ``EXPLAIN QUERY PLAN`` of ``claim_jobs`` and of its subquery,
and the subquery's time), then starts one ``qml worker`` process (the command line
of ``qml bench``) and follows the jobs' start records (``$QML_BENCH_RECORD``):

* drain rate over the first 10,000 jobs and over all of them (from the worker's
  spawn to the 10,000th / last job's start);
* the worker's RSS (``VmRSS`` of ``/proc/<pid>/status``) once 10,000 jobs have
  started, at a few later marks and once all have started, and its peak (``VmHWM``);
* the worker's CPU seconds (``utime + stime`` of ``/proc/<pid>/stat``) per 1,000 jobs.

The same drain is measured on a fresh store holding only 10,000 jobs before and
after the large run (``--no-baseline`` skips them), and the result line gives the
ratio of the two drain rates and of RSS(all) to RSS(10,000). Diagnostics for
PostgreSQL (they disturb the drain a little): ``--probe`` prints the claim's
``EXPLAIN (ANALYZE, BUFFERS)`` (rolled back) and the table's dead rows at each mark;
``--vacuum-at K`` runs ``VACUUM`` on the job table once K jobs have started.

``idle`` starts one ``qml worker`` on an empty store (the worker's defaults: scheduler,
clean-up and recurring loops on; ``--bench-flags`` turns the last two off as ``qml
bench`` does), lets it settle for ``--warmup`` seconds, then prints its CPU % over
``--seconds`` (``utime + stime`` delta) and its threads' context switches per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import qml
from qml.bench import _enqueue, _spawn, registry
from qml.job import JobState
from qml.storage.base import Storage
from qml.storage.factory import StorageInstance, sqlite_path

FIRST = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------ stores
@dataclass
class Store:
    """One fresh store: the URL the client and the worker use, and how to remove it."""

    kind: str
    url: str
    base: str
    name: str

    @classmethod
    def fresh(cls, url: str, tag: str) -> Store:
        scheme = url.split(":", 1)[0].lower()
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        base = parts._replace(query="").geturl()
        if scheme == "sqlite":
            path = Path(sqlite_path(url))
            db = path.with_name(f"{path.stem}-{tag}{path.suffix or '.db'}").resolve()
            return cls("sqlite", f"sqlite:///{db}", str(db), str(db))
        if scheme in ("redis", "rediss"):
            name = f"qmlscale{tag}"
            query["key_prefix"] = name
            return cls("redis", parts._replace(query=urlencode(query)).geturl(), base, name)
        if scheme in ("postgres", "postgresql"):
            name = f"qml_scale_{tag}"
            query["qml_schema"] = name
            return cls("postgres", parts._replace(query=urlencode(query)).geturl(), base, name)
        raise SystemExit(f"not a durable storage URL: {url!r}")

    async def remove(self) -> None:
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.name + suffix)
        elif self.kind == "redis":
            storage = await StorageInstance.from_url(self.url)  # its key prefix is the store
            try:
                await storage.purge()  # type: ignore[attr-defined]
            finally:
                await storage.close()
        else:
            import asyncpg

            conn = await asyncpg.connect(self.base)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
            finally:
                await conn.close()


# ------------------------------------------------------------------------ /proc
def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB of process ``pid``, its number of threads and the context
    switch counters summed over its threads (``/proc/<pid>/status`` has the main
    thread's only)."""
    out: dict[str, int] = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    out[key] += int(value.split()[0])
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------ records
class Records:
    """Follows a ``$QML_BENCH_RECORD`` file incrementally: distinct jobs started,
    the start time of the k-th one, the last start."""

    def __init__(self, path: str, n: int) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.seen = bytearray(n)
        self.count = 0
        self.duplicates = 0
        self.last = 0.0
        self.at: dict[int, float] = {}

    def poll(self, wanted: set[int]) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            i_s, t_s = line.split()
            i = int(i_s)
            if self.seen[i]:
                self.duplicates += 1
                continue
            self.seen[i] = 1
            self.count += 1
            self.last = max(self.last, float(t_s))
            if self.count in wanted:
                self.at[self.count] = self.last
        return self.count


@dataclass
class Mark:
    """The worker as read from /proc once ``count`` jobs (at least ``target``) had started."""

    target: int
    count: int
    started_at: float
    rss_kb: int
    cpu_s: float


@dataclass
class Drain:
    label: str
    jobs: int
    enqueue_rate: float = 0.0
    first_rate: float = 0.0
    all_rate: float = 0.0
    marks: list[Mark] = field(default_factory=list)
    rss_end_kb: int = 0
    hwm_kb: int = 0
    cpu_end_s: float = 0.0
    succeeded: int = 0
    duplicates: int = 0
    started: str = ""
    ended: str = ""
    load: str = ""
    t0: float = 0.0

    def mark(self, target: int) -> Mark:
        return next(m for m in self.marks if m.target == target)

    @property
    def cpu_per_1000(self) -> float:
        return self.mark(self.jobs).cpu_s / self.jobs * 1000

    @property
    def cpu_per_1000_after_first(self) -> float:
        a, b = self.mark(min(FIRST, self.jobs)), self.mark(self.jobs)
        return (b.cpu_s - a.cpu_s) / max(1, b.count - a.count) * 1000


def marks_for(n: int) -> list[int]:
    return sorted({m for m in (FIRST, 100_000, 250_000, 500_000, 750_000) if m < n} | {n})


async def enqueue(storage: Storage, n: int, batch: int) -> float:
    registry.storage = storage
    return (await _enqueue(storage, n, 0, batch))[1]


async def drain(
    url: str,
    n: int,
    batch: int,
    workers: int,
    timeout: float,
    label: str,
    plan: bool,
    probe: bool = False,
    vacuum_at: int = 0,
) -> Drain:
    """Fresh store, ``n`` queued jobs, one worker process until all have started."""
    result = Drain(label, n, load=loadavg(), started=utc())
    store = Store.fresh(url, secrets.token_hex(4))
    storage = await StorageInstance.from_url(store.url)
    tmp = tempfile.mkdtemp(prefix="qml-scale-")
    record = os.path.join(tmp, "starts.rec")
    proc: subprocess.Popen[bytes] | None = None
    try:
        result.enqueue_rate = await enqueue(storage, n, batch)
        print(f"  [{label}] {n:,} jobs enqueued at {result.enqueue_rate:,.0f} jobs/s", flush=True)
        if plan:
            await print_plan(store, n)
        wanted = sorted({*marks_for(n), *([vacuum_at] if 0 < vacuum_at < n else [])})
        records = Records(record, n)
        t0 = result.t0 = time.monotonic()
        proc = _spawn(store.url, workers, record, f"scale-{label}")
        deadline = t0 + timeout
        pending = list(wanted)
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {records.count:,} of {n:,} jobs started in {timeout} s")
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            count = records.poll(set(wanted))
            while pending and count >= pending[0]:
                target = pending.pop(0)
                status = proc_status(proc.pid)
                result.marks.append(
                    Mark(target, count, records.at[target], status["VmRSS"], proc_cpu(proc.pid))
                )
                if target < n:
                    print(
                        f"  [{label}] {target:,} started after {records.at[target] - t0:.1f} s,"
                        f" RSS {status['VmRSS'] / 1024:.1f} MiB",
                        flush=True,
                    )
                if probe and store.kind == "postgres":
                    print(f"    probe at {records.count:,}: {await pg_probe(store)}", flush=True)
                if target == vacuum_at and store.kind == "postgres":
                    print(f"    {await pg_vacuum(store)}", flush=True)
            await asyncio.sleep(0.1)
        first = result.mark(min(FIRST, n))
        result.first_rate = min(FIRST, n) / (first.started_at - t0)
        result.all_rate = n / (records.last - t0)
        await asyncio.sleep(1.0)
        status = proc_status(proc.pid)
        result.rss_end_kb, result.hwm_kb = status["VmRSS"], status["VmHWM"]
        result.cpu_end_s = proc_cpu(proc.pid)
        stop(proc)
        proc = None
        result.duplicates = records.duplicates
        result.succeeded = await storage.count(JobState.SUCCEEDED)
    finally:
        if proc is not None:
            stop(proc)
        await storage.close()
        await store.remove()
        with contextlib.suppress(FileNotFoundError):
            os.remove(record)
        os.rmdir(tmp)
    result.ended = utc()
    return result


def start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------ plans
async def print_plan(store: Store, n: int) -> None:
    print(f"  claim plan with {n:,} jobs queued ({store.kind}):")
    lines = await (pg_plan(store) if store.kind == "postgres" else other_plan(store))
    for line in lines:
        print(f"    {line}")


def max_param(sql: str, sign: str) -> int:
    """The highest numbered parameter (``?N`` or ``$N``) of ``sql``."""
    import re

    return max((int(m) for m in re.findall(re.escape(sign) + r"(\d+)", sql)), default=0)


async def other_plan(store: Store) -> list[str]:
    if store.kind != "sqlite":
        return ["(Redis: claim.lua takes ZPOPMIN of the queue's ready sorted set: O(log N) a job)"]
    import re

    from qml.storage.sqlite.sql import Q

    sql = Q["claim_jobs"]
    m = re.search(r"WHERE rowid IN \((.*)\)\s*RETURNING", sql, re.DOTALL)
    if m is None:
        raise RuntimeError("claim_jobs has no 'WHERE rowid IN (...)' subquery")
    sub = m.group(1).strip()
    now = datetime.now(UTC).isoformat()
    # as a server claims: at most 1 suspect, suspects being jobs with 2 crashes
    known = ["default", 10, now, "explain", "tok", now, '{"state":"processing"', 1, 2]
    params = tuple(known + [None] * (max_param(sql, "?") - len(known)))
    out: list[str] = []
    conn = sqlite3.connect(f"file:{store.name}?mode=ro", uri=True)
    try:
        out.append("EXPLAIN QUERY PLAN claim_jobs:")
        for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params):
            out.append(f"  {row[3]}")
        out.append("EXPLAIN QUERY PLAN of its subquery:")
        sub_params = params[: max_param(sub, "?")]
        for row in conn.execute("EXPLAIN QUERY PLAN " + sub, sub_params):
            out.append(f"  {row[3]}")
        times = []
        for _ in range(5):
            t = time.perf_counter()
            rows = conn.execute(sub, sub_params).fetchall()
            times.append((time.perf_counter() - t) * 1000)
        out.append(
            f"subquery (LIMIT 10) returned {len(rows)} rows in {min(times):.3f} ms (best of 5)"
        )
    finally:
        conn.close()
    return out


async def pg_plan(store: Store) -> list[str]:
    import asyncpg

    from qml.storage.postgres.sql import Names, named_queries

    sql = Names(store.name, "qml_jobs").render(named_queries()["claim"])
    known: list[object] = ["scale-explain", ["default"], 10, datetime.now(UTC), 300.0, 1, 2]
    params = known + [None] * (max_param(sql, "$") - len(known))
    conn = await asyncpg.connect(store.base)
    out: list[str] = []
    try:
        row = await conn.fetchrow(
            "SELECT n_live_tup, last_autoanalyze, last_analyze FROM pg_stat_user_tables"
            " WHERE schemaname = $1 AND relname = 'qml_jobs'",
            store.name,
        )
        if row is not None:
            out.append(
                f"pg_stat_user_tables: n_live_tup={row['n_live_tup']}, last_autoanalyze="
                f"{row['last_autoanalyze']}, last_analyze={row['last_analyze']}"
            )
        out.append("EXPLAIN claim:")
        out += [f"  {r[0]}" for r in await conn.fetch("EXPLAIN " + sql, *params)]
        out.append("EXPLAIN (ANALYZE, BUFFERS) claim, in a transaction rolled back:")
        tr = conn.transaction()
        await tr.start()
        try:
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
            out += [f"  {r[0]}" for r in rows]
        finally:
            await tr.rollback()
    finally:
        await conn.close()
    return out


async def pg_probe(store: Store) -> str:
    """Diagnostics during a drain (changes what it measures a little: the claim
    below locks 10 jobs until its rollback): the claim's time and the buffers its
    claim-index scan touched, and the table's dead rows and vacuums."""
    import asyncpg

    from qml.storage.postgres.sql import Names, named_queries

    sql = Names(store.name, "qml_jobs").render(named_queries()["claim"])
    params: list[object] = ["scale-probe", ["default"], 10, datetime.now(UTC), 300.0, 1, 2]
    params += [None] * (max_param(sql, "$") - len(params))
    conn = await asyncpg.connect(store.base)
    try:
        tr = conn.transaction()
        await tr.start()
        try:
            lines = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)]
        finally:
            await tr.rollback()
        row = await conn.fetchrow(
            "SELECT n_live_tup, n_dead_tup, autovacuum_count, vacuum_count, last_autovacuum,"
            " pg_relation_size(format('%I.%I', schemaname, 'qml_jobs_claim_idx')::regclass)"
            " AS idx"
            " FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'qml_jobs'",
            store.name,
        )
    finally:
        await conn.close()
    scan = next((i for i, line in enumerate(lines) if "qml_jobs_claim_idx" in line), None)
    buffers = "claim index scan not found in the plan"
    if scan is not None:
        buffers = next(
            (ln.strip() for ln in lines[scan:] if "Buffers:" in ln), "no Buffers line after it"
        )
    total = next((ln.strip() for ln in lines if ln.strip().startswith("Execution Time")), "no time")
    stats = (
        f"n_live_tup {row['n_live_tup']}, n_dead_tup {row['n_dead_tup']}, autovacuums "
        f"{row['autovacuum_count']} (last {row['last_autovacuum']}), claim index "
        f"{row['idx'] / 2**20:.1f} MiB"
        if row is not None
        else "no table statistics"
    )
    return f"claim {total}; claim index scan {buffers}; {stats}"


async def pg_vacuum(store: Store) -> str:
    import asyncpg

    conn = await asyncpg.connect(store.base)
    try:
        t = time.perf_counter()
        await conn.execute(f'VACUUM "{store.name}".qml_jobs')
        return f"VACUUM {store.name}.qml_jobs took {time.perf_counter() - t:.1f} s"
    finally:
        await conn.close()


# ------------------------------------------------------------------------ commands
def kind_of(url: str) -> str:
    return Store.fresh(url, "x").kind


async def run(args: argparse.Namespace) -> None:
    kind = kind_of(args.storage)
    n: int = args.jobs
    timeout = float(args.timeout or max(900, n / 300))
    print(f"== scale {kind}: {n:,} jobs, 1 worker process x {args.workers} slots")
    print(f"   qml from {Path(qml.__file__).parent}")
    print(f"   start {utc()}, load average {loadavg()}", flush=True)
    bases: list[Drain] = []
    if args.baseline:
        bases.append(await drain(args.storage, FIRST, args.batch, args.workers, 600, "base", False))
    big = await drain(
        args.storage, n, args.batch, args.workers, timeout, "big", True, args.probe, args.vacuum_at
    )
    if args.baseline:
        bases.append(
            await drain(args.storage, FIRST, args.batch, args.workers, 600, "base2", False)
        )
    for d in [*bases, big]:
        report(d)
    first = big.mark(min(FIRST, n))
    last = big.mark(n)
    line = (
        f"RESULT {kind} jobs={n} enqueue={big.enqueue_rate:.0f}/s "
        f"drain_first10k={big.first_rate:.0f}/s drain_all={big.all_rate:.0f}/s "
        f"rss10k={first.rss_kb / 1024:.1f}MiB rss_all={last.rss_kb / 1024:.1f}MiB "
        f"rss_ratio={last.rss_kb / first.rss_kb:.3f} hwm={big.hwm_kb / 1024:.1f}MiB "
        f"cpu_per_1000={big.cpu_per_1000:.3f}s cpu_per_1000_after10k="
        f"{big.cpu_per_1000_after_first:.3f}s succeeded={big.succeeded} dup={big.duplicates}"
    )
    if bases:
        base_rate = sum(b.all_rate for b in bases) / len(bases)
        line += (
            f" base10k={'/'.join(f'{b.all_rate:.0f}' for b in bases)}/s"
            f" ratio_first10k={big.first_rate / base_rate:.1%}"
            f" ratio_all={big.all_rate / base_rate:.1%}"
            f" base_rss10k={bases[0].mark(FIRST).rss_kb / 1024:.1f}MiB"
        )
    print(f"   end {utc()}, load average {loadavg()}")
    print(line, flush=True)


def report(d: Drain) -> None:
    print(
        f"  [{d.label}] {d.started} -> {d.ended}, load before {d.load}: {d.jobs:,} jobs, "
        f"enqueue_many {d.enqueue_rate:,.0f} jobs/s, drain first {min(FIRST, d.jobs):,} "
        f"{d.first_rate:,.0f} jobs/s, all {d.all_rate:,.0f} jobs/s, succeeded "
        f"{d.succeeded:,}, duplicate starts {d.duplicates}"
    )
    prev = Mark(0, 0, d.t0, 0, 0.0)
    for m in d.marks:
        wall = m.started_at - prev.started_at
        jobs = m.count - prev.count
        print(
            f"    after {m.target:>9,} started (read at {m.count:,}): "
            f"RSS {m.rss_kb / 1024:7.1f} MiB, CPU {m.cpu_s:8.2f} s; since the last mark "
            f"{(m.target - prev.target) / wall:,.0f} jobs/s, "
            f"{(m.cpu_s - prev.cpu_s) / max(1, jobs) * 1000:.3f} s CPU per 1,000 jobs, "
            f"worker on CPU {(m.cpu_s - prev.cpu_s) / wall:.0%} of the time"
        )
        prev = m
    print(
        f"    end: RSS {d.rss_end_kb / 1024:.1f} MiB, peak RSS {d.hwm_kb / 1024:.1f} MiB, "
        f"CPU {d.cpu_end_s:.2f} s, {d.cpu_per_1000:.3f} s per 1,000 jobs "
        f"({d.cpu_per_1000_after_first:.3f} after the first {min(FIRST, d.jobs):,})"
    )


async def idle(args: argparse.Namespace) -> None:
    store = Store.fresh(args.storage, secrets.token_hex(4))
    cmd = [
        sys.executable,
        "-m",
        "qml",
        "worker",
        "qml.bench:registry",
        "--storage",
        store.url,
        "--name",
        "scale-idle",
        "--log-level",
        "warning",
    ]
    if args.bench_flags:
        cmd += ["--no-cleanup", "--no-recurring"]
    print(f"== idle {store.kind}: {' '.join(cmd[2:])}")
    print(f"   start {utc()}, load average {loadavg()}", flush=True)
    proc = start(cmd)
    try:
        await asyncio.sleep(args.warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        cpu0, st0, t0 = proc_cpu(proc.pid), proc_status(proc.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu1, st1, t1 = proc_cpu(proc.pid), proc_status(proc.pid), time.monotonic()
    finally:
        stop(proc)
        await store.remove()
    wall = t1 - t0
    cpu = cpu1 - cpu0
    vol = st1["voluntary_ctxt_switches"] - st0["voluntary_ctxt_switches"]
    invol = st1["nonvoluntary_ctxt_switches"] - st0["nonvoluntary_ctxt_switches"]
    print(f"   end {utc()}, load average {loadavg()}")
    print(
        f"RESULT idle {store.kind} flags={'bench' if args.bench_flags else 'default'} "
        f"seconds={wall:.1f} cpu={cpu:.2f}s cpu_pct={cpu / wall:.2%} "
        f"ctxt_switches_per_s={(vol + invol) / wall:.1f} threads={st1['Threads']} "
        f"rss={st1['VmRSS'] / 1024:.1f}MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="drain, RSS and CPU with --jobs queued")
    p.add_argument("--storage", required=True, help="sqlite:///…, redis://… or postgresql://…")
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many call")
    p.add_argument("--workers", type=int, default=10, help="slots of the worker process")
    p.add_argument("--timeout", type=float, default=0.0, help="drain timeout, s")
    p.add_argument(
        "--probe",
        action="store_true",
        help="PostgreSQL: claim EXPLAIN ANALYZE and dead rows at each mark (diagnostics)",
    )
    p.add_argument(
        "--vacuum-at",
        type=int,
        default=0,
        help="PostgreSQL: VACUUM the job table once this many jobs have started (diagnostics)",
    )
    p.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the 10,000-job drains before and after",
    )
    i = sub.add_parser("idle", help="CPU %% of an idle worker")
    i.add_argument("--storage", required=True)
    i.add_argument("--seconds", type=float, default=60.0)
    i.add_argument("--warmup", type=float, default=10.0)
    i.add_argument(
        "--bench-flags", action="store_true", help="--no-cleanup --no-recurring as qml bench"
    )
    args = parser.parse_args()
    asyncio.run(run(args) if args.command == "run" else idle(args))


if __name__ == "__main__":
    main()
