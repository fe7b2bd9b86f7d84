"""Pick a store from a URL or a path, and the process-wide default store.

Accepted forms::

    memory:                          MemoryStore (nothing survives the process)
    sqlite:///absolute/path.db       SQLiteStore
    sqlite:relative/path.db          SQLiteStore
    path/to/file.db, ~/x.db, C:\\x.db SQLiteStore (any string without a URL scheme)
    postgresql://user:pw@host/db     PostgresStore (also postgres://); an extra query
                                     parameter ?schema=NAME picks the schema (default llmctx)
    host=db user=app dbname=x        PostgresStore: a libpq keyword/value DSN (schema llmctx)
"""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import unquote

from .._exceptions import ConfigError
from .._redact import redact_dsn
from ._base import Store
from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore, sqlite_path_from_url

__all__ = ["default_store", "open_store", "sqlite_file_of"]

ACCEPTED_FORMS = (
    "'memory:', 'sqlite:///absolute/path.db', 'sqlite:relative/path.db', a bare file path, "
    "'postgresql://user:password@host:port/dbname[?schema=NAME]' (also 'postgres://'), "
    "or a libpq keyword DSN such as 'host=db user=app dbname=llmctx'"
)
# libpq's keyword/value form: 'host=db user=app ...'. A file path never starts with one of
# libpq's keywords followed by '='; without this a DSN became a SQLite file named after it,
# password and all.
_KEYWORD_DSN = re.compile(
    r"^\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|"
    r"connect_timeout|application_name|options|target_session_attrs)\s*=",
    re.IGNORECASE,
)
# Two characters or more: a one-letter "scheme" is a Windows drive (C:\db).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")


def _kind(target: str) -> str:
    lowered = target.lower()
    if lowered in {"memory:", "memory://"}:
        return "memory"
    if lowered.startswith("sqlite:"):
        return "sqlite-url"
    if lowered.startswith(("postgresql://", "postgres://")) or _KEYWORD_DSN.match(target):
        return "postgres"
    if _SCHEME.match(target):
        return "unknown"
    return "path"


def sqlite_file_of(url_or_path: str | None) -> str | None:
    """The SQLite file ``open_store(url_or_path)`` would open, or None for other stores.

    ``None`` and ``""`` follow ``$LLMCTX_DB`` and then the default path, like
    :func:`open_store`.

    Raises:
        ConfigError: ``url_or_path`` is not one of the accepted forms.
    """
    target = (url_or_path or "").strip() or os.environ.get("LLMCTX_DB", "").strip()
    if not target:
        from .sqlite import default_sqlite_path

        return str(default_sqlite_path())
    kind = _kind(target)
    if kind == "sqlite-url":
        return sqlite_path_from_url(target)
    if kind == "path":
        return os.path.expanduser(target)
    if kind == "unknown":
        raise _unknown(target)
    return None


def _split_schema(url: str) -> tuple[str, str]:
    """``url`` without its ``schema=`` query parameter (libpq rejects it), and that schema."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, "llmctx"
    schema = "llmctx"
    kept: list[str] = []
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "schema":
            schema = unquote(value)
        elif item:
            kept.append(item)
    return (base + "?" + "&".join(kept) if kept else base), schema


def _unknown(target: str) -> ConfigError:
    return ConfigError(
        f"unknown store {redact_dsn(target, target)!r}: use {ACCEPTED_FORMS} (in the argument or "
        "in LLMCTX_DB)"
    )


def open_store(url_or_path: str | None = None) -> Store:
    """Open the store named by a URL or a file path.

    Args:
        url_or_path: one of the forms in this module's docstring. ``None`` (or an empty
            string) means ``$LLMCTX_DB`` when set, else the default SQLite file.

    Returns:
        A new store; the caller owns it and should ``close()`` it.

    Raises:
        ConfigError: the string is not one of the accepted forms, or a DSN is malformed.
        StoreError: the store cannot be opened (unwritable path, unreachable server, ...).
    """
    target = (url_or_path or "").strip()
    if not target:
        env = os.environ.get("LLMCTX_DB", "").strip()
        return open_store(env) if env else SQLiteStore()
    kind = _kind(target)
    if kind == "memory":
        return MemoryStore()
    if kind == "postgres":
        dsn, schema = _split_schema(target)
        return PostgresStore(dsn, schema=schema)
    if kind == "unknown":
        raise _unknown(target)
    return SQLiteStore(target)


_default_lock = threading.Lock()
_default: tuple[str, Store] | None = None


def default_store() -> Store:
    """The process-wide store named by ``$LLMCTX_DB`` (default SQLite file when unset).

    It is created on first use and shared by every session that names no store. When
    ``$LLMCTX_DB`` has changed since it was created, a new one is made for the new value; the
    previous one is left open for whoever still holds it (it closes when garbage-collected).

    Raises:
        ConfigError: ``$LLMCTX_DB`` is not one of the accepted forms.
        StoreError: the store cannot be opened.
    """
    global _default
    env = os.environ.get("LLMCTX_DB", "").strip()
    current = _default
    if current is not None and current[0] == env:
        return current[1]
    with _default_lock:
        if _default is None or _default[0] != env:
            _default = (env, open_store(env or None))
        return _default[1]
