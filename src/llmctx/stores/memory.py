"""An in-process store: the reference implementation of the Store protocol, for tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from .._usage import CallRecord, CallTally
from ._base import SessionRecord

__all__ = ["MemoryStore"]


def _with_totals(record: SessionRecord, tally: CallTally) -> SessionRecord:
    # A row's fields with its totals rolled up from its calls.
    return record.replace(
        usage=tally.usage, cost=tally.cost, unpriced_calls=tally.unpriced, calls=tally.calls
    )


class MemoryStore:
    """Keeps sessions and calls in dicts; thread-safe; nothing survives the process.

    It keeps every call it is given for its whole life (it is the store): a long-running
    process that must not grow with its calls writes to SQLite or PostgreSQL.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A row as last saved (its totals ignored) and, apart, the totals of its calls.
        self._sessions: dict[str, SessionRecord] = {}
        self._totals: dict[str, CallTally] = {}
        self._calls: dict[str, list[CallRecord]] = {}
        self._call_ids: set[str] = set()
        # Per session id, the tallies a call adds to (its own and its stored ancestors'): the
        # walk up the parent ids done once, not per call; forgotten when a row comes or goes.
        self._chains: dict[str, tuple[CallTally, ...]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._sessions)})"

    def _row(self, session_id: str) -> SessionRecord | None:
        # The caller holds the lock.
        row = self._sessions.get(session_id)
        if row is None:
            return None
        return _with_totals(row, self._totals[session_id])

    def _keep(self, record: SessionRecord) -> None:
        # The caller holds the lock. The row's fields but its totals: those roll up its calls.
        old = self._sessions.get(record.id)
        self._sessions[record.id] = record
        if record.id not in self._totals:
            self._totals[record.id] = CallTally()
        if old is None or old.parent_id != record.parent_id:
            self._chains.clear()

    def _chain(self, session_id: str | None) -> tuple[CallTally, ...]:
        # The caller holds the lock: the tallies of the session and its stored ancestors.
        tallies: list[CallTally] = []
        sid, seen = session_id, set()
        while sid is not None and sid not in seen:
            seen.add(sid)
            row = self._sessions.get(sid)
            if row is None:
                break
            tallies.append(self._totals[sid])
            sid = row.parent_id
        if session_id is not None:
            self._chains[session_id] = chain = tuple(tallies)
            return chain
        return ()

    def save_session(self, record: SessionRecord) -> None:
        """Keep the row's fields but its totals: those roll up its calls (zero when new)."""
        with self._lock:
            self._keep(record)

    def save_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Keep the call once per id; add a new one to its session's and ancestors' totals.

        ``session``'s fields but its totals replace the row's (a new row starts from zero), like
        every store. A ``refused`` call is kept and adds to no total.
        """
        with self._lock:
            if session is not None and self._sessions.get(session.id) is not session:
                self._keep(session)
            if call.id in self._call_ids:
                return
            self._call_ids.add(call.id)
            self._calls.setdefault(call.session_id or "", []).append(call)
            if call.status == "refused":  # never sent: kept, but adds to no total
                return
            sid = call.session_id
            chain = self._chains.get(sid) if sid is not None else ()
            for tally in chain if chain is not None else self._chain(sid):
                tally.add(call)

    async def asave_call(self, call: CallRecord, session: SessionRecord | None = None) -> None:
        """Async face of :meth:`save_call`: it does no I/O, so it runs inline on the loop."""
        self.save_call(call, session)

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._row(session_id)

    def list_sessions(
        self,
        *,
        limit: int | None = 50,
        status: str | None = None,
        parent_id: str | None = None,
        roots_only: bool = False,
        name: str | None = None,
    ) -> list[SessionRecord]:
        with self._lock:
            stored = self._sessions
            rows = [
                _with_totals(r, self._totals[r.id])
                for r in stored.values()
                if (status is None or r.status == status)
                and (parent_id is None or r.parent_id == parent_id)
                and (name is None or r.name == name)
                and (not roots_only or r.parent_id is None or r.parent_id not in stored)
            ]
        rows.sort(key=lambda r: r.started_at, reverse=True)
        return rows if limit is None else rows[:limit]

    def list_calls(self, session_ids: Sequence[str], *, refused: bool = False) -> list[CallRecord]:
        with self._lock:
            calls = [
                c
                for sid in dict.fromkeys(session_ids)
                for c in self._calls.get(sid, [])
                if refused or c.status != "refused"
            ]
        calls.sort(key=lambda c: c.started_at)
        return calls

    def touch_sessions(self, session_ids: Sequence[str], at: datetime) -> None:
        with self._lock:
            for sid in session_ids:
                row = self._sessions.get(sid)
                if row is not None and row.status == "running":
                    self._sessions[sid] = row.replace(heartbeat_at=at)

    def session_tree(self, session_id: str) -> list[SessionRecord]:
        with self._lock:
            root = self._sessions.get(session_id)
            if root is None:
                return []
            out = [root]
            frontier = [session_id]
            while frontier:
                children = [r for r in self._sessions.values() if r.parent_id in frontier]
                out.extend(children)
                frontier = [r.id for r in children]
            return [_with_totals(r, self._totals[r.id]) for r in out]

    def delete_session(self, session_id: str) -> int:
        ids = [r.id for r in self.session_tree(session_id)]
        with self._lock:
            self._chains.clear()
            for sid in ids:
                self._sessions.pop(sid, None)
                self._totals.pop(sid, None)
                self._call_ids.difference_update(c.id for c in self._calls.pop(sid, ()))
        return len(ids)

    def close(self) -> None:
        pass
