"""Jobs, templates and servers to and from Redis hashes (no I/O).

A job hash holds one field per attribute; absent fields are ``None``. Times
are integer microseconds since the epoch (exact for any ``datetime``), the
history is a comma-joined list of ``[state, at, reason, server, attempt]``
JSON arrays, appended by the scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from ...clock import ensure_aware
from ...errors import SerializationError
from ...job import Job, JobState, StateChange
from ...serialization import dumps, loads, loads_args, loads_meta
from ..requests import MisfirePolicy, RecurringTemplate, ServerInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_STATES = {s.value.encode(): s for s in JobState}
_STATE_NAMES = {s.value: s for s in JobState}

Arg = bytes | str | int
Hash = Mapping[bytes, bytes]


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch."""
    return (ensure_aware(dt) - EPOCH) // _US


def opt_us(dt: datetime | None) -> Arg:
    """Microseconds, or '' for None."""
    return "" if dt is None else to_us(dt)


#: Times already converted (a claim batch shares its start and lease times, and a
#: job's ``created_at``, ``enqueued_at`` and first history entry are one value).
#: ``datetime`` is immutable, so sharing one is safe; the cache is emptied when full.
_TIMES: dict[bytes | str | int, datetime] = {}
_TIMES_MAX = 4096


def from_us(value: bytes | str | int) -> datetime:
    try:
        return _TIMES[value]
    except KeyError:
        pass
    dt = EPOCH + timedelta(microseconds=int(value))
    if len(_TIMES) >= _TIMES_MAX:
        _TIMES.clear()
    _TIMES[value] = dt
    return dt


#: Durations already converted (a batch of outcomes repeats its TTLs and delays).
_MICROS: dict[float, int] = {}


def micros(seconds: float) -> int:
    """A duration in whole microseconds, rounded as ``timedelta`` rounds."""
    try:
        return _MICROS[seconds]
    except (KeyError, TypeError):
        pass
    us = timedelta(seconds=seconds) // _US
    if len(_MICROS) >= _TIMES_MAX:
        _MICROS.clear()
    _MICROS[seconds] = us
    return us


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


def _history(raw: bytes | None) -> list[StateChange]:
    if not raw:
        return []
    try:
        items = loads(b"[" + raw + b"]")
        return [
            StateChange(_STATE_NAMES[e[0]], from_us(e[1]), e[2], e[3], int(e[4])) for e in items
        ]
    except (SerializationError, LookupError, TypeError, ValueError, OverflowError, AttributeError):
        return _damaged_history(raw)


def _damaged_history(raw: bytes) -> list[StateChange]:
    """The readable entries of a history damaged in Redis (never fatal)."""
    try:
        items = loads(b"[" + raw + b"]")
    except SerializationError:
        return []
    out: list[StateChange] = []
    for e in items:
        try:
            out.append(StateChange(_STATES[e[0].encode()], from_us(e[1]), e[2], e[3], int(e[4])))
        except (LookupError, TypeError, ValueError, OverflowError, AttributeError):
            continue
    return out


#: Every job field :func:`decode_values` reads, in its order; ``claim.lua``
#: returns a claimed job as ``HMGET`` of these fields (keep the two in step).
JOB_FIELDS = (
    b"method", b"args", b"queue", b"priority", b"max_retries", b"run_at", b"timeout",
    b"dedup_key", b"meta", b"id", b"state", b"attempts", b"crashes", b"created_at",
    b"updated_at", b"enqueued_at", b"started_at", b"finished_at", b"expires_at",
    b"error_type", b"error", b"traceback", b"result", b"server_id", b"lease_token",
    b"lease_expires_at", b"cancel", b"progress", b"history",
)  # fmt: skip


def decode_job(h: Hash) -> Job:
    """A :class:`Job` from its hash."""
    return decode_values([h.get(f) for f in JOB_FIELDS])


def decode_values(v: Sequence[bytes | None]) -> Job:
    """A :class:`Job` from the values of :data:`JOB_FIELDS`, in that order
    (``None`` for an absent field)."""
    (method, args, queue, priority, max_retries, run_at, timeout, dedup_key, meta, job_id,
     state, attempts, crashes, created_at, updated, enqueued, started, finished, expires,
     error_type, error, traceback, result, server_id, lease_token, lease_expires, cancel,
     progress, history) = v  # fmt: skip
    if (
        method is None
        or queue is None
        or priority is None
        or job_id is None
        or state is None
        or created_at is None
    ):
        raise KeyError("job hash without method, queue, priority, id, state or created_at")
    return Job(
        method=method.decode(),
        args=loads_args(b"null" if args is None else args),
        queue=queue.decode(),
        priority=int(priority),
        max_retries=None if max_retries is None else int(max_retries),
        run_at=None if run_at is None else from_us(run_at),
        timeout=None if timeout is None else float(timeout),
        dedup_key=None if dedup_key is None else dedup_key.decode(),
        meta=loads_meta(meta),
        id=job_id.decode(),
        state=_STATES[state],
        attempts=0 if attempts is None else int(attempts),
        crashes=0 if crashes is None else int(crashes),
        created_at=from_us(created_at),
        updated_at=None if updated is None else from_us(updated),
        enqueued_at=None if enqueued is None else from_us(enqueued),
        started_at=None if started is None else from_us(started),
        finished_at=None if finished is None else from_us(finished),
        expires_at=None if expires is None else from_us(expires),
        error_type=None if error_type is None else error_type.decode(),
        error=None if error is None else error.decode(),
        traceback=None if traceback is None else traceback.decode(),
        result=None if result is None else loads_args(result),
        server_id=None if server_id is None else server_id.decode(),
        lease_token=None if lease_token is None else lease_token.decode(),
        lease_expires_at=None if lease_expires is None else from_us(lease_expires),
        cancel_requested=cancel == b"1",
        progress=None if progress is None else float(progress),
        history=_history(history),
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
