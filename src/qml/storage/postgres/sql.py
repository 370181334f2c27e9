"""The SQL files beside this module and how names are written into them.

``install.sql``, ``migrations/*.sql`` and ``queries.sql`` refer to database
objects through placeholders, replaced here by quoted identifiers built from
the configured schema and table names (user values are never written into
SQL any other way):

* ``{{schema}}``: the schema;
* ``{{table}}``: the job table; ``{{table_<suffix>}}``: ``<table>_<suffix>``
  (the other tables, the enum, functions, triggers and indexes);
* ``{{channel}}``: the LISTEN/NOTIFY channel, as a string literal;
* ``{{job_columns}}``: the job columns read back, on alias ``j`` (the state as
  text, so asyncpg needs no type introspection on each new connection);
* ``{{job_json}}``: the same columns as one JSON text (a hand-off's notification);
* ``{{query_<name>}}``: in ``queries.sql`` only, the text of the named query;
* ``{{part_<name>}}``: in ``queries.sql`` only, the text of a shared part.

``queries.sql`` holds named queries, each after a ``-- name: <name>`` line, and
parts that several of them share (not statements by themselves), each after a
``-- part: <name>`` line.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ...errors import ConfigurationError

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_NAME_LINE = re.compile(r"^-- (name|part): ([a-z_]+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"\{\{query_([a-z_]+)\}\}")
_PART = re.compile(r"\{\{part_([a-z_]+)\}\}")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"`` doubled)."""
    if "\x00" in name:
        raise ConfigurationError("identifiers must not contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a standard SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def stable_key(*parts: str) -> int:
    """A signed 64-bit key derived from ``parts`` (for advisory locks)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_JOB_COLUMN_NAMES = (
    "id", "method", "args", "queue", "priority", "state", "attempts", "max_retries",
    "crashes", "run_at", "timeout", "dedup_key", "meta", "created_at", "updated_at",
    "enqueued_at", "started_at", "finished_at", "expires_at", "error_type", "error",
    "traceback", "result", "server_id", "lease_token", "lease_expires_at",
    "cancel_requested", "progress", "history",
)  # fmt: skip
JOB_COLUMNS = ", ".join(
    "j.state::text AS state" if c == "state" else f"j.{c}" for c in _JOB_COLUMN_NAMES
)

#: The job columns as one JSON text (a hand-off's notification): JSON columns as
#: text, as a fetched row has them; times in ISO 8601 (the session is in UTC).
_JSON_TEXT_COLUMNS = frozenset({"args", "meta", "result", "history", "state"})
JOB_JSON = (
    "json_build_object("
    + ", ".join(
        f"'{c}', j.{c}::text" if c in _JSON_TEXT_COLUMNS else f"'{c}', j.{c}"
        for c in _JOB_COLUMN_NAMES
    )
    + ")::text"
)


@dataclass(frozen=True, slots=True)
class Names:
    """The database names of one qml installation."""

    schema: str
    table: str

    @property
    def channel(self) -> str:
        """NOTIFY channel: short, fixed-alphabet and unique per installation."""
        return "qml_" + hashlib.sha256(f"{self.schema}\x00{self.table}".encode()).hexdigest()[:24]

    @property
    def qualified_table(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def lock_key(self, purpose: str) -> int:
        return stable_key("qml", purpose, self.schema, self.table)

    def render(self, sql: str) -> str:
        """Replace the placeholders of ``sql``; unknown ones are an error."""

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key == "schema":
                return quote_ident(self.schema)
            if key == "table":
                return quote_ident(self.table)
            if key.startswith("table_"):
                return quote_ident(self.table + key[len("table") :])
            if key == "channel":
                return quote_literal(self.channel)
            if key == "job_columns":
                return JOB_COLUMNS
            if key == "job_json":
                return JOB_JSON
            raise ValueError(f"unknown SQL placeholder {m.group(0)}")

        return _PLACEHOLDER.sub(sub, sql)


def read_sql(name: str) -> str:
    """The text of an SQL file of this package (``install.sql``, ``migrations/x.sql``)."""
    node = resources.files(__package__ or "qml.storage.postgres")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


@cache
def named_queries() -> dict[str, str]:
    """``queries.sql`` split into ``{name: sql}`` (placeholders not yet rendered)."""
    return _split_queries(read_sql("queries.sql"))


def _split_queries(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    parts: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end].strip()
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        kind, name = m.group(1), m.group(2)
        into = out if kind == "name" else parts
        if name in into:
            raise ValueError(f"{kind} {name!r} is defined twice in queries.sql")
        into[name] = "\n".join(lines).strip().rstrip(";")
    unused = set(parts) - {p for sql in out.values() for p in _PART.findall(sql)}
    if unused:
        raise ValueError(f"queries.sql has parts no query uses: {sorted(unused)}")
    # {{part_<name>}}: shared text; {{query_<name>}}: the text of another query
    # (a statement built around it)
    for name, sql in out.items():
        out[name] = _PART.sub(lambda m: parts[m.group(1)], sql)
    for name, sql in out.items():
        out[name] = _INCLUDE.sub(lambda m: out[m.group(1)], sql)
    return out


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """The numbered migrations, oldest first (placeholders not yet rendered)."""
    folder = resources.files(__package__ or "qml.storage.postgres").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        raise ValueError("migrations must be numbered 0001, 0002, ... without gaps")
    return tuple(found)


def latest_version() -> int:
    return migrations()[-1].version
