"""PostgreSQL storage (``pip install 'qml-jobs[postgres]'``).

``SELECT … FOR UPDATE SKIP LOCKED`` claims, LISTEN/NOTIFY wake-ups, the whole
schema embedded as ``install.sql`` plus numbered migrations, and enqueueing
inside the caller's own transaction. Importing this package needs asyncpg;
importing ``qml`` does not.
"""

from __future__ import annotations

from ...errors import MissingDependencyError

try:
    import asyncpg  # noqa: F401
except ImportError as exc:
    raise MissingDependencyError("asyncpg", "postgres") from exc

from .config import PostgresConfig
from .migrate import render_install_sql
from .sql import quote_ident
from .storage import PostgresStorage

__all__ = ["PostgresConfig", "PostgresStorage", "quote_ident", "render_install_sql"]
