"""The Store protocol and the session row it keeps.

A store is written *through*: every call is committed by the time the instrumented client
returns it to the caller, so a process killed right after a call still has that call.
Stores are synchronous and thread-safe; one store object may be shared by every session of a
process.

**Interrupted sessions.** A process killed mid-session (SIGKILL, a power cut) cannot write its
last row, which stays ``running``. Each row therefore carries the ``pid`` and ``host`` of the
process that runs it and a ``heartbeat_at`` it refreshes (on every write, and every
:data:`HEARTBEAT_INTERVAL` seconds from a background thread); :func:`shown_status` reads such
a row as ``interrupted`` once that process is gone (same host) or its heartbeat is older than
:data:`STALE_AFTER` (any host). Rows written before these fields existed read as they were.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
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
    "is_transient",
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


async def asave_call(store: Store, call: CallRecord, session: SessionRecord | None = None) -> None:
    """Save a call from async code without blocking the event loop; committed on return.

    A store with an async face (``async def asave_call(call, session)``, as the built-in
    stores have) is awaited; any other store's ``save_call`` runs in a worker thread.
    Cancellation while it runs still lets the write finish (it is shielded): a call the
    caller was told about is never half-written.
    """
    asave = getattr(store, "asave_call", None)
    if asave is not None:
        await asave(call, session)
        return
    import anyio.to_thread

    await anyio.to_thread.run_sync(store.save_call, call, session, abandon_on_cancel=False)
