"""JSON-only payload encoding (orjson). No pickle anywhere."""

from __future__ import annotations

from typing import Any

import orjson

from .errors import SerializationError

#: Default limit for one job's encoded arguments (1 MiB).
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

# Strict: datetimes, dataclasses and str/int subclasses are refused rather than
# silently converted, so what a job receives is exactly what was enqueued.
_OPTS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dumps(value: Any) -> bytes:
    """Encode a JSON value; raises :class:`SerializationError` for anything else."""
    try:
        return orjson.dumps(value, option=_OPTS)
    except TypeError as exc:
        raise SerializationError(f"value is not JSON-serializable: {exc}") from exc


def dumps_str(value: Any) -> str:
    return dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises :class:`SerializationError` on corrupt data."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"corrupt JSON payload: {exc}") from exc


def check_payload(value: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode job arguments and enforce the size limit; return the encoding."""
    data = dumps(value)
    if len(data) > limit:
        raise SerializationError(
            f"job arguments are {len(data)} bytes, over the limit of {limit} bytes"
        )
    return data


class CorruptPayload:
    """Stands in for job arguments that storage holds but cannot decode.

    A job carrying it fails once with a :class:`SerializationError` instead of
    crashing the worker that claimed it.
    """

    __slots__ = ("error", "raw")

    def __init__(self, raw: str, error: str) -> None:
        self.raw = raw
        self.error = error

    def __repr__(self) -> str:
        return f"CorruptPayload({self.raw[:40]!r}, {self.error!r})"


def loads_args(raw: bytes | str | None) -> Any:
    """Stored job or template arguments; a :class:`CorruptPayload` marker when they
    are absent or cannot be decoded (the job then fails once instead of making a
    read, a claim or a listing raise)."""
    if raw is None:
        return CorruptPayload("", "arguments are missing")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return CorruptPayload(text, f"corrupt JSON payload: {exc}")


def loads_meta(raw: bytes | str | None) -> dict[str, Any]:
    """Stored job meta; ``{}`` when it is absent, cannot be decoded or is not an
    object (a damaged row must not make reading or claiming the job raise)."""
    if raw is None:
        return {}
    try:
        meta = loads(raw)
    except SerializationError:
        return {}
    return meta if isinstance(meta, dict) else {}
