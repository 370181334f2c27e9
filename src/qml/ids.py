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


def new_id() -> str:
    """Return a new UUIDv7 string, monotonic within this process."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = int.from_bytes(os.urandom(1), "big")  # random start, room to count up
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_time_ms(job_id: str) -> int:
    """The creation time (epoch milliseconds) encoded in a UUIDv7 id."""
    return int(job_id.replace("-", "")[:12], 16)


def min_id_for_ms(ms: int) -> str:
    """The smallest id that can be created at epoch millisecond ``ms``."""
    h = f"{ms:012x}" + "0" * 20
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
