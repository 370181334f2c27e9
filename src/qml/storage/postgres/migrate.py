"""Installing and upgrading the schema.

A fresh schema gets ``install.sql`` in one transaction and every migration
recorded as applied; an existing one gets the migrations it lacks, in order.
Both run under a transaction-scoped advisory lock derived from the schema and
table names, so servers starting together on an empty database install the
schema exactly once: the others wait for the lock, then find nothing to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...errors import MigrationError
from .config import PostgresConfig
from .driver import Conn
from .sql import Migration, Names, latest_version, migrations, named_queries, read_sql

logger = logging.getLogger("qml.storage.postgres")


def render_install_sql(target: PostgresConfig | Names) -> str:
    """``install.sql`` with this installation's names, ready for review or ``psql``
    (run it in one transaction, then record the versions: :meth:`migrate` does both)."""
    names = target if isinstance(target, Names) else Names(target.schema_name, target.table_name)
    return names.render(read_sql("install.sql"))


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What :meth:`Migrator.status` found."""

    installed: bool
    versions: tuple[int, ...]
    synchronous_commit: str = ""

    @property
    def current(self) -> int:
        """Highest applied migration (0: none)."""
        return max(self.versions, default=0)

    @property
    def up_to_date(self) -> bool:
        return self.installed and self.current >= latest_version()


class Migrator:
    """Schema installation for one :class:`Names` (schema + table)."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self._q = {k: names.render(v) for k, v in named_queries().items()}

    async def status(self, conn: Conn) -> SchemaStatus:
        n = self.names
        row = await conn.fetchrow(
            self._q["schema_status"], n.schema, n.table, n.table + "_migrations"
        )
        assert row is not None
        versions: tuple[int, ...] = ()
        if row["has_versions"]:
            versions = tuple(r["version"] for r in await conn.fetch(self._q["applied_versions"]))
        return SchemaStatus(row["has_table"], versions, row["synchronous_commit"])

    def _record(self, applied: list[Migration]) -> str:
        values = ", ".join(f"({m.version}, '{m.name}')" for m in applied)
        return self.names.render(
            f"INSERT INTO {{{{schema}}}}.{{{{table_migrations}}}} (version, name) VALUES {values}"
        )

    async def migrate(
        self,
        conn: Conn,
        *,
        target: int | None = None,
        use_install_script: bool = True,
    ) -> list[int]:
        """Bring the schema to ``target`` (default: latest); return the versions applied.

        ``use_install_script=False`` builds a fresh schema migration by
        migration instead of through ``install.sql`` (tests compare the two).
        """
        latest = latest_version()
        target = latest if target is None else target
        if not 0 <= target <= latest:
            raise MigrationError(f"no migration {target}: this qml knows 1..{latest}")
        lock = self.names.lock_key("migrate")
        async with conn.transaction():
            # The key is an integer computed here; the schema name is quoted.
            await conn.execute(
                f"SELECT pg_advisory_xact_lock({lock});"
                + self.names.render("CREATE SCHEMA IF NOT EXISTS {{schema}}")
            )
            status = await self.status(conn)
            if status.current > latest:
                raise MigrationError(
                    f"schema {self.names.schema!r} is at version {status.current}, newer than "
                    f"this qml ({latest}); upgrade qml"
                )
            if not status.versions and status.installed:
                raise MigrationError(
                    f"table {self.names.schema}.{self.names.table} exists but is not a qml "
                    "table (no version table); choose another schema_name or table_name"
                )
            if not status.versions and use_install_script and target == latest:
                todo = list(migrations())
                await conn.execute(render_install_sql(self.names) + ";\n" + self._record(todo))
            else:
                todo = [
                    m
                    for m in migrations()
                    if m.version not in status.versions and m.version <= target
                ]
                for m in todo:
                    await conn.execute(self.names.render(m.sql) + ";\n" + self._record([m]))
        applied = [m.version for m in todo]
        if applied:
            logger.info(
                "migrated schema %s to version %d",
                self.names.schema,
                max(applied),
                extra={
                    "action": "migrate",
                    "schema": self.names.schema,
                    "table": self.names.table,
                    "versions": applied,
                },
            )
        return applied
