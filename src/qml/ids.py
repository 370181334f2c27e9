"""Time-ordered unique job ids (UUID version 7, RFC 9562).

Ids sort by creation time (millisecond precision, then a per-process counter),
so keyset pagination on the id is pagination by age.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0
#: The id text of ``_last_ms`` ("xxxxxxxx-xxxx-"), formatted once per millisecond.
_head = ""
#: Random bytes from the OS, drawn 8 at a time (one ``getrandom`` per 512 ids).
_RANDOM_CHUNK = 4096
_random = b""
_random_at = _RANDOM_CHUNK
_VARIANT = 0b10 << 62
_RAND_MASK = 0x3FFF_FFFF_FFFF_FFFF
_from_bytes = int.from_bytes


def _forget_random() -> None:
    """In a forked child: never reuse the parent's random bytes or counter."""
    global _random, _random_at, _last_ms, _lock
    _lock = threading.Lock()
    _random, _random_at = b"", _RANDOM_CHUNK
    _last_ms = 0


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """Return a new UUIDv7 string, monotonic within this process."""
    global _last_ms, _seq, _head, _random, _random_at
    ms = time.time_ns() // 1_000_000
    with _lock:
        if _random_at >= _RANDOM_CHUNK:
            _random, _random_at = os.urandom(_RANDOM_CHUNK), 0
        at = _random_at
        _random_at = at + 8
        rand = _from_bytes(_random[at : at + 8], "big") & _RAND_MASK
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _seq = 0
                h = f"{_last_ms:012x}"
                _head = f"{h[:8]}-{h[8:]}-"
        else:
            _last_ms = ms
            _seq = rand >> 54  # random start (8 bits), room to count up
            h = f"{ms:012x}"
            _head = f"{h[:8]}-{h[8:]}-"
        seq, head = _seq, _head
    t = f"{(0x7000 | seq) << 64 | _VARIANT | rand:020x}"
    return f"{head}{t[:4]}-{t[4:8]}-{t[8:]}"


def id_time_ms(job_id: str) -> int:
    """The creation time (epoch milliseconds) encoded in a UUIDv7 id."""
    return int(job_id.replace("-", "")[:12], 16)


def min_id_for_ms(ms: int) -> str:
    """The smallest id that can be created at epoch millisecond ``ms``."""
    h = f"{ms:012x}" + "0" * 20
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
