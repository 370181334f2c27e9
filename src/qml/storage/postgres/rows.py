"""Conversions between qml values and PostgreSQL rows / query parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ...clock import from_epoch
from ...errors import SerializationError
from ...job import Job, JobState, StateChange
from ...serialization import dumps, dumps_str, loads, loads_args, loads_meta
from ..requests import JobQuery, MisfirePolicy, Outcome, OutcomeKind, RecurringTemplate, ServerInfo

Row = Mapping[str, Any]
_Fragment = orjson.Fragment
_EMPTY_OBJECT = orjson.Fragment(b"{}")
_STATES = {s.value: s for s in JobState}


def history_entry(change: StateChange) -> dict[str, Any]:
    """One history entry as stored (the same shape the SQL function builds)."""
    d: dict[str, Any] = {"state": change.state.value, "at": change.at.isoformat()}
    if change.reason is not None:
        d["reason"] = change.reason
    if change.server_id is not None:
        d["server"] = change.server_id
    d["attempt"] = change.attempt
    return d


#: History times already parsed (a claim batch shares its start time; a job's
#: first entry repeats its creation time). ``datetime`` is immutable, so one may
#: be shared; the cache is emptied when full.
_ISO_TIMES: dict[str, datetime] = {}
_ISO_TIMES_MAX = 4096


def _iso_time(at: str) -> datetime:
    try:
        return _ISO_TIMES[at]
    except KeyError:
        pass
    when = datetime.fromisoformat(at).astimezone(UTC)
    if len(_ISO_TIMES) >= _ISO_TIMES_MAX:
        _ISO_TIMES.clear()
    _ISO_TIMES[at] = when
    return when


#: Histories already parsed, as entries to build ``StateChange`` objects from: the
#: jobs of one claim batch (or one enqueue batch) carry the same history text. The
#: cache is emptied when full.
_HISTORIES: dict[str, tuple[tuple[JobState, datetime, str | None, str | None, int], ...]] = {}
_HISTORIES_MAX = 1024


def parse_history(raw: str | None) -> list[StateChange]:
    """The state history; unreadable entries (damaged in the table) are left out."""
    if not raw:
        return []
    entries = _HISTORIES.get(raw)
    if entries is None:
        entries = _parse_history(raw)
        if len(_HISTORIES) >= _HISTORIES_MAX:
            _HISTORIES.clear()
        _HISTORIES[raw] = entries
    return [StateChange(*e) for e in entries]


def _parse_history(
    raw: str,
) -> tuple[tuple[JobState, datetime, str | None, str | None, int], ...]:
    try:
        items = loads(raw)
    except SerializationError:
        return ()
    out = []
    for d in items if isinstance(items, list) else []:
        try:
            at = d.get("at")
            when = _iso_time(at) if isinstance(at, str) else from_epoch(float(at))
            out.append(
                (
                    _STATES[d["state"]],
                    when,
                    d.get("reason"),
                    d.get("server"),
                    int(d.get("attempt") or 0),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            continue
    return tuple(out)


def enqueue_json(jobs: Sequence[Job], payloads: Sequence[bytes]) -> str:
    """The one parameter of the ``enqueue`` query: a JSON array with an object per
    job; the encoded arguments are spliced in as they are."""
    return orjson.dumps(
        [
            {
                "id": job.id,
                "method": job.method,
                "args": _Fragment(payload),
                "queue": job.queue,
                "priority": job.priority,
                "max_retries": job.max_retries,
                "run_at": None if job.run_at is None else job.run_at.isoformat(),
                "timeout": None if job.timeout is None else float(job.timeout),
                "dedup_key": job.dedup_key,
                "meta": _Fragment(dumps(job.meta)) if job.meta else _EMPTY_OBJECT,
            }
            for job, payload in zip(jobs, payloads, strict=True)
        ]
    ).decode()


def enqueue_params(
    jobs: Sequence[Job], payloads: Sequence[bytes], *, stamped: bool = False
) -> list[Any]:
    """Array parameters of the ``enqueue`` queries, one element per job: 10, or 14
    with the state, times and history the caller stamped (``stamped``)."""
    cols: list[list[Any]] = [[] for _ in range(14 if stamped else 10)]
    for job, payload in zip(jobs, payloads, strict=True):
        values: tuple[Any, ...] = (
            job.id,
            job.method,
            payload.decode(),
            job.queue,
            job.priority,
            job.max_retries,
            job.run_at,
            float(job.timeout) if job.timeout is not None else None,
            job.dedup_key,
            dumps_str(job.meta),
        )
        if stamped:
            values += (
                job.state.value,
                job.created_at,
                job.enqueued_at,
                dumps_str([history_entry(c) for c in job.history]),
            )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


def finish_json(outcomes: Sequence[Outcome]) -> str:
    """The first parameter of the ``finish`` query: a JSON array with an object per
    outcome (one parameter costs the client less than an array per column); a
    result is spliced in as encoded."""
    items = []
    for o in outcomes:
        result = None
        if o.kind is OutcomeKind.SUCCEED and o.result is not None:
            try:
                result = _Fragment(dumps(o.result))
            except SerializationError as exc:
                raise SerializationError(f"result of job {o.job_id}: {exc}") from exc
        err = o.error
        items.append(
            {
                "id": o.job_id,
                "token": o.token,
                "kind": o.kind.value,
                "result": result,
                "error_type": None if err is None else err.type,
                "error": None if err is None else err.message,
                "traceback": None if err is None else err.traceback,
                "delay": float(o.delay),
                "ttl": None if o.ttl is None else float(o.ttl),
                "reason": o.reason,
            }
        )
    return orjson.dumps(items).decode()


def row_to_job(row: Row) -> Job:
    result = row["result"]
    return Job(  # positional: in the order of Job's fields
        row["method"],
        loads_args(row["args"]),
        row["queue"],
        row["priority"],
        row["max_retries"],
        row["run_at"],
        row["timeout"],
        row["dedup_key"],
        loads_meta(row["meta"]),
        row["id"],
        _STATES[row["state"]],
        row["attempts"],
        row["crashes"],
        row["created_at"],
        row["updated_at"],
        row["enqueued_at"],
        row["started_at"],
        row["finished_at"],
        row["expires_at"],
        row["error_type"],
        row["error"],
        row["traceback"],
        loads_args(result) if result is not None else None,
        row["server_id"],
        row["lease_token"],
        row["lease_expires_at"],
        row["cancel_requested"],
        row["progress"],
        parse_history(row["history"]),
    )


#: Job columns holding a time (ISO 8601 text in a hand-off's JSON).
_TIME_COLUMNS = (
    "run_at", "created_at", "updated_at", "enqueued_at", "started_at", "finished_at",
    "expires_at", "lease_expires_at",
)  # fmt: skip


def json_to_jobs(text: str) -> list[Job]:
    """The jobs of a hand-off's notification (``{{job_json}}`` in queries.sql)."""
    out = []
    for row in loads(text):
        for name in _TIME_COLUMNS:
            value = row[name]
            if value is not None:
                row[name] = _iso_time(value)
        for name in ("timeout", "progress"):  # JSON writes a whole float8 as 30, not 30.0
            if row[name] is not None:
                row[name] = float(row[name])
        out.append(row_to_job(row))
    return out


def recurring_params(t: RecurringTemplate) -> list[Any]:
    return [
        t.id,
        t.cron,
        t.method,
        dumps_str(t.args),
        t.queue,
        t.timezone,
        MisfirePolicy(t.misfire).value,
        t.max_catchup,
        t.priority,
        t.max_retries,
        t.paused,
        t.next_run_at,
        t.last_run_at,
        t.last_job_id,
    ]


def row_to_recurring(row: Row) -> RecurringTemplate:
    return RecurringTemplate(
        id=row["id"],
        cron=row["cron"],
        method=row["method"],
        args=loads_args(row["args"]),
        queue=row["queue"],
        timezone=row["timezone"],
        misfire=MisfirePolicy(row["misfire"]),
        max_catchup=row["max_catchup"],
        priority=row["priority"],
        max_retries=row["max_retries"],
        paused=row["paused"],
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        last_job_id=row["last_job_id"],
        claimed_by=row["claimed_by"],
        claim_expires_at=row["claim_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def server_params(info: ServerInfo) -> list[Any]:
    return [
        info.id,
        info.hostname,
        info.pid,
        list(info.queues),
        info.worker_count,
        info.busy,
        info.version,
        info.started_at,
        list(info.current_jobs),
    ]


def row_to_server(row: Row) -> ServerInfo:
    return ServerInfo(
        id=row["id"],
        hostname=row["hostname"],
        pid=row["pid"],
        queues=list(row["queues"]),
        worker_count=row["worker_count"],
        busy=row["busy"],
        version=row["version"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        current_jobs=list(row["current_jobs"]),
    )


def list_jobs_sql(base: str, query: JobQuery) -> tuple[str, list[Any]]:
    """The dashboard listing: ``base`` (the ``list_jobs`` query) plus fixed
    WHERE / ORDER BY / LIMIT fragments for the filters in use, values bound.

    With a state, queue or method filter, one scan per state (on an index
    (queue|method, state, id), the final-state index, or the primary key for a
    common live state) merged by a UNION ALL, so a rare state in a big queue is
    found through an index rather than by walking the queue. Processing jobs,
    always few, are read through the lease index and sorted.
    """
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if query.queue is not None:
        where.append(f"j.queue = {arg(query.queue)}")
    if query.method is not None:
        where.append(f"j.method = {arg(query.method)}")
    if query.text is not None:
        p = arg(query.text)
        where.append(
            f"(strpos(lower(j.args::text), lower({p})) > 0"
            f" OR strpos(lower(j.id), lower({p})) > 0"
            f" OR strpos(lower(coalesce(j.error, '')), lower({p})) > 0)"
        )
    if query.cursor is not None:
        where.append(f"j.id {'>' if query.ascending else '<'} {arg(query.cursor)}")
    order = "ASC" if query.ascending else "DESC"
    limit = arg(query.limit + 1)
    tail = f" ORDER BY j.id {order} LIMIT {limit}"
    states: list[str] | None = None
    if query.states is not None:
        states = sorted(JobState(s).value for s in query.states)
    elif query.queue is not None or query.method is not None:
        states = [s.value for s in JobState]
    if states is None:
        return base + (" WHERE " + " AND ".join(where) if where else "") + tail, args
    if not states:
        return base + " WHERE false" + tail, args
    # Literals, not parameters, so the planner can match partial indexes; the
    # values are JobState members, never caller text.
    branches = []
    for state in states:
        sql = base + " WHERE " + " AND ".join([f"j.state = '{state}'", *where])
        if state == JobState.PROCESSING.value:
            # Processing jobs are few (the busy worker slots): read them all
            # through the lease index, then sort; OFFSET 0 keeps the planner
            # from trading that for a walk of the primary key.
            sql = f"SELECT * FROM ({sql} ORDER BY j.lease_expires_at OFFSET 0) j"
        branches.append(sql + tail)
    if len(branches) == 1:
        return branches[0], args
    union = " UNION ALL ".join(f"({b})" for b in branches)
    return f"SELECT * FROM ({union}) j{tail}", args
