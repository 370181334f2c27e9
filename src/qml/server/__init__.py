"""The worker server: claims jobs, runs them, records outcomes."""

from .server import BackgroundJobServer

__all__ = ["BackgroundJobServer"]
