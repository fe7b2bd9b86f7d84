"""Test fixture: a minimal MCP server on the standard library alone (starts in milliseconds).

It speaks the real protocol (JSON-RPC lines over stdio: initialize, ping, tools/list,
tools/call) so lifecycle tests can start hundreds of real server processes quickly; the SDK's
server takes seconds to import. Tools: ``echo``, ``slow`` (one thread per request, so calls
overlap), ``crash`` (a stderr line, then ``os._exit(1)`` mid-call) and ``spawn`` (starts a
grandchild ``sleep`` process in the server's process group and returns its pid).
``--delay SECONDS`` makes it wait before serving (an I/O-bound start, for benchmarks).

Flags for the hub's edge cases (each a real behaviour of some third-party server):

* ``--stubborn``: ignores SIGTERM and does not exit when stdin closes (what leaves orphans
  when a host dies without killing it);
* ``--grandchild``: starts a ``sleep`` grandchild at launch, in its process group;
* ``--banner``: writes a non-JSON line to stdout before serving (a stray ``print``);
* ``--mute-stdout``: only writes non-JSON to stdout and never answers (a server that logs to
  stdout and is never ready);
* ``--rich``: more tools (``picture``: an image and text; ``structured``: structured content
  only; ``long``: a 2,000-character description; ``opt``: an optional argument), prompts
  (``greet``) and a resource template (``tiny://item/{id}``).
"""

from __future__ import annotations

import json
import os
import signal
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


_RICH_TOOLS = [
    {
        "name": "picture",
        "description": "A one-pixel PNG and a caption.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "structured",
        "description": "Structured content only.",
        "inputSchema": {"type": "object", "properties": {}},
        "outputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    },
    {
        "name": "long",
        "description": "Long. " + "x" * 2000,
        "inputSchema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"text": {"type": "string", "default": "d"}},
        },
    },
    {
        "name": "opt",
        "description": "Echo the required text and, if given, the optional suffix.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}, "suffix": {"type": "string"}},
            "required": ["text"],
        },
    },
]
# A 1x1 transparent PNG.
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
RICH = "--rich" in sys.argv


def _send(message: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _handle(request: dict[str, Any]) -> None:
    method, params = request["method"], request.get("params") or {}
    if method == "initialize":
        capabilities: dict[str, Any] = {"tools": {}}
        if RICH:
            capabilities |= {"prompts": {}, "resources": {}}
        result: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": capabilities,
            "serverInfo": {"name": "tiny", "version": "1"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": _TOOLS + (_RICH_TOOLS if RICH else [])}
    elif method == "prompts/list" and RICH:
        result = {"prompts": [{"name": "greet", "arguments": [{"name": "who"}]}]}
    elif method == "prompts/get" and RICH:
        who = (params.get("arguments") or {}).get("who", "you")
        text = {"type": "text", "text": f"hello {who}"}
        result = {"messages": [{"role": "user", "content": text}]}
    elif method == "resources/list" and RICH:
        result = {"resources": []}
    elif method == "resources/templates/list" and RICH:
        result = {"resourceTemplates": [{"uriTemplate": "tiny://item/{id}", "name": "item"}]}
    elif method == "resources/read" and RICH:
        uri = params.get("uri", "")
        result = {"contents": [{"uri": uri, "text": f"item {uri.rsplit('/', 1)[-1]}"}]}
    elif method == "tools/call":
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "picture" and RICH:
            result = {
                "content": [
                    {"type": "text", "text": "a dot"},
                    {"type": "image", "data": _PNG, "mimeType": "image/png"},
                ],
                "isError": False,
            }
        elif name == "structured" and RICH:
            result = {"content": [], "structuredContent": {"n": 7}, "isError": False}
        elif name == "opt" and RICH:
            result = _text(str(args.get("text", "")) + str(args.get("suffix") or ""))
        elif name == "long" and RICH:
            result = _text("long")
        elif name == "echo":
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
    if "--delay" in sys.argv:
        time.sleep(float(sys.argv[sys.argv.index("--delay") + 1]))
    stubborn = "--stubborn" in sys.argv
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--grandchild" in sys.argv:
        subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if "--mute-stdout" in sys.argv:
        print("Server listening on stdio (logging to stdout)", flush=True)
        time.sleep(3600)
    if "--banner" in sys.argv:
        print("tiny banner: not JSON", flush=True)
    print("tiny: ready", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if "id" in message and "method" in message:
            threading.Thread(target=_handle, args=(message,), daemon=True).start()
    if stubborn:  # stdin closed: a polite server exits here; this one stays
        while True:
            time.sleep(3600)
    os._exit(0)


if __name__ == "__main__":
    main()
