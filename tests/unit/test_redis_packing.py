"""The Redis command packer sends the bytes redis-py's own packer would, with
hiredis's C packer and without it, and refuses what redis-py refuses."""

from __future__ import annotations

from typing import Any

import pytest
import redis.connection
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from qml.storage.redis import packing
from qml.storage.redis.packing import fast_packing

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("CONFIG GET", "appendonly"),
    (b"CONFIG GET", "save"),
    ("FCALL", "qml_lib_enqueue", 1, "{qml}", "", 1, "id", "default", 0, "", "", 1, b"a", b"{}"),
    ("SET", "k", -3, 2**70, 1.5, 1e20, float("nan"), 0.1),
    ("SET", "é-ü", "日本語", memoryview(b"view"), bytearray(b"ba"), b"\x00\xff", ""),
    ("RPUSH", "list", *[f"item-{i}" for i in range(3000)], *range(3000)),
]


def _reference(*args: Any) -> bytes:
    """redis-py's pure-Python packer (one buffer)."""
    rc: Any = redis.connection  # untyped here
    serializer = rc.PythonRespSerializer(10**9, rc.Encoder("utf-8", "strict", False).encode)
    return b"".join(bytes(part) for part in serializer.pack(*args))


@pytest.fixture(params=["hiredis", "python"])
def connection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "python":
        monkeypatch.setattr(packing, "_C_PACK", None)
    elif packing._C_PACK is None:
        pytest.skip("hiredis with a packer is not installed")
    return fast_packing(Connection)()


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_the_bytes_are_redis_pys(connection: Any, args: tuple[Any, ...]) -> None:
    assert b"".join(connection.pack_command(*args)) == _reference(*args)


@pytest.mark.parametrize("bad", [None, True, False, object()])
def test_an_argument_redis_cannot_take_gets_redis_pys_error(connection: Any, bad: Any) -> None:
    with pytest.raises(DataError):
        connection.pack_command("SET", "k", bad)


def test_text_that_is_not_utf8_is_refused(connection: Any) -> None:
    with pytest.raises(UnicodeEncodeError):
        connection.pack_command("SET", "k", "\ud800")
