"""Rows to values and back for the SQLite backend (no I/O).

Times are stored as REAL epoch seconds and JSON values as text. Arguments
that cannot be decoded come back as a :class:`~qml.serialization.CorruptPayload`
marker instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ...job import Job, JobState, StateChange
from ...serialization import dumps, loads_args
from ..requests import MisfirePolicy, RecurringTemplate, ServerInfo

#: Columns of a full job row, in the order :func:`job_from_row` reads them.
#: The JSON columns are read as BLOBs so invalid UTF-8 in a damaged row cannot make
#: the driver raise (which would fail every claim that takes the row).
JOB_COLUMNS = (
    "id, method, CAST(args AS BLOB), queue, priority, max_retries, run_at, timeout, "
    "dedup_key, CAST(meta AS BLOB), state, attempts, crashes, created_at, updated_at, "
    "enqueued_at, started_at, finished_at, expires_at, error_type, error, traceback, "
    "CAST(result AS BLOB), server_id, lease_token, lease_expires_at, cancel_requested, "
    "progress, CAST(history AS BLOB)"
)
#: Columns of a brief row (what guarded writes need to decide), see :class:`Brief`.
BRIEF_COLUMNS = "id, queue, state, lease_token, server_id, attempts, crashes, cancel_requested"
#: Columns of a recurring template row, in the order :func:`recurring_from_row` reads them.
RECURRING_COLUMNS = (
    "id, cron, method, CAST(args AS BLOB), queue, timezone, misfire, max_catchup, priority, "
    "max_retries, paused, next_run_at, last_run_at, last_job_id, claimed_by, claim_expires_at, "
    "created_at, updated_at"
)

#: A brief row: (id, queue, state, lease_token, server_id, attempts, crashes, cancel_requested).
Brief = tuple[str, str, str, str | None, str | None, int, int, int]

STATES: dict[str, JobState] = {s.value: s for s in JobState}
_fromtimestamp = datetime.fromtimestamp


def ts(value: datetime | None) -> float | None:
    """Epoch seconds of an aware datetime (None stays None)."""
    return None if value is None else value.timestamp()


def to_dt(value: float | None) -> datetime | None:
    """Aware UTC datetime from epoch seconds (None stays None)."""
    return None if value is None else _fromtimestamp(value, UTC)


def json_text(value: Any) -> str:
    """JSON text of a value; raises :class:`SerializationError` if it is not JSON."""
    return dumps(value).decode()


def history_entry(
    state: str, at: float, reason: str | None, server: str | None, attempt: int
) -> str:
    """One state-history entry as JSON text (the shape of ``StateChange.to_dict``)."""
    d: dict[str, Any] = {"state": state, "at": at}
    if reason is not None:
        d["reason"] = reason
    if server is not None:
        d["server"] = server
    if attempt:
        d["attempt"] = attempt
    return orjson.dumps(d).decode()


def claim_entry_prefix(at: float, server: str) -> str:
    """The Processing history entry, open before its attempt number (SQL closes it)."""
    return (
        orjson.dumps({"state": "processing", "at": at, "server": server}).decode()[:-1]
        + ',"attempt":'
    )


def job_row(job: Job, payload: bytes) -> tuple[Any, ...]:
    """The ``insert_job`` parameters for a prepared job and its encoded args."""
    return (
        job.id,
        job.method,
        payload.decode(),
        job.queue,
        job.priority,
        job.max_retries,
        ts(job.run_at),
        job.timeout,
        job.dedup_key,
        json_text(job.meta) if job.meta else "{}",
        job.state.value,
        job.attempts,
        job.crashes,
        job.created_at.timestamp(),
        ts(job.updated_at),
        ts(job.enqueued_at),
        ts(job.started_at),
        ts(job.finished_at),
        ts(job.expires_at),
        job.error_type,
        job.error,
        job.traceback,
        None if job.result is None else json_text(job.result),
        job.server_id,
        job.lease_token,
        ts(job.lease_expires_at),
        int(job.cancel_requested),
        job.progress,
        orjson.dumps([h.to_dict() for h in job.history]).decode(),
    )


def _decode_or(raw: bytes | str | None, default: Any) -> Any:
    if raw is None:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return default


def _history(raw: bytes | str | None) -> list[StateChange]:
    items = _decode_or(raw, [])
    try:  # the common case: every entry as written by this backend
        return [
            StateChange(
                STATES[d["state"]],
                _fromtimestamp(d["at"], UTC),
                d.get("reason"),
                d.get("server"),
                d.get("attempt", 0),
            )
            for d in items
        ]
    except (KeyError, TypeError, ValueError, AttributeError):
        return _damaged_history(items)


def _damaged_history(items: Any) -> list[StateChange]:
    """The readable entries of a damaged history (never fatal)."""
    out: list[StateChange] = []
    for d in items if isinstance(items, list) else []:
        try:
            out.append(
                StateChange(
                    STATES[d["state"]],
                    _fromtimestamp(float(d["at"]), UTC),
                    d.get("reason"),
                    d.get("server"),
                    int(d.get("attempt", 0)),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _result(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    return loads_args(raw)


def job_from_row(r: Sequence[Any]) -> Job:
    """A :class:`Job` from a row of :data:`JOB_COLUMNS`."""
    meta = _decode_or(r[9], {})
    return Job(
        method=r[1],
        args=loads_args(r[2]),
        queue=r[3],
        priority=r[4],
        max_retries=r[5],
        run_at=to_dt(r[6]),
        timeout=r[7],
        dedup_key=r[8],
        meta=meta if isinstance(meta, dict) else {},
        id=r[0],
        state=STATES[r[10]],
        attempts=r[11],
        crashes=r[12],
        created_at=_fromtimestamp(r[13], UTC),
        updated_at=to_dt(r[14]),
        enqueued_at=to_dt(r[15]),
        started_at=to_dt(r[16]),
        finished_at=to_dt(r[17]),
        expires_at=to_dt(r[18]),
        error_type=r[19],
        error=r[20],
        traceback=r[21],
        result=_result(r[22]),
        server_id=r[23],
        lease_token=r[24],
        lease_expires_at=to_dt(r[25]),
        cancel_requested=bool(r[26]),
        progress=r[27],
        history=_history(r[28]),
    )


def recurring_row(t: RecurringTemplate, args: str) -> tuple[Any, ...]:
    """``upsert_recurring`` parameters ?1..?16 of a template."""
    return (
        t.id,
        t.cron,
        t.method,
        args,
        t.queue,
        t.timezone,
        MisfirePolicy(t.misfire).value,
        t.max_catchup,
        t.priority,
        t.max_retries,
        int(t.paused),
        ts(t.next_run_at),
        ts(t.last_run_at),
        t.last_job_id,
        t.claimed_by,
        ts(t.claim_expires_at),
    )


def recurring_from_row(r: Sequence[Any]) -> RecurringTemplate:
    """A :class:`RecurringTemplate` from a row of :data:`RECURRING_COLUMNS`."""
    return RecurringTemplate(
        id=r[0],
        cron=r[1],
        method=r[2],
        args=loads_args(r[3]),
        queue=r[4],
        timezone=r[5],
        misfire=MisfirePolicy(r[6]),
        max_catchup=r[7],
        priority=r[8],
        max_retries=r[9],
        paused=bool(r[10]),
        next_run_at=to_dt(r[11]),
        last_run_at=to_dt(r[12]),
        last_job_id=r[13],
        claimed_by=r[14],
        claim_expires_at=to_dt(r[15]),
        created_at=to_dt(r[16]),
        updated_at=to_dt(r[17]),
    )


def server_from_row(r: Sequence[Any]) -> ServerInfo:
    """A :class:`ServerInfo` from a ``list_servers`` row."""
    return ServerInfo(
        id=r[0],
        hostname=r[1],
        pid=r[2],
        queues=list(_decode_or(r[3], [])),
        worker_count=r[4],
        busy=r[5],
        version=r[6],
        started_at=to_dt(r[7]),
        heartbeat_at=to_dt(r[8]),
        current_jobs=list(_decode_or(r[9], [])),
    )
