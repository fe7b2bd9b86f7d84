"""The Store protocol and the session row it keeps.

A store is written *through*: every call is committed by the time the instrumented client
returns it to the caller, so a process killed right after a call still has that call.
Stores are thread-safe; one store object may be shared by every session of a process. The
protocol is synchronous; the built-in SQL stores also have async faces (``asave_call``,
``asave_session``) that never block the event loop, and :func:`asave_call` here reaches any
store from async code (its ``save_call`` in a worker thread when it has no async face).

**Interrupted sessions.** A process killed mid-session (SIGKILL, a power cut) cannot write its
last row, which stays ``running``. Each row therefore carries the ``pid`` and ``host`` of the
process that runs it and a ``heartbeat_at`` it refreshes (on every write, and every
:data:`HEARTBEAT_INTERVAL` seconds from a background thread); :func:`shown_status` reads such
a row as ``interrupted`` once that process is gone (same host) or its heartbeat is older than
:data:`STALE_AFTER` (any host). Rows written before these fields existed read as they were.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from .._money import decimal_text
from .._usage import CallRecord, Usage

__all__ = [
    "HEARTBEAT_INTERVAL",
    "RESUMABLE",
    "STALE_AFTER",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "asave_call",
    "asave_session",
    "in_thread",
    "is_transient",
    "keep_abandoned_call",
    "outlive_cancel",
    "shown_status",
    "this_host",
    "transient",
]

#: ``interrupted`` is never written by a session: it is how a reader shows a ``running`` row
#: whose process is gone (:func:`shown_status`).
SessionStatus = Literal["created", "running", "completed", "failed", "cancelled", "interrupted"]
#: The statuses :meth:`llmctx.session.resume` reopens without ``allow_completed``.
RESUMABLE: frozenset[str] = frozenset({"failed", "cancelled", "interrupted"})
#: Seconds between two heartbeats of a running session (a background thread writes them).
HEARTBEAT_INTERVAL = 30.0
#: A running row whose heartbeat is older than this is shown as interrupted, on any host.
STALE_AFTER = 4 * HEARTBEAT_INTERVAL


@dataclass(slots=True)
class SessionRecord:
    """A session as stored: identity, lifecycle, budget limits and rolled-up totals.

    ``usage``/``cost``/``calls``/``unpriced_calls`` are the roll-up of every call stored in
    this session and its descendants: the store adds each new call to its session's row and
    every ancestor's in the call's own transaction, so a row never disagrees with its calls.
    ``unpriced_calls`` counts calls that could not be priced; while it is non-zero the
    session's cost is unknown and ``cost`` holds only the priced part.
    ``budget`` is the limits as data (``{"usd": "0.50", "tokens": 50000, "requests": null}``).
    ``pid``/``host``/``heartbeat_at`` say which process runs the session and when it was last
    seen alive (None in rows written before llmctx recorded them); see :func:`shown_status`.
    A record is a value: treat it as read-only (``replace()`` makes a changed copy); it is not
    ``frozen`` because one is built on every call and frozen ones cost three times as much.
    """

    id: str
    name: str | None = None
    parent_id: str | None = None
    status: SessionStatus = "created"
    tags: dict[str, str] = field(default_factory=dict)
    budget: dict[str, Any] | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    unpriced_calls: int = 0
    calls: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    host: str | None = None
    heartbeat_at: datetime | None = None

    def replace(self, **changes: Any) -> SessionRecord:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "name": self.name,
            "parent_id": self.parent_id,
            "status": self.status,
            "tags": dict(self.tags),
            "budget": self.budget,
            "started_at": self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "error": self.error,
            "usage": self.usage.to_dict(),
            "cost": decimal_text(self.cost),
            "unpriced_calls": self.unpriced_calls,
            "calls": self.calls,
            "metadata": dict(self.metadata),
            "pid": self.pid,
            "host": self.host,
            "heartbeat_at": None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionRecord:
        """Inverse of :meth:`to_dict`."""

        def _dt(value: Any) -> datetime | None:
            if value is None or isinstance(value, datetime):
                return value
            return datetime.fromisoformat(str(value))

        return cls(
            id=str(data["id"]),
            name=data.get("name"),
            parent_id=data.get("parent_id"),
            status=data.get("status") or "created",
            tags=dict(data.get("tags") or {}),
            budget=data.get("budget"),
            started_at=_dt(data.get("started_at")) or datetime.now(UTC),
            ended_at=_dt(data.get("ended_at")),
            error=data.get("error"),
            usage=Usage.from_dict(data.get("usage")),
            cost=Decimal(str(data.get("cost") or 0)),
            unpriced_calls=int(data.get("unpriced_calls") or 0),
            calls=int(data.get("calls") or 0),
            metadata=dict(data.get("metadata") or {}),
            pid=None if data.get("pid") is None else int(data["pid"]),
            host=data.get("host"),
            heartbeat_at=_dt(data.get("heartbeat_at")),
        )


def this_host() -> str:
    """The name sessions record as their ``host`` (``socket.gethostname()``)."""
    return _HOST


_HOST = socket.gethostname()


def _process_gone(pid: int, started_at: datetime) -> bool:
    """True when no process ``pid`` runs on this host, or the one that does began after
    ``started_at`` (the pid was reused)."""
    import psutil

    if pid == os.getpid():
        return False
    try:
        created = float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # alive but not ours to inspect (another user's process)
        return False
    # A second of slack: create_time() is rounded to the clock tick.
    return created > started_at.timestamp() + 1.0


def shown_status(record: SessionRecord, now: datetime | None = None) -> SessionStatus:
    """The status to show for a stored row: ``interrupted`` for a ``running`` one whose
    process is gone, else the stored status.

    A running row is interrupted when it was written on this host by a process that no longer
    exists (or whose pid now belongs to a younger process), or when its heartbeat is older
    than :data:`STALE_AFTER` seconds (any host). A row without ``pid``/``heartbeat_at``
    (written before llmctx recorded them) keeps its stored status.

    Args:
        record: the stored row.
        now: the current time (for tests); ``datetime.now(UTC)`` by default.
    """
    if record.status != "running":
        return record.status
    if (
        record.pid is not None
        and record.host == _HOST
        and _process_gone(record.pid, record.started_at)
    ):
        return "interrupted"
    beat = record.heartbeat_at
    if beat is not None:
        when = now or datetime.now(UTC)
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if (when - beat).total_seconds() > STALE_AFTER:
            return "interrupted"
    return "running"


_E = TypeVar("_E", bound=BaseException)
_T = TypeVar("_T")
logger = logging.getLogger("llmctx")


def transient(exc: _E) -> _E:
    """Mark a store error as transient (the store is busy or out of reach: try again later)."""
    exc.transient = True  # type: ignore[attr-defined]
    return exc


def is_transient(exc: BaseException) -> bool:
    """True for an error marked with :func:`transient`: retrying later may succeed."""
    return getattr(exc, "transient", False) is True


@runtime_checkable
class Store(Protocol):
    """Where sessions and calls are kept. Every method commits before it returns."""

    def save_session(self, record: SessionRecord) -> None:
        """Insert or replace the session row."""

    def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Insert one call; when ``session`` is given, update that row in the same commit.

        One row per call id: saving an id already stored leaves that row as it is (a write
        retried after a lost acknowledgement adds nothing), while ``session``, a snapshot of
        the totals, is still written. A ``refused`` call (never sent) is kept but adds nothing
        to any row's totals.
        """

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session row, or None."""

    def list_sessions(
        self,
        *,
        limit: int | None = 50,
        status: str | None = None,
        parent_id: str | None = None,
        roots_only: bool = False,
        name: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first.

        ``roots_only`` keeps the sessions without a parent *in this store*: a session whose
        parent was never stored here (a parent in another store) is a root too.
        """

    def list_calls(self, session_ids: Sequence[str], *, refused: bool = False) -> list[CallRecord]:
        """Calls of the given sessions, oldest first; with ``refused``, also the calls refused
        before they were sent (status ``refused``), which are left out by default."""

    def touch_sessions(self, session_ids: Sequence[str], at: datetime) -> None:
        """Set the heartbeat of those sessions that are still ``running`` to ``at``."""

    def session_tree(self, session_id: str) -> list[SessionRecord]:
        """The session and all its descendants (the session first)."""

    def delete_session(self, session_id: str) -> int:
        """Delete a session, its descendants and their calls; returns how many sessions went."""

    def close(self) -> None:
        """Release connections; closing twice is harmless."""


def _running_asyncio() -> bool:
    """True when the caller runs in an asyncio event loop (not trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def outlive_cancel(
    work: asyncio.Future[_T], on_abandoned: Callable[[BaseException], None] | None = None
) -> _T:
    """Wait for ``work`` to end even when the waiting task is cancelled, then let the
    cancellation go on.

    ``asyncio.shield`` alone stops the wait and leaves the work running unobserved; this waits
    for it, so a write the caller started is finished (committed, or failed and rolled back)
    by the time the caller's ``CancelledError`` propagates. A native ``task.cancel()`` as
    well as an anyio cancel scope are waited through.

    Args:
        work: a future or task already running (a worker thread's result, a write task).
        on_abandoned: called with the work's exception when it failed after the caller was
            cancelled (nobody is left to handle it: a store keeps the record in its outbox).

    Returns:
        The work's result (when the caller was not cancelled).

    Raises:
        asyncio.CancelledError: the caller was cancelled (raised once the work has ended).
        Exception: what the work raised, when the caller was not cancelled.
    """
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if work.cancelled():
            raise
        import anyio

        # A shielded anyio scope stops anyio re-delivering the cancellation while we wait.
        with anyio.CancelScope(shield=True):
            while not work.done():
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
        if not work.cancelled():
            error = work.exception()
            if error is not None and on_abandoned is not None:
                on_abandoned(error)
        raise


async def in_thread(
    fn: Callable[..., _T],
    *args: Any,
    on_abandoned: Callable[[BaseException], None] | None = None,
) -> _T:
    """Run ``fn(*args)`` in a worker thread and wait for it through a cancellation.

    On asyncio the thread's future is awaited with :func:`outlive_cancel` (``anyio.to_thread``
    with ``abandon_on_cancel=False`` is abandoned by a native ``task.cancel()``); on trio,
    anyio's shielded wait is real.

    Raises:
        asyncio.CancelledError: the caller was cancelled (once ``fn`` has returned).
        Exception: what ``fn`` raised.
    """
    if _running_asyncio():
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await outlive_cancel(loop.run_in_executor(None, ctx.run, fn, *args), on_abandoned)
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=False)


def keep_abandoned_call(
    store: Store, call: CallRecord, session: SessionRecord | None
) -> Callable[[BaseException], None]:
    """What to do with a call whose write failed after its caller was cancelled: keep it in
    ``store``'s outbox (replayed with the next write), since no caller is left to."""

    def keep(error: BaseException) -> None:
        from . import _outbox

        entry = {
            "kind": "call",
            "call": call.to_dict(),
            "session": None if session is None else session.to_dict(),
        }
        try:
            _outbox.outbox_for(store).append(entry)
        except Exception:
            logger.exception(
                "llmctx: call %s failed to save (%s) after its caller was cancelled, and could "
                "not be kept in the outbox",
                call.id,
                error,
            )

    return keep


async def asave_call(store: Store, call: CallRecord, session: SessionRecord | None = None) -> None:
    """Save a call from async code without blocking the event loop; committed on return.

    A store with an async face (``async def asave_call(call, session)``, as the built-in
    stores have) is awaited; any other store's ``save_call`` runs in a worker thread.
    Cancellation while it runs still lets the write finish: a call the caller was told about
    is never half-written, and the ``CancelledError`` is raised once it is committed (a write
    that fails after the cancellation is kept in the store's outbox).

    Raises:
        StoreError: the write failed (as ``save_call`` raises it); the caller may keep the
            call in the outbox (``llmctx.stores._outbox.awrite_call`` does).
    """
    asave = getattr(store, "asave_call", None)
    if asave is not None:
        await asave(call, session)
        return
    await in_thread(
        store.save_call, call, session, on_abandoned=keep_abandoned_call(store, call, session)
    )


async def asave_session(store: Store, record: SessionRecord) -> None:
    """Save a session row from async code without blocking the event loop (as :func:`asave_call`).

    Raises:
        StoreError: the write failed.
    """
    asave = getattr(store, "asave_session", None)
    if asave is not None:
        await asave(record)
        return
    await in_thread(store.save_session, record)
