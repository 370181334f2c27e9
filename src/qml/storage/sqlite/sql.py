"""The backend's SQL, read once from ``schema.sql`` and ``queries.sql`` beside it."""

from __future__ import annotations

import re
from importlib.resources import files

from .codec import BRIEF_COLUMNS, JOB_COLUMNS, RECURRING_COLUMNS

#: Version written by ``schema.sql``; a database of a newer version is refused.
SCHEMA_VERSION = 1

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDERS = {
    "{job_columns}": JOB_COLUMNS,
    "{brief_columns}": BRIEF_COLUMNS,
    "{recurring_columns}": RECURRING_COLUMNS,
}


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def parse_queries(text: str) -> dict[str, str]:
    """Split a ``-- name: x`` file into ``{name: sql}`` (comment lines under a
    header, the trailing ``;`` and the placeholders resolved)."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        for key, value in _PLACEHOLDERS.items():
            sql = sql.replace(key, value)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql
    return queries


SCHEMA: str = _read("schema.sql")
Q: dict[str, str] = parse_queries(_read("queries.sql"))
