"""qml on PostgreSQL (database bench_qml, schema installed by auto-migrate)."""

from __future__ import annotations

from harness.adapter import pg_recreate_database, pg_url, psql  # type: ignore[import-not-found]
from qml_common import QmlBase, noop, registry  # noqa: F401  (registry: the worker's app)

DB = "bench_qml"


class QmlPostgres(QmlBase):
    backend = "postgres"
    url = pg_url(DB)
    notes = QmlBase.notes + "; FOR UPDATE SKIP LOCKED claims; LISTEN/NOTIFY wake-up"

    async def setup(self) -> None:
        pg_recreate_database(DB)
        await self.open()

    async def reset(self) -> None:
        await self.storage.close()
        psql(DB, "DROP SCHEMA IF EXISTS qml CASCADE")
        await self.open()  # auto-migrate installs the schema again


ADAPTER = QmlPostgres()
