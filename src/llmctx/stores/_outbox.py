"""The outbox: a durable journal of what a store or a ledger could not take yet, replayed later.

A finished call is written through to its session's store before it returns. When that write
fails with a transient error (SQLite busy past its timeout, PostgreSQL restarting or out of
reach) it is retried with a short backoff; if it still fails, the call (and the session row
that came with it) is appended to the store's outbox and the user's call goes on. The outbox
is replayed after the next write to that store that succeeds, in this process or any other,
and when a store on it is opened. Budget settles that could not reach their ledger (Redis
down) wait in a ledger outbox the same way (see :func:`keep_settle`).

**Where.** One journal per store, named by what the store writes to and never by a secret:

* SQLite file ``x.db``: ``x.db-outbox.jsonl`` beside it;
* PostgreSQL: ``platformdirs.user_data_dir("llmctx")/outbox-<hash>.jsonl``, the hash of
  ``host:port/dbname/user/schema`` (no password);
* a ledger (:class:`~llmctx.RedisLedger`): ``.../outbox-ledger-<hash>.jsonl``, the hash of its
  server (password redacted), prefix and name;
* a store or ledger without a durable identity (:class:`~llmctx.stores.MemoryStore`, a SQLite
  ``:memory:`` database, any other object): a journal in this process's memory, kept as long
  as the object lives. Writing it to disk would be wrong: no other process can reach that
  store or ledger, and a new one in a later process is a different one.

**Format.** One JSON object per line, ASCII only (a lone surrogate is written as ``\\udcff``,
so every string comes back exactly), appended with ``O_APPEND`` under an exclusive ``flock``
and ``fsync``\\ed before the call returns. Kinds: ``{"kind": "call", "call": {...}, "session":
{...} | null}``, ``{"kind": "session", "session": {...}}`` and ``{"kind": "settle", "token":
..., "actual": {...}}``.

**Replay.** One replayer at a time (a second ``flock`` on ``<journal>.lock``; a process that
finds it taken skips its turn): the journal is renamed aside under its lock, so appenders
start a new one, then each entry is applied in order. Applying is idempotent: a call already
stored adds nothing (one row per call id, and the roll-up counts only new rows), a session row
never carries totals, and a ledger ignores a second settle of a token. An entry that fails
again is appended back (a transient failure also puts back every entry after it, untried); the
renamed file is deleted last, so a replayer killed half-way leaves it to the next one, which
applies what it holds again harmlessly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from .._exceptions import StoreError
from .._usage import CallRecord
from ._base import SessionRecord, Store, is_transient

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the journal is then guarded per process only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RETRY_DELAYS",
    "Outbox",
    "OnStoreError",
    "awrite_call",
    "journal_in_data_dir",
    "keep_settle",
    "outbox_for",
    "replay_settles",
    "replay_store",
    "retrying",
    "write_call",
    "write_session",
]

logger = logging.getLogger("llmctx")

#: What a session does when its store cannot take a write: keep it in the outbox and go on
#: (``"outbox"``, the default: nothing is lost), or keep it and raise StoreError.
OnStoreError = Literal["outbox", "raise"]
ON_STORE_ERROR = ("outbox", "raise")

#: Seconds slept before each retry of a transient failure, while the whole write has taken
#: less than RETRY_BUDGET seconds (a SQLite write that already waited out its busy timeout is
#: not tried again: it goes to the outbox at once).
RETRY_DELAYS = (0.05, 0.2, 0.5)
RETRY_BUDGET = 1.0

_T = TypeVar("_T")


def retrying(write: Callable[[], _T]) -> _T:
    """Run ``write``; retry it after a short backoff while it fails with a transient error.

    Raises:
        Exception: the last failure, when it is not transient or the retries are used up.
    """
    start = time.monotonic()
    for delay in RETRY_DELAYS:
        try:
            return write()
        except Exception as exc:
            if not _may_retry(exc, start, delay):
                raise
        time.sleep(delay)
    return write()


def _may_retry(exc: Exception, start: float, delay: float) -> bool:
    """Whether a write that began at ``start`` and failed with ``exc`` is tried again after
    ``delay`` seconds (the rule of :func:`retrying` and :func:`awrite_call`)."""
    return is_transient(exc) and time.monotonic() - start + delay <= RETRY_BUDGET


def _dumps(entry: dict[str, Any]) -> str:
    # ASCII: json writes a lone surrogate as \udcff and reads it back as the same character.
    return json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":"))


#: How long a journal found empty is taken as empty without a look (seconds): entries another
#: process leaves in a shared journal are found at most this much later; this process's own
#: are found at once.
_EMPTY_FOR = 0.1
_clock = time.monotonic  # the clock of that wait (a test sets its own)


class Outbox:
    """One journal of pending writes: a file shared by processes, or a list in this process.

    Args:
        path: the journal file; None keeps the entries in memory (see the module docstring).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: list[str] = []
        self._replaying = threading.Lock()
        # pending(): the journal directory's mtime when it was last listed, and what it held.
        self._dir_seen = -1
        self._claimed = False
        # pending() found the journal empty: it answers False without a look until then (a
        # monotonic time); this process's own appends end the wait at once.
        self._empty_until = 0.0

    def __repr__(self) -> str:
        return f"<Outbox {self.path or 'in memory'}>"

    # -- appending ------------------------------------------------------------------------------

    def append(self, *entries: dict[str, Any]) -> None:
        """Add entries durably (fsynced) before returning.

        Raises:
            OSError: the journal cannot be written (then nothing of this call was kept).
        """
        lines = [_dumps(e) for e in entries]
        self._append_lines(lines)

    def _append_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            self._empty_until = 0.0
            if self.path is None:
                self._memory.extend(lines)
                return
            data = "".join(line + "\n" for line in lines).encode("ascii")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    _flock(fd)
                    # A replayer may have renamed the file aside while this waited for the lock:
                    # then write to the new journal instead.
                    try:
                        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                    except FileNotFoundError:
                        same = False
                    if same:
                        os.write(fd, data)
                        os.fsync(fd)
                        return
                finally:
                    os.close(fd)

    def pending(self) -> bool:
        """True when the journal may hold entries (cheap: run after every call, it looks at
        the file, two stats, at most every :data:`_EMPTY_FOR` seconds while it is empty, and
        at once after this process appended to it).

        Besides the journal, a file a replayer claimed and did not finish (it was killed
        half-way) holds entries: the directory is listed for those only when it changed
        since the last look, or changed within the last second (a directory's mtime ticks
        coarsely, so a recent one is not trusted).
        """
        if self.path is None:
            return bool(self._memory)
        now = _clock()
        if now < self._empty_until:
            return False
        try:
            if os.stat(self.path).st_size > 0:
                return True
        except FileNotFoundError:
            pass
        try:
            changed = os.stat(self.path.parent).st_mtime_ns
        except FileNotFoundError:
            self._empty_until = now + _EMPTY_FOR
            return False
        if changed != self._dir_seen or time.time_ns() - changed < 1_000_000_000:
            self._claimed = any(self.path.parent.glob(self.path.name + ".claimed-*"))
            self._dir_seen = changed
        if not self._claimed:
            self._empty_until = now + _EMPTY_FOR
        return self._claimed

    def __len__(self) -> int:
        """How many entries wait (reads the journal)."""
        if self.path is None:
            return len(self._memory)
        total = 0
        for file in (self.path, *self.path.parent.glob(self.path.name + ".claimed-*")):
            with contextlib.suppress(FileNotFoundError):
                total += sum(1 for line in file.read_text("ascii").splitlines() if line.strip())
        return total

    # -- replaying ------------------------------------------------------------------------------

    def replay(
        self,
        apply: Callable[[dict[str, Any]], None],
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> int:
        """Apply every waiting entry with ``apply``; drop those applied, keep the others.

        Args:
            apply: applies one entry; raises when it cannot.
            transient: whether a failure means the target is down (the replay stops and keeps
                the rest); any other failure keeps that entry and goes on.

        Returns:
            How many entries were applied (0 when another thread or process is replaying).
        """
        if not self._replaying.acquire(blocking=False):
            return 0
        try:
            if self.path is None:
                with self._lock:
                    lines, self._memory = self._memory, []
                applied, kept = _apply_lines(lines, apply, transient)
                self._requeue(kept)
                return applied
            return self._replay_file(apply, transient)
        finally:
            self._replaying.release()

    def _requeue(self, kept: list[str]) -> None:
        if self.path is None:
            with self._lock:
                self._memory[:0] = kept  # in front: they are older than what came meanwhile
        else:
            self._append_lines(kept)

    def _replay_file(
        self,
        apply: Callable[[dict[str, Any]], None],
        transient: Callable[[BaseException], bool],
    ) -> int:
        assert self.path is not None
        # Asked to replay, it looks: pending()'s wait after finding the journal empty is for
        # the check after every call, and would skip what another process appended since.
        self._empty_until = 0.0
        if not self.pending():
            return 0
        with _file_lock(Path(f"{self.path}.lock")) as locked:
            if not locked:
                return 0  # another process replays this journal now
            self._claim()
            applied = 0
            for claimed in sorted(self.path.parent.glob(self.path.name + ".claimed-*")):
                try:
                    lines = claimed.read_text("ascii").splitlines()
                except FileNotFoundError:
                    continue
                done, kept = _apply_lines(lines, apply, transient)
                applied += done
                self._append_lines(kept)
                claimed.unlink(missing_ok=True)
            return applied

    def _claim(self) -> None:
        """Move the journal aside (under its lock) so new entries start a new file."""
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            _flock(fd)
            stamp = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, f"{self.path}.claimed-{stamp}")
        finally:
            os.close(fd)


def _apply_lines(
    lines: list[str],
    apply: Callable[[dict[str, Any]], None],
    transient: Callable[[BaseException], bool],
) -> tuple[int, list[str]]:
    applied = 0
    kept: list[str] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            # Only a writer killed mid-append leaves a torn line, and it never returned.
            logger.warning("llmctx: dropping a torn outbox line: %.80r", line)
            continue
        try:
            apply(entry)
        except Exception as exc:
            if transient(exc):
                kept.extend(rest for rest in lines[n:] if rest.strip())
                break
            logger.exception("llmctx: an outbox entry could not be applied; it is kept")
            kept.append(line)
        else:
            applied += 1
    return applied, kept


def _flock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` if no one else does; yields whether it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


# -- which outbox ------------------------------------------------------------------------------

_by_path: dict[str, Outbox] = {}
_by_object: weakref.WeakKeyDictionary[Any, Outbox] = weakref.WeakKeyDictionary()
_by_id: dict[int, Outbox] = {}
_registry_lock = threading.Lock()


def _data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("llmctx", appauthor=False))


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# What platformdirs' data directory depends on (Linux, macOS, Windows): a journal's path is
# remembered per identity and these values, since finding it (platformdirs, a hash) took 7 % of
# an async service's event loop when it ran after every Redis settle.
_DATA_DIR_ENV = (
    ("LOCALAPPDATA", "APPDATA") if sys.platform == "win32" else ("XDG_DATA_HOME", "HOME")
)
_journal_paths: dict[tuple[str, str, tuple[str | None, ...]], Path] = {}


def journal_in_data_dir(identity: str, kind: str = "") -> Path:
    """The journal of something named by ``identity`` (never a secret) in the data directory."""
    env = os.environ
    key = (identity, kind, tuple(env.get(name) for name in _DATA_DIR_ENV))
    path = _journal_paths.get(key)
    if path is None:
        if len(_journal_paths) >= 256:
            _journal_paths.clear()
        path = _journal_paths[key] = _data_dir() / f"outbox-{kind}{_digest(identity)}.jsonl"
    return path


def _journal_of(owner: Any) -> Path | None:
    """Where ``owner``'s journal lives, or None when it has no durable identity."""
    path = getattr(owner, "outbox_path", None)
    if isinstance(path, Path):
        return path
    ledger = _ledger_identity(owner)
    if ledger is not None:
        return journal_in_data_dir(ledger, "ledger-")
    return None


def _ledger_identity(ledger: Any) -> str | None:
    # A ledger with a durable identity (RedisLedger.journal_key: server without password,
    # prefix, name) is the same budget in every process that names it.
    key = getattr(ledger, "journal_key", None)
    return key if isinstance(key, str) else None


def outbox_for(owner: Any) -> Outbox:
    """The outbox of a store or a ledger (one object per journal in the process)."""
    path = _journal_of(owner)
    with _registry_lock:
        if path is not None:
            key = str(path)
            found = _by_path.get(key)
            if found is None:
                found = _by_path[key] = Outbox(path)
            return found
        try:
            found = _by_object.get(owner)
            if found is None:
                found = _by_object[owner] = Outbox(None)
        except TypeError:  # neither hashable nor weakly referable: keyed by id
            found = _by_id.setdefault(id(owner), Outbox(None))
        return found


# -- stores ------------------------------------------------------------------------------------


def _apply_to(store: Store) -> Callable[[dict[str, Any]], None]:
    def apply(entry: dict[str, Any]) -> None:
        kind = entry.get("kind")
        session = entry.get("session")
        record = None if session is None else SessionRecord.from_dict(session)
        if kind == "call":
            store.save_call(CallRecord.from_dict(entry["call"]), record)
        elif kind == "session" and record is not None:
            store.save_session(record)
        else:
            raise ValueError(f"unknown outbox entry kind {kind!r}")

    return apply


def replay_store(store: Store) -> int:
    """Apply what waits in ``store``'s outbox; never raises (a failure keeps the entries).

    Returns:
        How many entries were applied.
    """
    outbox = outbox_for(store)
    if not outbox.pending():
        return 0
    try:
        applied = outbox.replay(_apply_to(store))
    except Exception:
        logger.exception("llmctx: could not replay the outbox %s", outbox)
        return 0
    if applied:
        logger.info("llmctx: %d write(s) from the outbox %s reached the store", applied, outbox)
    return applied


def _write(
    store: Store,
    write: Callable[[], None],
    entry: dict[str, Any],
    what: str,
    on_error: OnStoreError,
) -> None:
    try:
        retrying(write)
    except Exception as exc:
        _keep(store, entry, what, exc, on_error)
        return
    replay_store(store)


def _keep(
    store: Store, entry: dict[str, Any], what: str, exc: Exception, on_error: OnStoreError
) -> None:
    """Put a write that failed for good in ``store``'s outbox; say so, raise as ``on_error``."""
    outbox = outbox_for(store)
    try:
        outbox.append(entry)
    except Exception:
        logger.exception("llmctx: could not %s, nor keep it in the outbox %s", what, outbox)
        raise StoreError(
            f"could not {what} ({exc}), nor keep it in the outbox {outbox}; the record is "
            "lost. Check that the store and the outbox's directory are writable"
        ) from exc
    logger.warning(
        "llmctx: could not %s (%s); it waits in the outbox %s and is written when the "
        "store takes writes again",
        what,
        exc,
        outbox,
    )
    if on_error == "raise":
        raise StoreError(
            f"could not {what}: {exc}. The record is kept in the outbox {outbox} and is "
            "written when the store takes writes again"
        ) from exc


def write_call(
    store: Store,
    call: CallRecord,
    session: SessionRecord | None,
    *,
    on_error: OnStoreError = "outbox",
) -> None:
    """Write a finished call through to ``store``: retried, else kept in the outbox.

    Args:
        store: where it goes.
        call: the call.
        session: its session's row (written with it).
        on_error: ``"outbox"`` returns once the call is in the outbox; ``"raise"`` then raises.

    Raises:
        StoreError: with ``on_error="raise"`` when the call went to the outbox; in any mode
            when even the outbox could not be written.
    """
    _write(
        store,
        lambda: store.save_call(call, session),
        _call_entry(call, session),
        f"write call {call.id} of session {call.session_id}",
        on_error,
    )


def _call_entry(call: CallRecord, session: SessionRecord | None) -> dict[str, Any]:
    return {
        "kind": "call",
        "call": call.to_dict(),
        "session": None if session is None else session.to_dict(),
    }


async def awrite_call(
    store: Store,
    call: CallRecord,
    session: SessionRecord | None,
    *,
    on_error: OnStoreError = "outbox",
) -> None:
    """Async twin of :func:`write_call`: the same retries and outbox, never blocking the loop.

    The write goes through the store's async face (:func:`llmctx.stores._base.asave_call`),
    a retry waits with ``anyio.sleep``, and the outbox is appended and replayed in a worker
    thread (it ``fsync``\\ s). Cancelled while it waits to retry, the call is put in the outbox
    before ``CancelledError`` propagates: nothing is lost.

    Raises:
        StoreError: as :func:`write_call`.
    """
    import anyio

    from ._base import asave_call, in_thread

    what = f"write call {call.id} of session {call.session_id}"
    start = time.monotonic()
    for delay in (*RETRY_DELAYS, None):
        try:
            await asave_call(store, call, session)
        except Exception as exc:
            if delay is None or not _may_retry(exc, start, delay):
                await in_thread(_keep, store, _call_entry(call, session), what, exc, on_error)
                return
        else:
            break
        kept = False
        try:
            await anyio.sleep(delay)
            kept = True
        finally:
            if not kept:  # cancelled between two tries: the call still has to be kept
                outbox_for(store).append(_call_entry(call, session))
    outbox = outbox_for(store)
    if outbox.path is None and not outbox.pending():
        return
    await in_thread(replay_store, store)


def write_session(
    store: Store, record: SessionRecord, *, on_error: OnStoreError = "outbox"
) -> None:
    """Write a session row through to ``store``: retried, else kept in the outbox.

    Raises:
        StoreError: as :func:`write_call`.
    """
    _write(
        store,
        lambda: store.save_session(record),
        {"kind": "session", "session": record.to_dict()},
        f"write session {record.id}",
        on_error,
    )


# -- ledgers -----------------------------------------------------------------------------------

# Ids of ledgers without a durable journal whose in-memory outbox got a settle.
_memory_settles: set[int] = set()
# Per ledger id: until when its journal counts as empty without a look (see replay_settles).
_quiet_until: dict[int, float] = {}


def keep_settle(ledger: Any, token: str, actual: dict[str, Any]) -> Outbox:
    """Keep a settle its ledger could not take, to apply when the ledger answers again.

    Args:
        ledger: the ledger (its identity picks the journal; see the module docstring).
        token: the reservation token.
        actual: the amount as data (``{"usd": "0.01", "tokens": 12, "requests": 1}``).

    Returns:
        The outbox it went to.

    Raises:
        OSError: the journal cannot be written.
    """
    outbox = outbox_for(ledger)
    outbox.append({"kind": "settle", "token": token, "actual": actual})
    _quiet_until.pop(id(ledger), None)  # the next settle looks at once
    if outbox.path is None:
        _memory_settles.add(id(ledger))
    return outbox


def replay_settles(ledger: Any, settle: Callable[[str, dict[str, Any]], None]) -> int:
    """Apply the settles waiting for ``ledger`` with ``settle(token, actual)``; never raises.

    Returns:
        How many were applied.
    """
    # The hot path: a ledger with no journal on disk has nothing waiting unless this process
    # put it there, so most settles skip the look-up entirely.
    if _ledger_identity(ledger) is None and id(ledger) not in _memory_settles:
        return 0
    # A ledger whose journal was found empty is not looked up again for _EMPTY_FOR seconds
    # (finding its journal, a path in the data directory, cost more than the Redis settle's
    # own bookkeeping); a settle this process keeps for it ends the wait at once.
    now = _clock()
    if _quiet_until.get(id(ledger), 0.0) > now:
        return 0
    outbox = outbox_for(ledger)
    if not outbox.pending():
        _memory_settles.discard(id(ledger))
        if len(_quiet_until) >= 1024:
            _quiet_until.clear()
        _quiet_until[id(ledger)] = now + _EMPTY_FOR
        return 0

    def apply(entry: dict[str, Any]) -> None:
        if entry.get("kind") != "settle":
            raise ValueError(f"unknown ledger outbox entry kind {entry.get('kind')!r}")
        settle(str(entry["token"]), dict(entry["actual"]))

    try:
        # Any store error of a ledger means it cannot be reached: stop, keep the rest.
        applied = outbox.replay(apply, lambda exc: isinstance(exc, StoreError))
    except Exception:
        logger.exception("llmctx: could not replay the settles in %s", outbox)
        return 0
    if applied:
        logger.info("llmctx: %d settle(s) from the outbox %s reached the ledger", applied, outbox)
    return applied
