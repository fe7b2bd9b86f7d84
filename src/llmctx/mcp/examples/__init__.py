"""Example MCP servers on the official ``mcp`` SDK, shipped with llmctx.

* ``notes_server.py DB``: notes in SQLite (``add_note``, ``list_notes``, ``search_notes``,
  ``delete_note``; each note is a resource ``note://ID``);
* ``files_server.py ROOT``: read-only files confined to ``ROOT`` (``read_file``, ``list_dir``).

They are modules started over stdio, e.g. in an ``mcpServers`` config (which runs from any
directory; the database goes beside the config file)::

    {"command": "python", "args": ["-m", "llmctx.mcp.examples.notes_server",
                                   "${CONFIG_DIR}/notes.db"]}

The tests, the benchmarks and workshop module 08 use them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path_of"]

_HERE = Path(__file__).resolve().parent


def path_of(name: str) -> Path:
    """The script of the example server ``name`` (``"notes"`` or ``"files"``).

    Raises:
        FileNotFoundError: there is no such server.
    """
    path = _HERE / f"{name}_server.py"
    if not path.is_file():
        raise FileNotFoundError(f"no example MCP server named {name!r} (looked for {path.name})")
    return path
