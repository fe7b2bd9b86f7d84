"""A notes MCP server backed by SQLite, written with the official ``mcp`` SDK.

Tools: ``add_note``, ``list_notes``, ``search_notes``, ``delete_note``. Every note is also a
resource, ``note://<id>``, listed by ``resources/list`` and read by ``resources/read``.

Run it over stdio (what an MCP client does)::

    python -m llmctx.mcp.examples.notes_server [DB_PATH]

``DB_PATH`` defaults to ``$NOTES_DB``, then ``notes.db`` in the per-user data directory
(never the working directory, which may be anywhere an MCP client starts it); use
``:memory:`` for a throwaway store. In a config, ``${CONFIG_DIR}/notes.db`` keeps it beside
the config file.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import Resource

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (datetime('now'))
)
"""


class NotesServer(MCPServer):
    """MCPServer whose resource list is the notes table."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(
            "notes",
            instructions="A personal notes store: add, list, search and delete notes.",
        )
        self.db = db

    async def list_resources(self) -> list[Resource]:
        rows = self.db.execute("SELECT id, title FROM notes ORDER BY id").fetchall()
        return [
            Resource(
                uri=f"note://{row[0]}", name=f"note-{row[0]}", title=row[1], mime_type="text/plain"
            )
            for row in rows
        ]


def build(db_path: str) -> NotesServer:
    """Open the store and register the tools and the note resource template."""
    # The SDK runs sync tools in worker threads; autocommit plus SQLite's own locking keeps
    # each statement atomic.
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute(_SCHEMA)
    server = NotesServer(db)

    @server.tool()
    async def add_note(title: str, body: str, ctx: Context) -> dict[str, Any]:
        """Add a note and return its id."""
        if not title.strip():
            raise ToolError("title must not be empty")
        cur = db.execute("INSERT INTO notes (title, body) VALUES (?, ?)", (title, body))
        # Clients that cache resources/list re-list on this.
        await ctx.session.send_resource_list_changed()
        return {"id": cur.lastrowid, "title": title}

    @server.tool()
    def list_notes(limit: int = 50) -> list[dict[str, Any]]:
        """List the most recent notes (id and title), newest first."""
        rows = db.execute(
            "SELECT id, title FROM notes ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [{"id": r[0], "title": r[1]} for r in rows]

    @server.tool()
    def search_notes(query: str) -> list[dict[str, Any]]:
        """Find notes whose title or body contains the query (case-insensitive)."""
        pattern = f"%{query}%"
        rows = db.execute(
            "SELECT id, title, body FROM notes WHERE title LIKE ? OR body LIKE ? ORDER BY id",
            (pattern, pattern),
        ).fetchall()
        return [{"id": r[0], "title": r[1], "body": r[2]} for r in rows]

    @server.tool()
    async def delete_note(note_id: int, ctx: Context) -> str:
        """Delete a note by id."""
        cur = db.execute("DELETE FROM notes WHERE id = ?", (note_id,))
        if cur.rowcount == 0:
            raise ToolError(f"no note with id {note_id}")
        await ctx.session.send_resource_list_changed()
        return f"deleted note {note_id}"

    @server.resource("note://{note_id}", mime_type="text/plain")
    def read_note(note_id: str) -> str:
        """The text of one note."""
        row = db.execute("SELECT title, body FROM notes WHERE id = ?", (int(note_id),)).fetchone()
        if row is None:
            raise ResourceError(f"no note with id {note_id}")
        return f"# {row[0]}\n\n{row[1]}"

    return server


def default_db() -> str:
    """``$NOTES_DB``, else ``notes.db`` in the per-user data directory (created)."""
    found = os.environ.get("NOTES_DB")
    if found:
        return found
    import platformdirs

    folder = Path(platformdirs.user_data_dir("llmctx", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / "notes.db")


def main() -> None:
    """Entry point: serve over stdio."""
    db_path = sys.argv[1] if len(sys.argv) > 1 else default_db()
    build(db_path).run("stdio")


if __name__ == "__main__":
    main()
