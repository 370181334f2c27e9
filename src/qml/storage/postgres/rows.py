"""Conversions between qml values and PostgreSQL rows / query parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ...clock import from_epoch
from ...errors import SerializationError
from ...job import Job, JobState, StateChange
from ...serialization import CorruptPayload, dumps_str, loads
from ..requests import JobQuery, MisfirePolicy, Outcome, OutcomeKind, RecurringTemplate, ServerInfo

Row = Mapping[str, Any]
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


def parse_history(raw: str | None) -> list[StateChange]:
    if not raw:
        return []
    out = []
    for d in loads(raw):
        at = d.get("at")
        when = (
            datetime.fromisoformat(at).astimezone(UTC)
            if isinstance(at, str)
            else from_epoch(float(at))
        )
        out.append(
            StateChange(
                _STATES[d["state"]],
                when,
                d.get("reason"),
                d.get("server"),
                int(d.get("attempt") or 0),
            )
        )
    return out


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


def finish_params(outcomes: Sequence[Outcome]) -> list[Any]:
    """The 10 array parameters of the ``finish`` query, one element per outcome."""
    cols: list[list[Any]] = [[] for _ in range(10)]
    for o in outcomes:
        result = None
        if o.kind is OutcomeKind.SUCCEED and o.result is not None:
            try:
                result = dumps_str(o.result)
            except SerializationError as exc:
                raise SerializationError(f"result of job {o.job_id}: {exc}") from exc
        err = o.error
        values = (
            o.job_id,
            o.token,
            o.kind.value,
            result,
            err.type if err is not None else None,
            err.message if err is not None else None,
            err.traceback if err is not None else None,
            float(o.delay),
            float(o.ttl) if o.ttl is not None else None,
            o.reason,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


def decode_args(raw: str) -> Any:
    try:
        return loads(raw)
    except SerializationError as exc:
        return CorruptPayload(raw, str(exc))


def row_to_job(row: Row) -> Job:
    result = row["result"]
    return Job(
        method=row["method"],
        args=decode_args(row["args"]),
        queue=row["queue"],
        priority=row["priority"],
        max_retries=row["max_retries"],
        run_at=row["run_at"],
        timeout=row["timeout"],
        dedup_key=row["dedup_key"],
        meta=loads(row["meta"]) if row["meta"] is not None else {},
        id=row["id"],
        state=_STATES[row["state"]],
        attempts=row["attempts"],
        crashes=row["crashes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        enqueued_at=row["enqueued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        error_type=row["error_type"],
        error=row["error"],
        traceback=row["traceback"],
        result=loads(result) if result is not None else None,
        server_id=row["server_id"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        cancel_requested=row["cancel_requested"],
        progress=row["progress"],
        history=parse_history(row["history"]),
    )


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
        args=loads(row["args"]),
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
    WHERE / ORDER BY / LIMIT fragments for the filters in use, values bound."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if query.states is not None:
        # Literals, not a parameter, so the planner can match partial indexes;
        # the values are JobState members, never caller text.
        states = ", ".join(f"'{JobState(s).value}'" for s in sorted(query.states))
        where.append(f"j.state IN ({states})" if states else "false")
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
    sql = base
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = "ASC" if query.ascending else "DESC"
    return f"{sql} ORDER BY j.id {order} LIMIT {arg(query.limit + 1)}", args
