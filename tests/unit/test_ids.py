"""Time-ordered job ids (UUIDv7)."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import uuid

from qml.ids import id_time_ms, min_id_for_ms, new_id

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_format_is_uuid_version_7_rfc_variant() -> None:
    for _ in range(200):
        job_id = new_id()
        assert UUID_RE.match(job_id), job_id
        parsed = uuid.UUID(job_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == job_id


def test_ids_are_unique_and_strictly_increasing() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_from_many_threads_are_unique() -> None:
    per_thread: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in per_thread for i in out]
    assert len(set(every)) == len(every)
    for out in per_thread:  # each thread sees its own ids in order
        assert out == sorted(out)


def test_time_extraction_matches_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    job_id = new_id()
    after = time.time_ns() // 1_000_000
    # A burst of more than 4096 ids in one millisecond borrows the next
    # millisecond, so allow a little headroom above ``after``.
    assert before <= id_time_ms(job_id) <= after + 50


def test_min_id_for_ms_bounds_ids_of_that_millisecond() -> None:
    job_id = new_id()
    ms = id_time_ms(job_id)
    assert min_id_for_ms(ms) <= job_id < min_id_for_ms(ms + 1)
    assert id_time_ms(min_id_for_ms(ms)) == ms


def test_forked_child_never_repeats_the_parents_ids() -> None:
    new_id()  # the parent has drawn random bytes and started a millisecond
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send its ids, then leave without running test teardown
        try:
            os.write(write_fd, "\n".join(new_id() for _ in range(2000)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    mine = {new_id() for _ in range(2000)}
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    theirs = set(b"".join(chunks).decode().split("\n"))
    assert len(theirs) == 2000
    assert not mine & theirs
    # the random bits differ too, so ids made in the same millisecond cannot collide
    assert not {i[-12:] for i in mine} & {i[-12:] for i in theirs}
