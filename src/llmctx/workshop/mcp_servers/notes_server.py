"""A notes MCP server on SQLite (official ``mcp`` SDK), for workshop module 08.

Tools: ``add_note(title, body)`` and ``list_notes()``. Every note is also a resource,
``note://<id>``; adding one sends ``notifications/resources/list_changed`` so that clients
re-list. Run over stdio: ``python notes_server.py DB_PATH`` (``:memory:`` for a throwaway
store). A cut-down copy of the repository's ``examples/mcp_servers/notes_server.py``.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import Resource

_SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT)"


class NotesServer(MCPServer):
    """An MCPServer whose resource list is the notes table."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__("notes", instructions="A notes store: add and list notes.")
        self.db = db

    async def list_resources(self) -> list[Resource]:
        """One ``note://<id>`` resource per note, oldest first."""
        rows = self.db.execute("SELECT id, title FROM notes ORDER BY id").fetchall()
        return [
            Resource(uri=f"note://{i}", name=f"note-{i}", title=t, mime_type="text/plain")
            for i, t in rows
        ]


def build(db_path: str) -> NotesServer:
    """Open the store and register the tools and the note resource template."""
    # Sync tools run in worker threads: autocommit plus SQLite's own locking keeps each
    # statement atomic.
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute(_SCHEMA)
    server = NotesServer(db)

    @server.tool()
    async def add_note(title: str, body: str, ctx: Context) -> dict[str, Any]:
        """Add a note and return its id."""
        if not title.strip():
            raise ToolError("title must not be empty")
        cur = db.execute("INSERT INTO notes (title, body) VALUES (?, ?)", (title, body))
        await ctx.session.send_resource_list_changed()
        return {"id": cur.lastrowid, "title": title}

    @server.tool()
    def list_notes() -> list[dict[str, Any]]:
        """List every note (id and title), oldest first."""
        rows = db.execute("SELECT id, title FROM notes ORDER BY id").fetchall()
        return [{"id": i, "title": t} for i, t in rows]

    @server.resource("note://{note_id}", mime_type="text/plain")
    def read_note(note_id: str) -> str:
        """The text of one note."""
        row = db.execute("SELECT title, body FROM notes WHERE id = ?", (int(note_id),)).fetchone()
        if row is None:
            raise ResourceError(f"no note with id {note_id}")
        return f"# {row[0]}\n\n{row[1]}"

    return server


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else ":memory:").run("stdio")
