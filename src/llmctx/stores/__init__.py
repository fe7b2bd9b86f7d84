"""Stores keep sessions and calls: memory (tests), SQLite (the default), PostgreSQL (at scale).

``open_store(url)`` picks one from a URL or path: ``memory:``, ``sqlite:///path.db`` or a bare
path, ``postgresql://...``.
"""

from __future__ import annotations

from ._base import SessionRecord, SessionStatus, Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "SessionRecord", "SessionStatus", "Store"]
