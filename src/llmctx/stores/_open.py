"""The one resolver of store URLs: what a URL or path names, ``$LLMCTX_DB``, the shared stores.

Accepted forms::

    memory:                          MemoryStore (nothing survives the process)
    sqlite:///absolute/path.db       SQLiteStore
    sqlite:relative/path.db          SQLiteStore
    path/to/file.db, ~/x.db, C:\\x.db SQLiteStore (any string without a URL scheme)
    postgresql://user:pw@host/db     PostgresStore (also postgres://); an extra query
                                     parameter ?schema=NAME picks the schema (default llmctx)
    host=db user=app dbname=x        PostgresStore: a libpq keyword/value DSN (schema llmctx)

This module is the only one that reads ``$LLMCTX_DB`` or parses one of these forms; the stores,
sessions, the CLI and the workshop ask it. Messages about a form never contain its password.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from .._exceptions import ConfigError
from .._redact import redact_dsn

if TYPE_CHECKING:
    from ._base import Store

__all__ = [
    "default_sqlite_path",
    "default_store",
    "program_sqlite_path",
    "env_sqlite_file",
    "open_store",
    "resolve_store",
    "sqlite_file_of",
    "sqlite_path",
    "sqlite_path_from_url",
]

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

_Kind = Literal["memory", "sqlite-url", "postgres", "unknown", "path"]


def _env() -> str:
    """``$LLMCTX_DB`` without surrounding blanks ("" when unset): its only reader."""
    return os.environ.get("LLMCTX_DB", "").strip()


def _kind(target: str) -> _Kind:
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


def _unknown(target: str) -> ConfigError:
    return ConfigError(
        f"unknown store {redact_dsn(target, target)!r}: use {ACCEPTED_FORMS} (in the argument or "
        "in LLMCTX_DB)"
    )


# -- SQLite files ------------------------------------------------------------------------------


def default_sqlite_path() -> Path:
    """The default database file: ``platformdirs.user_data_dir("llmctx")/llmctx.db``."""
    import platformdirs

    return Path(platformdirs.user_data_dir("llmctx", appauthor=False)) / "llmctx.db"


def program_sqlite_path(program: str) -> Path:
    """The kept database of one of llmctx's own programs, beside the default one.

    ``llmctx workshop`` records into ``workshop.db`` and ``llmctx demo`` into ``demo.db`` in
    the directory of :func:`default_sqlite_path`, each reset at the start of a run.
    """
    return default_sqlite_path().with_name(f"{program}.db")


def sqlite_path_from_url(url: str) -> str:
    """The file path of a ``sqlite:`` URL: ``sqlite:///abs/path.db`` or ``sqlite:rel.db``.

    Raises:
        ConfigError: ``url`` does not name a file.
    """
    rest = url[len("sqlite:") :] if url.lower().startswith("sqlite:") else url
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigError(
                f"SQLite URL {url!r} has a host part; use sqlite:///absolute/path.db "
                "or sqlite:relative/path.db"
            )
        # sqlite:///C:/x.db on Windows names C:/x.db.
        if len(rest) > 2 and rest[2] == ":" and rest[1].isalpha():
            rest = rest[1:]
    rest = unquote(rest.split("?", 1)[0])
    if not rest:
        raise ConfigError(
            f"SQLite URL {url!r} names no file; use sqlite:///absolute/path.db "
            "or sqlite:relative/path.db"
        )
    return rest


def sqlite_path(path: str | os.PathLike[str] | None) -> str:
    """The file :class:`~llmctx.stores.SQLiteStore` opens for ``path``.

    Args:
        path: a file path, a ``sqlite:`` URL or ``":memory:"``; ``None`` means ``$LLMCTX_DB``,
            else :func:`default_sqlite_path`.

    Returns:
        The path (``~`` expanded), or ``":memory:"``.

    Raises:
        ConfigError: ``path`` is ``None`` and ``$LLMCTX_DB`` names another kind of store, or a
            ``sqlite:`` URL names no file.
    """
    if path is None:
        env = _env()
        if not env:
            return str(default_sqlite_path())
        kind = _kind(env)
        if kind not in {"sqlite-url", "path"}:
            what = "a PostgreSQL DSN" if kind == "postgres" else f"a {_scheme_of(env)!r} URL"
            raise ConfigError(
                f"LLMCTX_DB is {what}, not a SQLite file; open it with "
                "llmctx.stores.open_store() or default_store() instead of SQLiteStore()"
            )
        path = env
    text = os.fspath(path)
    if text.lower().startswith("sqlite:"):
        return sqlite_path_from_url(text)
    if text == ":memory:":
        return text
    return str(Path(text).expanduser())


def _scheme_of(target: str) -> str:
    match = _SCHEME.match(target)
    return match.group(1) if match else "unknown"


def sqlite_file_of(url_or_path: str | None) -> str | None:
    """The SQLite file ``open_store(url_or_path)`` would open, or None for other stores.

    ``None`` and ``""`` follow ``$LLMCTX_DB`` and then the default path, like
    :func:`open_store`.

    Raises:
        ConfigError: ``url_or_path`` is not one of the accepted forms.
    """
    target = (url_or_path or "").strip() or _env()
    if not target:
        return str(default_sqlite_path())
    kind = _kind(target)
    if kind == "sqlite-url":
        return sqlite_path_from_url(target)
    if kind == "path":
        return os.path.expanduser(target)
    if kind == "unknown":
        raise _unknown(target)
    return None


def env_sqlite_file() -> str | None:
    """The SQLite file ``$LLMCTX_DB`` names; None when it is unset or names another store.

    For programs that want a SQLite file of their own unless the user chose one (the demo,
    the workshop).

    Raises:
        ConfigError: ``$LLMCTX_DB`` is a ``sqlite:`` URL that names no file.
    """
    env = _env()
    if not env or _kind(env) not in {"sqlite-url", "path"}:
        return None
    return sqlite_file_of(env)


# -- stores ------------------------------------------------------------------------------------


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
    # Imported here: the stores ask this module for their paths, so it cannot import them
    # while the package loads.
    from .memory import MemoryStore
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

    target = (url_or_path or "").strip() or _env()
    if not target:
        return SQLiteStore(default_sqlite_path())
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
    env = _env()
    current = _default
    if current is not None and current[0] == env:
        return current[1]
    with _default_lock:
        if _default is None or _default[0] != env:
            _default = (env, open_store(env or None))
        return _default[1]


_stores_by_url: dict[str, Store] = {}
_stores_lock = threading.Lock()


def resolve_store(store: Store | str | None, inherited: Store | None = None) -> Store:
    """The store a session writes to.

    Args:
        store: a Store, used as is; a URL or path, opened on first use and then shared by
            everything in the process that names the same string (one store, one connection,
            per URL per process; never closed by llmctx); or None.
        inherited: the store to use when ``store`` is None (a parent session's). When both are
            None: :func:`default_store`.

    Returns:
        The store.

    Raises:
        ConfigError: the string (or ``$LLMCTX_DB``) is not one of the accepted forms.
        StoreError: the store cannot be opened.
    """
    if store is not None and not isinstance(store, str):
        return store
    if isinstance(store, str):
        with _stores_lock:
            found = _stores_by_url.get(store)
            if found is None:
                found = _stores_by_url[store] = open_store(store)
            return found
    if inherited is not None:
        return inherited
    return default_store()
