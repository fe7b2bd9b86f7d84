"""Test fixture: a minimal MCP server on the standard library alone (starts in milliseconds).

It speaks the real protocol (JSON-RPC lines over stdio: initialize, ping, tools/list,
tools/call) so lifecycle tests can start hundreds of real server processes quickly; the SDK's
server takes seconds to import. Tools: ``echo``, ``slow`` (one thread per request, so calls
overlap), ``crash`` (a stderr line, then ``os._exit(1)`` mid-call) and ``spawn`` (starts a
grandchild ``sleep`` process in the server's process group and returns its pid).
``--delay SECONDS`` makes it wait before serving (an I/O-bound start, for benchmarks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
_TOOLS = [
    {
        "name": "echo",
        "description": "Return the text unchanged.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
    {
        "name": "slow",
        "description": "Sleep, then answer.",
        "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}},
    },
    {"name": "crash", "description": "Die mid-call.", "inputSchema": {"type": "object"}},
    {"name": "spawn", "description": "Start a grandchild.", "inputSchema": {"type": "object"}},
]


def _send(message: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _handle(request: dict[str, Any]) -> None:
    method, params = request["method"], request.get("params") or {}
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "tiny", "version": "1"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": _TOOLS}
    elif method == "tools/call":
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "echo":
            result = _text(str(args.get("text", "")))
        elif name == "slow":
            time.sleep(float(args.get("seconds", 1)))
            result = _text("done")
        elif name == "crash":
            sys.stderr.write("tiny: crashing on purpose\n")
            sys.stderr.flush()
            os._exit(1)
        elif name == "spawn":
            child = subprocess.Popen(
                ["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            result = _text(str(child.pid))
        else:
            _send(
                {
                    "jsonrpc": "2.0",
                    "id": request["id"],
                    "error": {"code": -32602, "message": f"unknown tool {name}"},
                }
            )
            return
    else:
        _send(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": -32601, "message": f"method not found: {method}"},
            }
        )
        return
    _send({"jsonrpc": "2.0", "id": request["id"], "result": result})


def main() -> None:
    # --delay S: wait before serving, like a server whose start waits on I/O (benchmarks).
    if len(sys.argv) == 3 and sys.argv[1] == "--delay":
        time.sleep(float(sys.argv[2]))
    print("tiny: ready", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if "id" in message and "method" in message:
            threading.Thread(target=_handle, args=(message,), daemon=True).start()
    os._exit(0)


if __name__ == "__main__":
    main()
