"""The Store protocol and the session row it keeps.

A store is written *through*: every call is committed by the time the instrumented client
returns it to the caller, so a process killed right after a call still has that call.
Stores are synchronous and thread-safe; one store object may be shared by every session of a
process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from .._usage import CallRecord, Usage

__all__ = ["SessionRecord", "SessionStatus", "Store", "is_transient", "transient"]

SessionStatus = Literal["created", "running", "completed", "failed", "cancelled"]


@dataclass(slots=True)
class SessionRecord:
    """A session as stored: identity, lifecycle, budget limits and rolled-up totals.

    ``usage``/``cost``/``calls``/``unpriced_calls`` are the roll-up of every call stored in
    this session and its descendants: the store adds each new call to its session's row and
    every ancestor's in the call's own transaction, so a row never disagrees with its calls.
    ``unpriced_calls`` counts calls that could not be priced; while it is non-zero the
    session's cost is unknown and ``cost`` holds only the priced part.
    ``budget`` is the limits as data (``{"usd": "0.50", "tokens": 50000, "requests": null}``).
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
            "cost": str(self.cost),
            "unpriced_calls": self.unpriced_calls,
            "calls": self.calls,
            "metadata": dict(self.metadata),
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
        )


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
        the totals, is still written.
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
    ) -> list[SessionRecord]:
        """Sessions, newest first."""

    def list_calls(self, session_ids: Sequence[str]) -> list[CallRecord]:
        """Calls of the given sessions, oldest first."""

    def session_tree(self, session_id: str) -> list[SessionRecord]:
        """The session and all its descendants (the session first)."""

    def delete_session(self, session_id: str) -> int:
        """Delete a session, its descendants and their calls; returns how many sessions went."""

    def close(self) -> None:
        """Release connections; closing twice is harmless."""
