"""A faster command packer for redis-py connections.

redis-py's ``pack_command`` goes through its serializer object and encoder for
every call, and its pure-Python packer grows its output buffer by re-joining it
for every argument (quadratic in the number of arguments below its 6 kB cutoff;
a batch script call has thousands of small arguments). This packer hands the
whole command to hiredis's C packer when hiredis is installed (the ``redis``
extra installs it), else encodes each argument once and joins once. The
protocol bytes are the same either way; an argument of a type Redis cannot take
(None, a bool, ...) gets redis-py's own ``DataError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from redis.asyncio.connection import AbstractConnection


def _c_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's packer; None without hiredis, or with one older than 2.1."""
    try:
        import hiredis
    except ImportError:
        return None
    return cast(Callable[[tuple[Any, ...]], bytes] | None, getattr(hiredis, "pack_command", None))


_C_PACK = _c_packer()


class _FastPack:
    """Mixin over a redis-py asyncio connection class."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        if isinstance(head, str):  # "CONFIG GET" is two words, as in redis-py
            if " " in head:
                args = (*head.split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        if _C_PACK is not None:
            try:
                return [_C_PACK(args)]
            except TypeError:
                pass  # an argument hiredis does not take: redis-py's encoder words the error
        return [_pack(args, self.encoder.encode)]


def _pack(args: tuple[Any, ...], encode: Callable[[Any], Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        else:
            data = encode(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def fast_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` with the packer above (one subclass per base class)."""
    if base not in _classes:
        _classes[base] = type(f"QmlFast{base.__name__}", (_FastPack, base), {})
    return _classes[base]
