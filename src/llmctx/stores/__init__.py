"""Stores keep sessions and calls: memory (tests), SQLite (the default), PostgreSQL (at scale).

``open_store(url)`` picks one from a URL or path: ``memory:``, ``sqlite:///path.db`` or a bare
path, ``postgresql://...``. ``default_store()`` is the process-wide store named by
``$LLMCTX_DB``. ``PostgresStore`` imports psycopg only when one is created.
``shown_status(row)`` tells a ``running`` row whose process is gone (``interrupted``).
SQLite and PostgreSQL stores have async faces (``await store.asave_call(call, row)``) that
commit without blocking the event loop.
"""

from __future__ import annotations

from ._base import SessionRecord, SessionStatus, Store, shown_status
from ._open import default_store, open_store
from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "default_store",
    "open_store",
    "shown_status",
]
