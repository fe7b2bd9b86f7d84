"""Session: a scope that owns the calls made inside it, their totals and their budget.

Sessions nest into a tree through the current-session ContextVar. A charge applies at once to
the session it was made in and to every ancestor, so an outer budget sees inner spend in real
time. Lifecycle: ``created -> running -> completed | failed | cancelled``; a session is entered
once (``with`` or ``async with``), and :meth:`Session.resume` reopens a failed, cancelled or
interrupted one (by id, or by name: the most recent of that name) from its store with its
totals and budget state restored.

While it runs, a session's row names its process (``pid``, ``host``) and carries a heartbeat,
refreshed with every write and every ``HEARTBEAT_INTERVAL`` seconds by one daemon thread per
process (:class:`_Heartbeat`), so a reader can tell a session whose process died
(``interrupted``, :func:`llmctx.stores.shown_status`) from one still running.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from . import _pricing
from ._budget import Amount, Budget, Holds, MemoryLedger
from ._context import bind_session, get_session, reset_session
from ._exceptions import ConfigError, SessionNotFound, SessionStateError, is_cancellation
from ._interrupt import arm, disarm, protected
from ._redact import redact, redact_text
from ._usage import CallRecord, CallTally, Usage
from .stores._base import (
    HEARTBEAT_INTERVAL,
    RESUMABLE,
    SessionRecord,
    SessionStatus,
    Store,
    asave_call,
    in_thread,
    shown_status,
    this_host,
)
from .stores._open import resolve_store
from .stores._outbox import (
    ON_STORE_ERROR,
    OnStoreError,
    Outbox,
    awrite_call,
    outbox_for,
    replay_store,
    retrying,
    write_call,
    write_session,
)
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_KEEP_CALLS",
    "Session",
    "SessionFactory",
    "SessionListener",
    "add_session_listener",
    "session",
]

logger = logging.getLogger("llmctx")


#: How many of its most recent calls a session keeps in memory (``session.calls``) unless
#: ``session(keep_calls=...)`` says otherwise; older ones are read back through the store
#: (:meth:`Session.all_calls`). Totals count every call whatever this is.
DEFAULT_KEEP_CALLS = 1000

# A cached session row is written again with each call until it is this many seconds old,
# then rebuilt with a fresh heartbeat (the heartbeat thread refreshes it every 30 s anyway).
_ROW_FRESH_FOR = 1.0


def _now() -> datetime:
    return datetime.now(UTC)


_DIMS = ("usd", "tokens", "requests", "calls", "tool_calls")


def _budgets_of(budget: object) -> tuple[Budget, ...]:
    """``session(budget=...)`` as a tuple: None, one Budget, or a sequence of them.

    Raises:
        ConfigError: anything else.
    """
    if budget is None:
        return ()
    if isinstance(budget, Budget):
        return (budget,)
    if isinstance(budget, Sequence) and not isinstance(budget, str | bytes):
        found = tuple(budget)
        if all(isinstance(b, Budget) for b in found):
            return found
    raise ConfigError(
        f"session(budget=...) takes llmctx.Budget or a list of them, got {type(budget).__name__}; "
        "write budget=llmctx.Budget(usd='0.50', tokens=50_000)"
    )


def _classify(exc_type: type[BaseException] | None) -> SessionStatus:
    if exc_type is None:
        return "completed"
    return "cancelled" if is_cancellation(exc_type) else "failed"


class SessionListener(Protocol):
    """Told when any session of the process is entered and left (``llmctx.otel``'s spans).

    ``on_session_start`` runs once the session is current; ``on_session_end`` once its status
    and end time are set, before its final row is written. Both run in the entering / leaving
    thread and must be quick; an exception from either is logged and ignored.
    """

    def on_session_start(self, session: Session) -> None: ...

    def on_session_end(self, session: Session) -> None: ...


_listeners: tuple[SessionListener, ...] = ()
_listeners_lock = threading.Lock()


def add_session_listener(listener: SessionListener) -> Callable[[], None]:
    """Tell ``listener`` of every session entered and left in this process from now on.

    Returns:
        A function that removes the listener again (calling it twice is harmless).
    """
    global _listeners
    with _listeners_lock:
        _listeners = (*_listeners, listener)

    def remove() -> None:
        global _listeners
        with _listeners_lock:
            _listeners = tuple(x for x in _listeners if x is not listener)

    return remove


def _tell(event: str, session: Session) -> None:
    for listener in _listeners:
        try:
            getattr(listener, event)(session)
        except Exception:
            logger.exception("llmctx: session listener %r failed in %s", listener, event)


class _Heartbeat:
    """One daemon thread per process that refreshes the heartbeat of its running sessions.

    Sessions join on entry and leave on exit (both inside their protected entry and exit);
    every :data:`HEARTBEAT_INTERVAL` seconds :meth:`beat` writes one ``touch_sessions`` per
    store. Sessions of a :class:`MemoryStore` (no other process can read it) and of stores
    without ``touch_sessions`` are not tracked. A failing write is logged at debug level and
    tried again at the next beat; the thread never keeps the process alive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, weakref.ref[Session]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def join(self, session: Session) -> None:
        store = session._store
        if store is None or isinstance(store, MemoryStore) or not hasattr(store, "touch_sessions"):
            return
        with self._lock:
            self._live[id(session)] = weakref.ref(session)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmctx-heartbeat", daemon=True
                )
                self._thread.start()

    def leave(self, session: Session) -> None:
        with self._lock:
            self._live.pop(id(session), None)

    def beat(self) -> int:
        """Write one heartbeat for every tracked session now; returns how many were written."""
        with self._lock:
            sessions = [s for ref in self._live.values() if (s := ref()) is not None]
        by_store: dict[int, tuple[Store, list[str]]] = {}
        for s in sessions:
            if s._store is not None and s.status == "running":
                by_store.setdefault(id(s._store), (s._store, []))[1].append(s.id)
        now = _now()
        written = 0
        for store, ids in by_store.values():
            try:
                store.touch_sessions(ids, now)
                written += len(ids)
            except Exception:
                logger.debug("llmctx: heartbeat of %d session(s) failed", len(ids), exc_info=True)
        return written

    def _run(self) -> None:
        while True:
            self._wake.wait(HEARTBEAT_INTERVAL)
            self._wake.clear()
            try:
                self.beat()
            except Exception:  # pragma: no cover - beat() logs its own failures
                logger.debug("llmctx: heartbeat failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        # The thread did not survive fork(); the child's own sessions start a new one.
        self._lock = threading.Lock()
        self._live = {}
        self._thread = None
        self._wake = threading.Event()


_heartbeat = _Heartbeat()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_heartbeat._after_fork_in_child)


@dataclass(frozen=True, slots=True)
class _ChainBudgets:
    """The budgets of a session's chain, innermost first, and the dimensions they limit."""

    owners: list[tuple[Budget, str, str | None]]
    limited: frozenset[str]
    # Every ledger is this process's own (MemoryLedger): settling them does no I/O.
    in_process: bool


class Session:
    """A scope for LLM calls: live totals, an optional budget, write-through recording.

    Create one with :func:`llmctx.session` and enter it with ``with`` or ``async with``; the
    same object supports both. Inside, :func:`llmctx.current_session` returns it, and every
    instrumented call is charged to it and to all its ancestors.

    On exit the ContextVar is reset and the status is set from how the block ended: no
    exception -> ``completed``; cancellation, KeyboardInterrupt -> ``cancelled``; any other
    exception -> ``failed`` (the exception propagates unchanged). The final row is written to
    the store. Calls still in flight (e.g. a stream consumed later) keep charging this session
    after it exited.

    **A call that returned is recorded.** Each finished call is written through to the store
    before it returns; a transient failure (SQLite locked, PostgreSQL restarting) is retried
    briefly, and a write that still fails is kept in the store's durable outbox
    (:mod:`llmctx.stores._outbox`) and written after the next write that succeeds, or when the
    store is next opened. ``on_store_error`` chooses what the caller sees then: ``"outbox"``
    (the default) logs a warning and returns the call's result; ``"raise"`` raises
    :class:`~llmctx.StoreError` from the call *after* the record is safe in the outbox (so
    the spend is kept either way), and from entering the session when its row cannot be
    written (then nothing is kept: the session never started). Only when even the outbox
    cannot be written is a record lost; that is logged, and raised in ``"raise"`` mode.

    **Memory does not grow with calls.** The totals (``usage``, ``cost``, ``call_count``)
    are counters; ``calls`` is a window of the ``keep_calls`` most recent calls (1,000 by
    default), shared by reference with the ancestors' windows, and :meth:`all_calls` reads
    the whole history back through the store.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        budget: Budget | Sequence[Budget] | None = None,
        tags: Mapping[str, str] | None = None,
        store: Store | str | None = None,
        record_content: bool = True,
        id: str | None = None,
        on_store_error: OnStoreError = "outbox",
        keep_calls: int | None = DEFAULT_KEEP_CALLS,
    ) -> None:
        if keep_calls is not None and (type(keep_calls) is not int or keep_calls < 0):
            raise ConfigError(
                f"session(keep_calls={keep_calls!r}) takes a whole number >= 0 (how many recent "
                "calls to keep in memory) or None (keep every call in memory)"
            )
        if on_store_error not in ON_STORE_ERROR:
            raise ConfigError(
                f"session(on_store_error={on_store_error!r}) takes 'outbox' (keep what the store "
                "cannot take and go on; the default) or 'raise'"
            )
        budgets = _budgets_of(budget)
        if tags is not None and not isinstance(tags, Mapping):
            raise ConfigError(
                "session(tags=...) takes a mapping of str to str, e.g. {'team': 'search'}"
            )
        self.id: str = id or uuid.uuid4().hex
        self.name = name
        #: Every budget of this session (a call must fit them all); ``budget`` is the first.
        self.budgets: tuple[Budget, ...] = budgets
        self.budget: Budget | None = budgets[0] if budgets else None
        self.tags: dict[str, str] = {str(k): str(v) for k, v in (tags or {}).items()}
        self.record_content = record_content
        self.on_store_error: OnStoreError = on_store_error
        self.parent: Session | None = None
        self.status: SessionStatus = "created"
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.error: str | None = None
        self._store_arg = store
        self._store: Store | None = None
        self._outbox: Outbox | None = None
        self._stored_parent_id: str | None = None
        self._lock = threading.Lock()
        # The live totals, O(1) per call (the calls themselves only in the window below).
        self._tally = CallTally()
        self.keep_calls = keep_calls
        self._calls: deque[CallRecord] = deque(maxlen=keep_calls)
        self._nodes: tuple[Session, ...] | None = None
        self._row: SessionRecord | None = None
        self._row_src: tuple[str | None, dict[str, str], str, int, float] | None = None
        self._events: list[dict[str, Any]] = []
        self._resumed = 0
        self._token: Any = None
        self._armed = False
        self._budgets: _ChainBudgets | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Session{label} id={self.id[:12]} status={self.status} calls={self._tally.calls}>"

    # ------------------------------------------------------------------ live totals
    @property
    def usage(self) -> Usage:
        """Tokens and requests of every call in this session and its descendants."""
        with self._lock:
            return self._tally.usage

    @property
    def cost(self) -> Decimal | None:
        """Dollars spent, or None when some call could not be priced (see ``cost_note``)."""
        with self._lock:
            return None if self._tally.unpriced else self._tally.cost

    @property
    def cost_note(self) -> str | None:
        """Why ``cost`` is None, or None when every call was priced."""
        with self._lock:
            tally = self._tally
            if not tally.unpriced:
                return None
            return f"{tally.unpriced} call(s) could not be priced: {tally.unpriced_reason}"

    @property
    def calls(self) -> list[CallRecord]:
        """A copy of the recent calls charged to this session and its descendants, oldest first.

        At most ``keep_calls`` of them (the session's argument, :data:`DEFAULT_KEEP_CALLS` by
        default; None keeps every call): memory does not grow with a long session's calls.
        :meth:`all_calls` reads every one back through the store.
        """
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        """How many calls were charged to this session and its descendants (all of them)."""
        with self._lock:
            return self._tally.calls

    def all_calls(self) -> list[CallRecord]:
        """Every call charged to this session and its descendants, oldest first.

        The in-memory window (:attr:`calls`) when it still holds them all; otherwise they are
        read through the store (the calls of this session's stored tree). A session without a
        store (``store=None`` is never that: it resolves to the default store) or whose store
        could not take some writes (they wait in its outbox) returns what it has.

        Raises:
            StoreError: the store could not be read.
        """
        with self._lock:
            if self._tally.calls <= len(self._calls):
                return list(self._calls)
            window = list(self._calls)
        store = self._store
        if store is None:
            return window
        ids = [row.id for row in store.session_tree(self.id)] or [self.id]
        return store.list_calls(ids)

    @property
    def store(self) -> Store | None:
        """The store this session writes to (set on entry)."""
        return self._store

    def remaining(self) -> dict[str, Decimal | int | None]:
        """What this session's own budgets have left per dimension (None: unlimited).

        Dimensions: ``usd``, ``tokens``, ``requests``, ``calls``, ``tool_calls``. With several
        budgets, the least any of them has left (a call must fit them all).
        """
        out: dict[str, Decimal | int | None] = dict.fromkeys(_DIMS)
        for budget in self.budgets:
            snap = budget.snapshot()  # its own account (key) in its current window
            for dim in _DIMS:
                limit = budget.limit(dim)
                if limit is None:
                    continue
                left = limit - snap.spent.get(dim) - snap.reserved.get(dim)
                current = out[dim]
                out[dim] = left if current is None or left < current else current
        return out

    def chain(self) -> list[Session]:
        """This session and its ancestors, innermost first."""
        out: list[Session] = []
        node: Session | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    # ------------------------------------------------------------------ reserving
    def _chain_budgets(self) -> _ChainBudgets:
        # The chain is fixed once the session is entered (its parent never changes), so the
        # budgets a call must reserve on, and what they limit, are found once, not per call.
        found = self._budgets
        if found is None:
            owners = [(b, n.id, n.name) for n in self.chain() for b in n.budgets]
            limited = frozenset(
                dim for budget, _, _ in owners for dim in _DIMS if budget.limit(dim) is not None
            )
            in_process = all(type(budget.ledger) is MemoryLedger for budget, _, _ in owners)
            found = _ChainBudgets(owners, limited, in_process)
            if self.status != "created":
                self._budgets = found
        return found

    def ends_in_process(self) -> bool:
        """Whether ending a call here does no I/O: every ledger of the chain's budgets is in
        this process and the store is a :class:`~llmctx.stores.MemoryStore`, so the async
        charge path settles and writes inline instead of in a task of its own."""
        return type(self._store) is MemoryStore and self._chain_budgets().in_process

    @property
    def budgeted(self) -> bool:
        """True when this session or an ancestor has a budget (calls must reserve first)."""
        return bool(self._chain_budgets().owners)

    @property
    def limits_money(self) -> bool:
        """True when some budget in the chain limits dollars (unknown prices fail closed)."""
        return "usd" in self._chain_budgets().limited

    @property
    def limited(self) -> frozenset[str]:
        """The dimensions (``usd``, ``tokens``, ``requests``, ``calls``, ``tool_calls``) some
        budget in the chain limits."""
        return self._chain_budgets().limited

    def reserve(self, amount: Amount, holds: Holds | None = None) -> Holds:
        """Reserve ``amount`` on this session's budget and every ancestor's, all or nothing.

        Args:
            amount: the call's worst case.
            holds: where to keep the reservations as they are taken (a new one if None).

        Raises:
            BudgetExceeded: some budget in the chain has no room (the error names its session);
                nothing is held.
        """
        return Holds.reserve(self._chain_budgets().owners, amount, holds)

    async def areserve(self, amount: Amount, holds: Holds | None = None) -> Holds:
        """Async twin of :meth:`reserve`: ledgers with async faces (Redis) are awaited.

        Cancellation while it waits gives back what was already reserved before it propagates.

        Raises:
            BudgetExceeded: some budget in the chain has no room; nothing is held.
        """
        return await Holds.areserve(self._chain_budgets().owners, amount, holds)

    # ------------------------------------------------------------------ lifecycle
    # Entry and exit are protected (see _interrupt): a Ctrl-C landing in them waits until the
    # session is wholly entered or wholly left.
    @protected
    def __enter__(self) -> Self:
        self._open()
        return self

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc_type, exc)

    @protected
    async def __aenter__(self) -> Self:
        # The twin of __enter__: the same steps, with the store's part (opening it, writing
        # the row) in a worker thread unless the store is in memory, so entering a session
        # in a service never blocks its event loop.
        armed = self._claim_entry()
        try:
            if not _pricing.prices_loaded():
                # The first priced call would import genai-prices' data (up to a second) on
                # the loop: load it here, off the loop, once per process.
                await in_thread(_pricing.load_prices)
            if self._stores_in_memory():
                self._enter_store()
            else:
                await in_thread(self._enter_store)
        except BaseException:
            self._undo_entry(armed)
            raise
        self._bind(armed)
        return self

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        armed = self._leave(exc_type, exc)
        try:
            if self._stores_in_memory():
                self._persist(raising=exc_type is None)
            else:
                await in_thread(functools.partial(self._persist, raising=exc_type is None))
        finally:
            disarm(armed)

    def _open(self) -> None:
        armed = self._claim_entry()
        try:
            self._enter_store()
        except BaseException:
            self._undo_entry(armed)
            raise
        self._bind(armed)

    def _claim_entry(self) -> bool:
        """Mark the session running and link it to the current one; returns whether it armed
        the Ctrl-C handler. I/O-free; raises SessionStateError when entered twice."""
        with self._lock:
            if self.status != "created":
                raise SessionStateError(
                    f"session {self.name or self.id!r} was already entered (status {self.status}); "
                    "a session object is entered once: create a new one with llmctx.session(...), "
                    "or reopen a stored one with llmctx.session.resume(id)"
                )
            self.status = "running"
        parent = get_session()
        # A root session on the main thread defers Ctrl-C landing in llmctx's bookkeeping
        # until that bookkeeping is consistent (_interrupt); disarmed as its exit's last step.
        armed = parent is None and arm()
        self.parent = parent
        self._budgets = None
        self._nodes = (self, *parent.chain()) if parent is not None else (self,)
        self._row = None
        return armed

    def _enter_store(self) -> None:
        # The part of entering that may do I/O: resolve (open) the store, write the row.
        parent = self.parent
        self._store = resolve_store(self._store_arg, parent._store if parent is not None else None)
        self._outbox = outbox_for(self._store)
        self.started_at = self.started_at or _now()
        self._pid = os.getpid()
        self._persist(entering=True)
        _heartbeat.join(self)

    def _undo_entry(self, armed: bool) -> None:
        # A bad store, or an interrupt while the row is written: the session was never
        # entered, and nothing made it current.
        _heartbeat.leave(self)
        with self._lock:
            self.status = "created"
        disarm(armed)

    def _bind(self, armed: bool) -> None:
        # Last: from here on only __exit__ undoes it.
        self._armed = armed
        self._token = bind_session(self)
        if _listeners:
            _tell("on_session_start", self)

    def _stores_in_memory(self) -> bool:
        """True when this session's store is (or will resolve to) a MemoryStore: no I/O."""
        store: object = self._store if self._store is not None else self._store_arg
        if store is None and self.parent is not None:
            store = self.parent._store
        return isinstance(store, MemoryStore)

    def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        armed = self._leave(exc_type, exc)
        try:
            # An exception already on its way out is not replaced by a store error.
            self._persist(raising=exc_type is None)
        finally:
            disarm(armed)  # last: a Ctrl-C deferred until now is raised here

    def _leave(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> bool:
        """Everything of leaving but writing the final row; returns whether to disarm."""
        token, self._token = self._token, None
        if token is not None:
            reset_session(token, self.parent)
        _heartbeat.leave(self)
        with self._lock:
            self._row = None
            self.status = _classify(exc_type)
            self.ended_at = _now()
            if exc is not None and self.status == "failed":
                self.error = redact_text(f"{type(exc).__name__}: {exc}")
            elif self.status == "cancelled":
                self.error = type(exc).__name__ if exc is not None else "cancelled"
        if _listeners:
            _tell("on_session_end", self)
        armed, self._armed = self._armed, False
        return armed

    # ------------------------------------------------------------------ charging
    def on_call_end(self, record: CallRecord) -> None:
        """Add a finished call to this session and every ancestor, then write it through.

        This is the :class:`~llmctx.CallConsumer` interface: the charge path calls it once per
        finished call made in this session. With ``record_content=False`` on this session or
        any ancestor, the prompt, response and tool calls are dropped before the record is kept
        anywhere: in memory as in the store. A ``refused`` record (a call stopped before it was
        sent) is only written to the store: it is in no total and not in ``calls``.
        """
        record = self._take(record)
        store = self._store
        if store is None:
            return
        row = self._call_row()
        try:
            # The usual case straight to the store: the outbox machinery only on failure.
            store.save_call(record, row)
        except Exception:
            self._keep_unwritten(store, record, row)
            return
        self._after_write(store)

    async def aon_call_end(self, record: CallRecord) -> None:
        """Async twin of :meth:`on_call_end`: the store write does not block the event loop.

        The record is written through the store's async face
        (:func:`llmctx.stores._base.asave_call`: PostgreSQL's async connection, SQLite in a
        worker thread) and committed before this returns; a write that fails takes the same
        outbox path as :meth:`on_call_end`, in a worker thread. Cancellation while it waits
        does not stop the write (the charge path shields it).
        """
        record = self._take(record)
        store = self._store
        if store is None:
            return
        row = self._call_row()
        try:
            await asave_call(store, record, row)
        except Exception:
            try:
                await awrite_call(store, record, row, on_error=self.on_store_error)
            except Exception:
                if self.on_store_error == "raise":
                    raise
                logger.exception(
                    "llmctx: could not write call %s of session %s", record.id, self.id
                )
            return
        outbox = self._outbox
        if outbox is not None and outbox.pending():
            await in_thread(replay_store, store)

    def _take(self, record: CallRecord) -> CallRecord:
        """The record as this session keeps it, added to its totals and its ancestors'.

        I/O-free (shared by :meth:`on_call_end` and :meth:`aon_call_end`).
        """
        chain = self._nodes or tuple(self.chain())
        for node in chain:
            if not node.record_content:
                record = record.replace(request=None, response=None, tool_calls=None)
                break
        if record.status != "refused":
            for node in chain:
                with node._lock:
                    node._add(record)
        return record

    def _keep_unwritten(self, store: Store, record: CallRecord, row: SessionRecord) -> None:
        """A write the store refused: retried briefly, then kept in the outbox.

        Raises:
            StoreError: with ``on_store_error="raise"``, once the record is in the outbox.
        """
        try:
            write_call(store, record, row, on_error=self.on_store_error)
        except Exception:
            if self.on_store_error == "raise":
                raise
            # Bookkeeping never breaks the user's call; only a failing outbox gets here.
            logger.exception("llmctx: could not write call %s of session %s", record.id, self.id)

    def _after_write(self, store: Store) -> None:
        # A write succeeded: what waits in the outbox can go now.
        outbox = self._outbox
        if outbox is not None and outbox.pending():
            replay_store(store)

    def _add(self, record: CallRecord) -> None:
        # The one roll-up rule (CallTally's), for live charges and for resume(); the caller
        # holds the lock. O(1): counts added in place, the record into a bounded window.
        self._tally.add(record)
        self._calls.append(record)

    def add_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """Attach a named measurement (e.g. a ``monitor`` result) to this session."""
        with self._lock:
            self._events.append({"kind": kind, "at": _now().isoformat(), **redact(dict(data))})
            self._row = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the events attached with :meth:`add_event`."""
        with self._lock:
            return [dict(e) for e in self._events]

    # ------------------------------------------------------------------ persistence
    def _call_row(self) -> SessionRecord:
        """The row written with each call: built once, again only when it changed.

        Stores take a call's session row for its fields, never its totals (they roll those up
        from the calls), so one row serves many calls: it is rebuilt when the session's events,
        status, name or tags changed, or when its heartbeat is :data:`_ROW_FRESH_FOR` old.
        """
        row, src = self._row, self._row_src
        now = time.monotonic()
        if (
            row is not None
            and src is not None
            and src[0] is self.name
            and src[1] == self.tags
            and src[2] is self.status
            and src[3] == len(self._events)
            and now - src[4] < _ROW_FRESH_FOR
        ):
            return row
        with self._lock:
            status, events = self.status, len(self._events)
        row = self._to_record()
        with self._lock:
            self._row = row
            self._row_src = (self.name, dict(self.tags), status, events, now)
        return row

    def _to_record(self) -> SessionRecord:
        with self._lock:
            metadata: dict[str, Any] = {}
            if self._events:
                metadata["events"] = list(self._events)
            if self._resumed:
                metadata["resumed"] = self._resumed
            if not self.record_content:
                metadata["record_content"] = False
            if len(self.budgets) > 1:
                # The row's budget column holds the first; every one is kept for resume().
                metadata["budgets"] = [b.to_dict() for b in self.budgets]
            return SessionRecord(
                id=self.id,
                # Names and tags are the user's free text: what is stored is redacted.
                name=None if self.name is None else redact_text(self.name),
                parent_id=self.parent.id if self.parent is not None else self._stored_parent_id,
                status=self.status,
                tags=redact(self.tags),
                budget=None if self.budget is None else self.budget.to_dict(),
                started_at=self.started_at or _now(),
                ended_at=self.ended_at,
                error=self.error,
                usage=self._tally.usage,
                cost=self._tally.cost,
                unpriced_calls=self._tally.unpriced,
                calls=self._tally.calls,
                metadata=metadata,
                pid=self._pid,
                host=this_host() if self._pid is not None else None,
                heartbeat_at=_now(),
            )

    def _persist(self, *, entering: bool = False, raising: bool = False) -> None:
        store = self._store
        if store is None:
            return
        record = self._to_record()
        if self.on_store_error == "raise" and entering:
            # Not entered yet: refuse to start rather than keep a row of a session that never ran.
            retrying(lambda: store.save_session(record))
            return
        if self.on_store_error == "raise" and raising:
            write_session(store, record, on_error="raise")
            return
        try:
            write_session(store, record)
        except Exception:
            logger.exception("llmctx: could not write session %s", self.id)

    @classmethod
    def resume(
        cls,
        session_id: str,
        *,
        store: Store | str | None = None,
        budget: Budget | Sequence[Budget] | None = None,
        allow_completed: bool = False,
    ) -> Session:
        """Reopen a failed, cancelled or interrupted session from its store, by id or by name.

        Totals (usage, cost, calls) are rebuilt from the stored calls of the session and all its
        descendants, and the budget's ledger is restored to that spend, so the resumed session
        stops exactly where the original would have. Enter the returned object as usual.

        A name (what ``llmctx.session(name)`` took) picks the most recent session of that
        name, which must be resumable (failed, cancelled, or interrupted: its process is gone);
        when the most recent one is not (it completed, or still runs), the error lists the
        sessions of that name with their ids, start times and statuses, so one can be resumed
        by id.

        Args:
            session_id: the id (``llmctx sessions ls`` lists them), or a session name.
            store: where to look; the default store when omitted.
            budget: limits to use; by default the stored limits with a fresh in-memory ledger.
                Pass your shared ledger (e.g. Redis) here to keep using it.
            allow_completed: also reopen a session that completed normally.

        Raises:
            SessionNotFound: no session with that id or name in the store.
            SessionStateError: the session completed and ``allow_completed`` is false; or,
                for a name, its most recent session cannot be resumed (the message lists the
                candidates).
        """
        resolved = resolve_store(store)
        row = resolved.get_session(session_id)
        if row is None:
            row = _latest_by_name(resolved, session_id, allow_completed)
        elif row.status == "completed" and not allow_completed:
            raise SessionStateError(
                f"session {session_id!r} completed normally, so there is nothing to recover; pass "
                "allow_completed=True to continue it anyway, or start a new session"
            )
        if budget is None and row.metadata.get("budgets"):
            budget = [Budget.from_dict(b) for b in row.metadata["budgets"]]
        elif budget is None and row.budget:
            budget = Budget.from_dict(row.budget)
        tree = resolved.session_tree(row.id)
        calls = resolved.list_calls([r.id for r in tree])
        new = cls(
            row.name,
            budget=budget,
            tags=row.tags,
            store=resolved,
            record_content=bool(row.metadata.get("record_content", True)),
            id=row.id,
        )
        new._stored_parent_id = row.parent_id
        new.started_at = row.started_at
        new._resumed = int(row.metadata.get("resumed", 0)) + 1
        new._events = list(row.metadata.get("events", []))
        with new._lock:
            for call in calls:
                new._add(call)
        usage = new.usage
        spent = Amount(
            usd=new._tally.cost,
            tokens=usage.total_tokens,
            requests=usage.requests,
            calls=sum(1 for c in calls if c.kind != "tool"),
            tool_calls=sum(1 for c in calls if c.kind == "tool"),
        )
        for restored in new.budgets:
            # A keyed or windowed budget's spend lives in its ledger's account (shared with
            # other sessions and processes): only a session's own budget is restored.
            if restored.key is None and restored.window is None:
                restored.ledger.restore(spent)
        return new


def _where(store: Store) -> str:
    path = getattr(store, "path", None)
    return f"{type(store).__name__} at {path}" if isinstance(path, str) else type(store).__name__


def _latest_by_name(store: Store, name: str, allow_completed: bool) -> SessionRecord:
    """The most recent session named ``name`` when it can be resumed; else a clear error."""
    rows = store.list_sessions(limit=None, name=name)
    stored_name = redact_text(name)  # names are stored redacted
    if not rows and stored_name != name:
        rows = store.list_sessions(limit=None, name=stored_name)
    if not rows:
        raise SessionNotFound(
            name,
            where=_where(store),
            message=(
                f"no session with id or name {name!r} in {_where(store)}; "
                "`llmctx sessions ls` lists the sessions that exist"
            ),
        )
    now = _now()
    shown = [(r, shown_status(r, now)) for r in rows]
    latest, status = shown[0]
    if status in RESUMABLE or (allow_completed and status == "completed"):
        return latest

    def line(r: SessionRecord, st: str) -> str:
        when = r.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        return f"  {r.id}  started {when}  {st}"

    listed = "\n".join(line(r, st) for r, st in shown[:10])
    more = f"\n  ... and {len(shown) - 10} more" if len(shown) > 10 else ""
    why = (
        "completed normally (pass allow_completed=True to continue it)"
        if status == "completed"
        else f"is {status}, not failed, cancelled or interrupted"
    )
    raise SessionStateError(
        f"the most recent session named {name!r} ({latest.id}) {why}; resume one by id, "
        f"llmctx.session.resume(ID). Sessions named {name!r}, newest first:\n{listed}{more}"
    )


class SessionFactory:
    """The callable ``llmctx.session``: ``session(...)`` makes a Session,
    ``session.resume(id_or_name)`` reopens a stored one."""

    def __call__(
        self,
        name: str | None = None,
        *,
        budget: Budget | Sequence[Budget] | None = None,
        tags: Mapping[str, str] | None = None,
        store: Store | str | None = None,
        record_content: bool = True,
        on_store_error: OnStoreError = "outbox",
        keep_calls: int | None = DEFAULT_KEEP_CALLS,
    ) -> Session:
        """Create a session; enter it with ``with`` or ``async with``.

        Args:
            name: a label shown by ``llmctx sessions ls`` (need not be unique).
            budget: limits for this session and everything nested in it: one
                :class:`~llmctx.Budget` or a sequence of them (a call must fit every one, all
                or nothing; e.g. a per-session cap and a shared daily one).
            tags: free-form labels stored with the session.
            store: a Store, a URL/path for one, or None for the parent's store (or the default
                SQLite store at ``LLMCTX_DB`` / the per-user data directory).
            record_content: store prompts and responses (False keeps only metadata and usage).
            on_store_error: when the store cannot take a write even after retries, the write
                waits in the store's outbox; ``"outbox"`` (default) then goes on, ``"raise"``
                also raises :class:`~llmctx.StoreError` (see :class:`Session`).
            keep_calls: how many recent calls ``calls`` keeps in memory (default
                :data:`DEFAULT_KEEP_CALLS`, 1,000; None keeps every call); totals always count
                every call, and :meth:`Session.all_calls` reads the older ones from the store.

        Raises:
            ConfigError: a bad budget, tags, on_store_error or keep_calls.
        """
        return Session(
            name,
            budget=budget,
            tags=tags,
            store=store,
            record_content=record_content,
            on_store_error=on_store_error,
            keep_calls=keep_calls,
        )

    resume = staticmethod(Session.resume)

    def __repr__(self) -> str:
        return "llmctx.session"


session = SessionFactory()
