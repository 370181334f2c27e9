"""The embedded, durable default backend: one SQLite file in WAL mode."""

from .storage import SqliteStorage

__all__ = ["SqliteStorage"]
