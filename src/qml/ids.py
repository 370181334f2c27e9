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
#: Random hex digits from the OS, drawn 8,192 at a time (one ``getrandom`` per 512
#: ids); each id takes 16 of them.
_RANDOM_BYTES = 4096
_HEX_DIGITS = 2 * _RANDOM_BYTES
_random = ""
_random_at = _HEX_DIGITS
#: The RFC 9562 variant (binary 10) and two random bits, as one hex digit, from
#: a random hex digit.
_VARIANT_DIGIT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _forget_random() -> None:
    """In a forked child: never reuse the parent's random bytes or counter."""
    global _random, _random_at, _last_ms, _lock
    _lock = threading.Lock()
    _random, _random_at = "", _HEX_DIGITS
    _last_ms = 0


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """Return a new UUIDv7 string, monotonic within this process.

    48 bits of milliseconds, the version, 12 bits of a per-millisecond counter
    (starting at a random value below 256), the variant and 62 random bits.
    """
    global _last_ms, _seq, _head, _random, _random_at
    ms = time.time_ns() // 1_000_000
    with _lock:
        at = _random_at
        if at >= _HEX_DIGITS:
            _random, at = os.urandom(_RANDOM_BYTES).hex(), 0
        _random_at = at + 16
        rand = _random[at : at + 16]
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _seq = 0
                h = f"{_last_ms:012x}"
                _head = f"{h[:8]}-{h[8:]}-"
        else:
            _last_ms = ms
            _seq = int(rand[14:16], 16)  # random start, room to count up
            h = f"{ms:012x}"
            _head = f"{h[:8]}-{h[8:]}-"
        seq, head = _seq, _head
    return f"{head}7{seq:03x}-{_VARIANT_DIGIT[rand[0]]}{rand[1:4]}-{rand[4:16]}"


def id_time_ms(job_id: str) -> int:
    """The creation time (epoch milliseconds) encoded in a UUIDv7 id."""
    return int(job_id.replace("-", "")[:12], 16)


def min_id_for_ms(ms: int) -> str:
    """The smallest id that can be created at epoch millisecond ``ms``."""
    h = f"{ms:012x}" + "0" * 20
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
