"""``PostgresConfig``: connection, pool and schema settings (no driver import)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...errors import ConfigurationError

DEFAULT_DATABASE_URL = "postgresql://localhost:5432/qml"

#: Longest ``table_name`` (bytes): every other object is named ``<table>_<suffix>``
#: and PostgreSQL truncates identifiers at 63 bytes.
MAX_TABLE_NAME_BYTES = 40
MAX_SCHEMA_NAME_BYTES = 63

#: Query-string options of a ``postgresql://`` URL that qml reads (and removes
#: before the URL reaches the driver, which would send them as server settings).
URL_OPTIONS = (
    "qml_schema",
    "qml_table",
    "qml_max_connections",
    "qml_min_connections",
    "qml_auto_migrate",
    "qml_vacuum_every",
    "qml_hand_off",
    "qml_durable_claims",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def parse_int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None


def check_identifier(kind: str, name: object, max_bytes: int) -> str:
    """Validate a schema or table name. Any character but NUL is allowed: names
    are always written into SQL as quoted identifiers."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{kind} must be a non-empty string")
    if "\x00" in name:
        raise ConfigurationError(f"{kind} must not contain NUL")
    if len(name.encode()) > max_bytes:
        raise ConfigurationError(f"{kind} {name!r} is longer than {max_bytes} bytes")
    if "$qml$" in name:
        raise ConfigurationError(f"{kind} must not contain '$qml$'")
    return name


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return url


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Settings of :class:`PostgresStorage`.

    ``schema_name`` and ``table_name`` name the PostgreSQL schema and the job
    table; the other tables are ``<table_name>_<suffix>`` in the same schema,
    so several qml installations can share one database. Build one directly,
    from the environment (:meth:`from_env`) or from a URL (:meth:`from_url`),
    and adjust it with the ``with_*`` methods (each returns a new config)::

        PostgresConfig("postgresql://app@db/app").with_max_connections(20)
    """

    database_url: str = DEFAULT_DATABASE_URL
    auto_migrate: bool = True
    max_connections: int = 10
    min_connections: int = 1
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    schema_name: str = "qml"
    table_name: str = "qml_jobs"
    #: Vacuum the job table after this many jobs claimed through this instance
    #: (0: leave it to autovacuum). Every claim leaves a dead entry at the front of
    #: the claim index, where the next claims start; autovacuum visits a busy table
    #: about once a minute at most (``autovacuum_naptime``), so without this a
    #: drain of a large backlog slows down as the dead entries pile up.
    vacuum_every: int = 20_000
    #: An idle server parks its claim in the database while it waits; an enqueue
    #: of one ready job claims it for the longest-parked server and sends it over
    #: (``NOTIFY`` at commit): the job starts without a wake-up and a claim of its
    #: own. ``False``: servers are woken and claim, as before.
    hand_off: bool = True
    #: ``True``: a claim waits for its WAL flush like every other commit, so the
    #: attempt it counts survives a crash of PostgreSQL. ``False``: the claim
    #: connection commits with ``synchronous_commit = off`` (faster claims; the
    #: flush of any later durable commit covers them); a crash of PostgreSQL just
    #: after a claim may undo it, and the job runs again under the same attempt
    #: number (docs/reliability.md).
    durable_claims: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.database_url, str) or not self.database_url:
            raise ConfigurationError("database_url must be a non-empty string")
        scheme = self.database_url.split(":", 1)[0].lower()
        if scheme not in ("postgres", "postgresql"):
            raise ConfigurationError(
                "database_url must start with postgresql:// "
                f"(got {mask_password(self.database_url)!r})"
            )
        for name in ("max_connections", "min_connections", "vacuum_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be an integer")
        if self.max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        if not 0 <= self.min_connections <= self.max_connections:
            raise ConfigurationError("min_connections must be between 0 and max_connections")
        if self.vacuum_every < 0:
            raise ConfigurationError("vacuum_every must be 0 (off) or a number of jobs")
        for name in ("connect_timeout", "command_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not isinstance(self.hand_off, bool):
            raise ConfigurationError("hand_off must be True or False")
        if not isinstance(self.durable_claims, bool):
            raise ConfigurationError("durable_claims must be True or False")
        check_identifier("schema_name", self.schema_name, MAX_SCHEMA_NAME_BYTES)
        check_identifier("table_name", self.table_name, MAX_TABLE_NAME_BYTES)

    def __repr__(self) -> str:
        return (
            f"PostgresConfig(database_url={mask_password(self.database_url)!r}, "
            f"auto_migrate={self.auto_migrate}, max_connections={self.max_connections}, "
            f"min_connections={self.min_connections}, connect_timeout={self.connect_timeout}, "
            f"command_timeout={self.command_timeout}, schema_name={self.schema_name!r}, "
            f"table_name={self.table_name!r}, vacuum_every={self.vacuum_every}, "
            f"hand_off={self.hand_off}, durable_claims={self.durable_claims})"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_url(cls, url: str) -> PostgresConfig:
        """Config for ``postgresql://user:pass@host:port/db``.

        Besides the driver's own options the query string may carry
        ``qml_schema``, ``qml_table``, ``qml_max_connections``,
        ``qml_min_connections``, ``qml_auto_migrate``, ``qml_vacuum_every``,
        ``qml_hand_off`` and ``qml_durable_claims``.
        """
        parts = urlsplit(url)
        keep: list[tuple[str, str]] = []
        opts: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in URL_OPTIONS:
                opts[key] = value
            else:
                keep.append((key, value))
        kwargs: dict[str, object] = {"database_url": parts._replace(query=urlencode(keep)).geturl()}
        if "qml_schema" in opts:
            kwargs["schema_name"] = opts["qml_schema"]
        if "qml_table" in opts:
            kwargs["table_name"] = opts["qml_table"]
        if "qml_max_connections" in opts:
            kwargs["max_connections"] = parse_int(
                "qml_max_connections", opts["qml_max_connections"]
            )
        if "qml_min_connections" in opts:
            kwargs["min_connections"] = parse_int(
                "qml_min_connections", opts["qml_min_connections"]
            )
        if "qml_auto_migrate" in opts:
            kwargs["auto_migrate"] = parse_bool("qml_auto_migrate", opts["qml_auto_migrate"])
        if "qml_vacuum_every" in opts:
            kwargs["vacuum_every"] = parse_int("qml_vacuum_every", opts["qml_vacuum_every"])
        if "qml_hand_off" in opts:
            kwargs["hand_off"] = parse_bool("qml_hand_off", opts["qml_hand_off"])
        if "qml_durable_claims" in opts:
            kwargs["durable_claims"] = parse_bool("qml_durable_claims", opts["qml_durable_claims"])
        return cls(**kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PostgresConfig:
        """Config from ``DATABASE_URL``, ``QML_MAX_CONNECTIONS``,
        ``QML_MIN_CONNECTIONS`` and ``QML_AUTO_MIGRATE`` (unset ones keep defaults)."""
        env = os.environ if environ is None else environ
        cfg = cls.from_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
        changes: dict[str, object] = {}
        if env.get("QML_MAX_CONNECTIONS"):
            changes["max_connections"] = parse_int(
                "QML_MAX_CONNECTIONS", env["QML_MAX_CONNECTIONS"]
            )
        if env.get("QML_MIN_CONNECTIONS"):
            changes["min_connections"] = parse_int(
                "QML_MIN_CONNECTIONS", env["QML_MIN_CONNECTIONS"]
            )
        if env.get("QML_AUTO_MIGRATE"):
            changes["auto_migrate"] = parse_bool("QML_AUTO_MIGRATE", env["QML_AUTO_MIGRATE"])
        return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ fluent setters
    def with_database_url(self, url: str) -> Self:
        return dataclasses.replace(self, database_url=url)

    def with_auto_migrate(self, enabled: bool) -> Self:
        return dataclasses.replace(self, auto_migrate=enabled)

    def with_max_connections(self, n: int) -> Self:
        return dataclasses.replace(self, max_connections=n)

    def with_min_connections(self, n: int) -> Self:
        return dataclasses.replace(self, min_connections=n)

    def with_connect_timeout(self, seconds: float) -> Self:
        return dataclasses.replace(self, connect_timeout=seconds)

    def with_command_timeout(self, seconds: float) -> Self:
        return dataclasses.replace(self, command_timeout=seconds)

    def with_schema_name(self, name: str) -> Self:
        return dataclasses.replace(self, schema_name=name)

    def with_table_name(self, name: str) -> Self:
        return dataclasses.replace(self, table_name=name)

    def with_vacuum_every(self, jobs: int) -> Self:
        return dataclasses.replace(self, vacuum_every=jobs)

    def with_hand_off(self, enabled: bool) -> Self:
        return dataclasses.replace(self, hand_off=enabled)

    def with_durable_claims(self, enabled: bool) -> Self:
        return dataclasses.replace(self, durable_claims=enabled)
