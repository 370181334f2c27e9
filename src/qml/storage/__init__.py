"""Storage: the contract, its request values and the backends."""

from .base import Storage
from .factory import StorageInstance
from .memory import MemoryStorage

__all__ = ["MemoryStorage", "Storage", "StorageInstance"]
