"""Figures for storage outages (connection cuts, storage crashes), on top of
:func:`tests.chaos.harness.analyze`.

An outage is a window ``(begin, end)``: from the cut (or the crash) to the
moment the workers can reach the storage again (``restore()`` returned, or
the restarted server accepts connections). Nothing is killed in a cut, so
every execution's real end is known and overlaps are judged on real run
times. A re-run is *excused by the outage* when the execution before it was
in flight across the window (started before its end, ended no earlier than
:data:`SLACK` before its beginning): its outcome could not be recorded, or
its lease could not be renewed. Every other re-run stays a **dup**, in
particular a re-run of an execution that ended (and was acknowledged) well
before the outage, or one that started after it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from qml import JobState, Storage
from qml.storage.requests import JobQuery

from .harness import Execution, Final, Report, analyze

#: An execution that ended this long before an outage may still have had its
#: outcome on the wire when the outage began.
SLACK = 1.0


@dataclass(frozen=True)
class Window:
    begin: float
    end: float

    def caught(self, ex: Execution) -> bool:
        return ex.start < self.end and (ex.end is None or ex.end >= self.begin - SLACK)


def analyze_outage(
    ids: list[str],
    final: dict[str, Final],
    execs: list[Execution],
    windows: Sequence[Window],
    faults: dict[int, float] | None = None,
) -> Report:
    """:func:`analyze`, with re-runs caused by an outage moved from dup to
    excused; their recovery (to ``lease_expired``) and reclaim (to the next
    start) are counted from the end of the outage that caught them."""
    rep = analyze(ids, final, execs, faults or {})
    runs: dict[str, list[Execution]] = {}
    for ex in execs:
        runs.setdefault(ex.job_id, []).append(ex)
    dup: list[Execution] = []
    excused = rep.excused
    recovery, reclaim = list(rep.recovery), list(rep.reclaim)
    for ex in rep.dup:
        hit = next((w for w in windows if w.caught(ex)), None)
        if hit is None:
            dup.append(ex)
            continue
        excused += 1
        expired = [t for t in final[ex.job_id].expired if t >= ex.start]
        if expired:
            recovery.append(max(0.0, expired[0] - hit.end))
        later = [e.start for e in runs[ex.job_id] if e.start > ex.start]
        if later:
            reclaim.append(max(0.0, min(later) - hit.end))
    return replace(rep, dup=dup, excused=excused, recovery=recovery, reclaim=reclaim)


def resume_delays(execs: list[Execution], restored: float) -> dict[int, float]:
    """Per worker process that ran a job before ``restored``: seconds from
    ``restored`` to its first execution start after it (missing: none yet)."""
    before = {e.pid for e in execs if e.start < restored}
    out: dict[int, float] = {}
    for e in execs:
        if e.pid in before and e.start >= restored:
            out[e.pid] = min(out.get(e.pid, float("inf")), e.start - restored)
    return out


def throughput_recovery(
    execs: list[Execution], down: float, back: float, *, base: float = 5.0, share: float = 0.8
) -> tuple[float, float | None]:
    """(jobs/s completed in the ``base`` seconds before ``down``, or since the
    first completion if later; seconds from
    ``back`` to the end of the first 1 s window after it that completed at
    least ``share`` of that rate; None if none did)."""
    ends = sorted(e.end for e in execs if e.end is not None and e.status == "ok")
    # the base window starts no earlier than the first completion (workers starting up)
    since = max(down - base, ends[0] if ends else down)
    before = [t for t in ends if since <= t < down]
    rate = len(before) / (down - since) if down > since else 0.0
    if rate <= 0:
        return rate, None
    after = [t for t in ends if t >= back]
    j = 0
    for i, t0 in enumerate(after):
        # windows start at completions: the first window meeting the rate starts at one
        while j < len(after) and after[j] < t0 + 1.0:
            j += 1
        if j - i >= share * rate:
            return rate, t0 + 1.0 - back
    return rate, None


async def stale_processing(storage: Storage, now: float, grace: float) -> list[str]:
    """Ids of Processing jobs whose lease expired more than ``grace`` s before ``now``."""
    stale: list[str] = []
    cursor: str | None = None
    while True:
        page = await storage.list_jobs(
            JobQuery(states=frozenset({JobState.PROCESSING}), cursor=cursor, limit=500)
        )
        for job in page.items:
            expires = job.lease_expires_at
            if expires is not None and expires.timestamp() < now - grace:
                stale.append(job.id)
        cursor = page.next_cursor
        if cursor is None:
            return stale


@dataclass
class Produced:
    """What a producer process (:mod:`tests.chaos.producer`) recorded."""

    ok: list[str]
    failed: list[str]  # error lines: "Class: message"
    maybe: list[str]  # ids of batches whose enqueue raised


def read_produced(path: Path) -> Produced:
    out = Produced([], [], [])
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.endswith("}"):
            continue  # torn last line of a killed producer: its enqueue did not "return"
        rec = json.loads(line)
        if "ok" in rec:
            out.ok += rec["ok"]
        else:
            out.failed.append(rec["err"])
            out.maybe += rec["maybe"]
    return out
