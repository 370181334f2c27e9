"""Failures grouped by root cause (DASHBOARD.md P10).

A group's fingerprint hashes the exception type, the message with numbers,
UUIDs and hex strings replaced by placeholders, and the innermost in-app frame
of the traceback (file and function; line numbers change with every deploy).
10 000 failures of one cause become one row with one retry button.

Groups are built from a bounded scan: the newest ``scan_limit`` Failed and
AwaitingRetry jobs (keyset walk, newest first).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ..job import Job, JobState
from ..storage.base import Storage
from ..storage.requests import JobQuery, Page

#: How many of the newest failures the Errors page scans by default.
SCAN_LIMIT = 10_000
FAILURE_STATES = frozenset({JobState.FAILED, JobState.AWAITING_RETRY})
FINGERPRINT_PATTERN = r"^[0-9a-f]{12}$"

_UUID = re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.I)
_HEX_PREFIXED = re.compile(r"\b0x[0-9a-f]+\b", re.I)
_HEX_LONG = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACES = re.compile(r"\s+")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>.+?)\s*$')
_LIBRARY = ("site-packages", "dist-packages", "<frozen", "/qml/worker", "/qml/server", "asyncio/")


def normalize_message(message: str | None) -> str:
    """``order 4f3a… failed after 3 tries`` → ``order <uuid> failed after <n> tries``."""
    text = message or ""
    text = _UUID.sub("<uuid>", text)
    text = _HEX_PREFIXED.sub("<hex>", text)
    text = _HEX_LONG.sub("<hex>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACES.sub(" ", text).strip()[:300]


@dataclass(frozen=True, slots=True)
class Frame:
    file: str
    line: int
    function: str

    @property
    def key(self) -> str:
        """File (its last two path parts: the same across hosts) and function."""
        short = "/".join(self.file.replace("\\", "/").split("/")[-2:])
        return f"{short} in {self.function}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


def top_frame(traceback: str | None) -> Frame | None:
    """The innermost frame of the application's code (else the innermost frame)."""
    frames = []
    for line in (traceback or "").splitlines():
        m = _FRAME.match(line)
        if m:
            frames.append(Frame(m["file"], int(m["line"]), m["fn"]))
    if not frames:
        return None
    for frame in reversed(frames):
        if not any(lib in frame.file for lib in _LIBRARY):
            return frame
    return frames[-1]


def fingerprint(error_type: str | None, message: str | None, traceback: str | None) -> str:
    frame = top_frame(traceback)
    basis = "\n".join([error_type or "", normalize_message(message), frame.key if frame else ""])
    return hashlib.sha1(basis.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]


def fingerprint_job(job: Job) -> str:
    return fingerprint(job.error_type, job.error, job.traceback)


@dataclass(slots=True)
class ErrorGroup:
    fingerprint: str
    error_type: str
    message: str
    sample_message: str
    top_frame: str | None
    sample_job_id: str
    count: int = 0
    failed: int = 0
    awaiting_retry: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    methods: dict[str, int] = field(default_factory=dict)

    def add(self, job: Job) -> None:
        self.count += 1
        if job.state is JobState.FAILED:
            self.failed += 1
        else:
            self.awaiting_retry += 1
        seen = job.finished_at or job.updated_at
        if seen is not None:
            if self.first_seen is None or seen < self.first_seen:
                self.first_seen = seen
            if self.last_seen is None or seen > self.last_seen:
                self.last_seen = seen
        self.methods[job.method] = self.methods.get(job.method, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        methods = sorted(self.methods.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "fingerprint": self.fingerprint,
            "error_type": self.error_type,
            "message": self.message,
            "sample_message": self.sample_message,
            "top_frame": self.top_frame,
            "sample_job_id": self.sample_job_id,
            "count": self.count,
            "failed": self.failed,
            "awaiting_retry": self.awaiting_retry,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "methods": [m for m, _ in methods[:10]],
        }


@dataclass(slots=True)
class ErrorReport:
    groups: list[ErrorGroup]
    scanned: int
    scan_limit: int
    #: True when more failures exist beyond the scanned ones.
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "scanned": self.scanned,
            "scan_limit": self.scan_limit,
            "truncated": self.truncated,
        }


async def group_errors(storage: Storage, *, scan_limit: int = SCAN_LIMIT) -> ErrorReport:
    """Group the newest ``scan_limit`` failures; largest groups first."""
    groups: dict[str, ErrorGroup] = {}
    scanned, cursor, truncated = 0, None, False
    while scanned < scan_limit:
        limit = min(1000, scan_limit - scanned)
        page = await storage.list_jobs(JobQuery(states=FAILURE_STATES, cursor=cursor, limit=limit))
        for job in page.items:
            fp = fingerprint_job(job)
            group = groups.get(fp)
            if group is None:
                frame = top_frame(job.traceback)
                group = groups[fp] = ErrorGroup(
                    fingerprint=fp,
                    error_type=job.error_type or "",
                    message=normalize_message(job.error),
                    sample_message=(job.error or "")[:300],
                    top_frame=str(frame) if frame else None,
                    sample_job_id=job.id,
                )
            group.add(job)
        scanned += len(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        if scanned >= scan_limit:
            truncated = True
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.fingerprint))
    return ErrorReport(ordered, scanned, scan_limit, truncated)


#: Pages of 1,000 failures one filtered list request may read.
LIST_SCAN_PAGES = 10


async def list_group_jobs(storage: Storage, query: JobQuery, fp: str) -> Page:
    """A page of the jobs of one error group (``query``'s other filters apply).

    The fingerprint is matched in Python, so a request reads at most
    :data:`LIST_SCAN_PAGES` pages of failures; the returned cursor continues
    the scan where it stopped (a page may then hold fewer than ``limit`` jobs).
    """
    states = FAILURE_STATES if query.states is None else query.states & FAILURE_STATES
    if not states:
        return Page([], None)
    items: list[Job] = []
    cursor = query.cursor
    for _ in range(LIST_SCAN_PAGES):
        page = await storage.list_jobs(replace(query, states=states, cursor=cursor, limit=1000))
        for job in page.items:
            if fingerprint_job(job) == fp:
                items.append(job)
                if len(items) == query.limit:
                    return Page(items, job.id)
        if page.next_cursor is None:
            return Page(items, None)
        cursor = page.next_cursor
    return Page(items, cursor)
