"""Jobs, templates and servers to and from Redis hashes (no I/O).

A job hash holds one field per attribute; absent fields are ``None``. Times
are integer microseconds since the epoch (exact for any ``datetime``), the
history is a comma-joined list of ``[state, at, reason, server, attempt]``
JSON arrays, appended by the scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ...clock import ensure_aware
from ...errors import SerializationError
from ...job import Job, JobState, StateChange
from ...serialization import CorruptPayload, dumps, loads
from ..requests import MisfirePolicy, RecurringTemplate, ServerInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_STATES = {s.value.encode(): s for s in JobState}

Arg = bytes | str | int
Hash = Mapping[bytes, bytes]


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch."""
    return (ensure_aware(dt) - EPOCH) // _US


def opt_us(dt: datetime | None) -> Arg:
    """Microseconds, or '' for None."""
    return "" if dt is None else to_us(dt)


def from_us(value: bytes | str | int) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


def micros(seconds: float) -> int:
    """A duration in whole microseconds, rounded as ``timedelta`` rounds."""
    return timedelta(seconds=seconds) // _US


def as_hash(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A flat ``HGETALL`` reply from a script as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _time(h: Hash, field: bytes) -> datetime | None:
    v = h.get(field)
    return None if v is None else from_us(v)


def _text(h: Hash, field: bytes) -> str | None:
    v = h.get(field)
    return None if v is None else v.decode()


# ---------------------------------------------------------------------- jobs
def encode_new_job(job: Job, payload: bytes) -> list[Arg]:
    """The ARGV record of a new job (see ``read_job`` in ``_lib.lua``)."""
    fields: list[Arg] = [b"method", job.method, b"args", payload]
    if job.max_retries is not None:
        fields += [b"max_retries", job.max_retries]
    if job.timeout is not None:
        fields += [b"timeout", repr(float(job.timeout))]
    if job.meta:
        fields += [b"meta", dumps(job.meta)]
    return [
        job.id,
        job.queue,
        job.priority,
        opt_us(job.run_at),
        job.dedup_key or "",
        len(fields) // 2,
        *fields,
    ]


def decode_args(raw: bytes) -> Any:
    try:
        return loads(raw)
    except SerializationError as exc:  # corrupt payloads surface as a marker
        return CorruptPayload(raw.decode("utf-8", "replace"), str(exc))


def _history(raw: bytes | None) -> list[StateChange]:
    if not raw:
        return []
    return [
        StateChange(_STATES[e[0].encode()], from_us(e[1]), e[2], e[3], int(e[4]))
        for e in loads(b"[" + raw + b"]")
    ]


def decode_job(h: Hash) -> Job:
    """A :class:`Job` from its hash."""
    g = h.get
    max_retries, timeout, meta, result = g(b"max_retries"), g(b"timeout"), g(b"meta"), g(b"result")
    progress = g(b"progress")
    return Job(
        method=h[b"method"].decode(),
        args=decode_args(g(b"args", b"null")),
        queue=h[b"queue"].decode(),
        priority=int(h[b"priority"]),
        max_retries=None if max_retries is None else int(max_retries),
        run_at=_time(h, b"run_at"),
        timeout=None if timeout is None else float(timeout),
        dedup_key=_text(h, b"dedup_key"),
        meta=loads(meta) if meta is not None else {},
        id=h[b"id"].decode(),
        state=_STATES[h[b"state"]],
        attempts=int(g(b"attempts", b"0")),
        crashes=int(g(b"crashes", b"0")),
        created_at=from_us(h[b"created_at"]),
        updated_at=_time(h, b"updated_at"),
        enqueued_at=_time(h, b"enqueued_at"),
        started_at=_time(h, b"started_at"),
        finished_at=_time(h, b"finished_at"),
        expires_at=_time(h, b"expires_at"),
        error_type=_text(h, b"error_type"),
        error=_text(h, b"error"),
        traceback=_text(h, b"traceback"),
        result=decode_args(result) if result is not None else None,
        server_id=_text(h, b"server_id"),
        lease_token=_text(h, b"lease_token"),
        lease_expires_at=_time(h, b"lease_expires_at"),
        cancel_requested=g(b"cancel") == b"1",
        progress=None if progress is None else float(progress),
        history=_history(g(b"history")),
    )


# ---------------------------------------------------------------------- templates
def encode_spec(t: RecurringTemplate) -> bytes:
    """The parts of a template that only Python reads, as JSON."""
    return dumps(
        {
            "cron": t.cron,
            "method": t.method,
            "args": t.args,
            "queue": t.queue,
            "timezone": t.timezone,
            "misfire": t.misfire.value,
            "max_catchup": t.max_catchup,
            "priority": t.priority,
            "max_retries": t.max_retries,
        }
    )


def decode_template(h: Hash) -> RecurringTemplate:
    spec = loads(h[b"spec"])
    return RecurringTemplate(
        id=h[b"id"].decode(),
        cron=spec["cron"],
        method=spec["method"],
        args=spec["args"],
        queue=spec["queue"],
        timezone=spec["timezone"],
        misfire=MisfirePolicy(spec["misfire"]),
        max_catchup=spec["max_catchup"],
        priority=spec["priority"],
        max_retries=spec["max_retries"],
        paused=h.get(b"paused") == b"1",
        next_run_at=_time(h, b"next_run_at"),
        last_run_at=_time(h, b"last_run_at"),
        last_job_id=_text(h, b"last_job_id"),
        claimed_by=_text(h, b"claimed_by"),
        claim_expires_at=_time(h, b"claim_expires_at"),
        created_at=_time(h, b"created_at"),
        updated_at=_time(h, b"updated_at"),
    )


# ---------------------------------------------------------------------- servers
def encode_server(info: ServerInfo) -> bytes:
    return dumps(
        {
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": list(info.queues),
            "worker_count": info.worker_count,
            "busy": info.busy,
            "version": info.version,
            "current_jobs": list(info.current_jobs),
        }
    )


def decode_server(
    server_id: str, raw: bytes, started: bytes | None, beat: float | None
) -> ServerInfo:
    d = loads(raw)
    return ServerInfo(
        id=server_id,
        hostname=d["hostname"],
        pid=d["pid"],
        queues=d["queues"],
        worker_count=d["worker_count"],
        busy=d["busy"],
        version=d["version"],
        started_at=from_us(started) if started is not None else None,
        heartbeat_at=from_us(int(beat)) if beat is not None else None,
        current_jobs=d["current_jobs"],
    )
