"""Which llmctx files one budgeted ``chat.completions.create`` walks through, in order.

Runs the real ``openai`` SDK against an in-process transport (no network), inside a session
with a money-and-token budget and a SQLite store, once to warm up and once under
``sys.setprofile``. It prints the files in the order they are first entered and the
*charge path*: the llmctx files that call into another llmctx file, in the order they are
first entered; the *helpers*: files that only answer calls (value types, token counting,
pricing, redaction). A *return to a file already left* is a call from a file back up to one
the walk came down through (a callback, or two modules calling each other's functions): a
cycle in the caller -> callee graph. A layered path has none. It also lists the calls of
another file's private (``_name``) functions: one module reaching into another's internals.
Calls into C (ContextVar.get, sqlite3) are not Python frames and are not counted.

    python benchmarks/walk_charge_path.py            # the walk, one line per file
    python benchmarks/walk_charge_path.py --json     # {"path": [...], "helpers": [...], ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import httpx2
import openai

import llmctx

SRC = Path(llmctx.__file__).resolve().parent
MODEL = "gpt-4o-mini"
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}


def _module(frame: FrameType) -> str | None:
    try:
        path = Path(frame.f_code.co_filename).resolve()
    except (OSError, ValueError):
        return None
    if SRC not in path.parents:
        return None
    return path.relative_to(SRC.parent).as_posix()


def walk() -> dict[str, list[str]]:
    """Trace one warm budgeted call; return the files entered and the returns."""
    client = llmctx.instrument(
        openai.OpenAI(
            api_key="sk-test",
            http_client=httpx2.Client(
                transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json=REPLY))
            ),
        )
    )
    files: list[str] = []
    edges: dict[str, list[str]] = {}  # caller file -> callee files, in first-call order
    private: list[str] = []  # calls of another file's private (_name) functions
    stack: list[str | None] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            module = _module(frame)
            caller = next((m for m in reversed(stack) if m is not None), None)
            stack.append(module)
            if module is None:
                return
            if module not in files:
                files.append(module)
            if caller is not None and caller != module:
                callees = edges.setdefault(caller, [])
                if module not in callees:
                    callees.append(module)
                name = frame.f_code.co_name
                if name.startswith("_") and not name.startswith("__"):
                    private.append(f"{caller} -> {module}:{frame.f_code.co_qualname}")
        elif event == "return" and stack:
            stack.pop()

    with (
        tempfile.TemporaryDirectory() as tmp,
        llmctx.price_override(MODEL, input_per_mtok="1", output_per_mtok="2"),
    ):
        store = llmctx.stores.SQLiteStore(Path(tmp) / "walk.db")
        budget = llmctx.Budget(usd="1.00", tokens=100_000)
        with llmctx.session("walk", budget=budget, store=store):
            messages = [{"role": "user", "content": "Say hi"}]
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
            sys.setprofile(profile)
            try:
                client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
            finally:
                sys.setprofile(None)
        store.close()
    path = [f for f in files if f in edges]
    helpers = [f for f in files if f not in edges]
    return {
        "path": path,
        "helpers": helpers,
        "returns": _back_edges(path, edges),
        "private_calls": private,
    }


def _back_edges(path: list[str], edges: dict[str, list[str]]) -> list[str]:
    """Calls that go back up to a file the walk came down from (cycles in the file graph)."""
    back: list[str] = []
    state: dict[str, int] = {}  # 1: on the current DFS path, 2: done

    def visit(node: str) -> None:
        state[node] = 1
        for callee in edges.get(node, []):
            if state.get(callee) == 1:
                back.append(f"{node} -> {callee}")
            elif callee not in state:
                visit(callee)
        state[node] = 2

    for node in path:
        if node not in state:
            visit(node)
    return back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    result = walk()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    path, helpers, returns = result["path"], result["helpers"], result["returns"]
    print(f"charge path: {len(path)} files, {len(returns)} returns to a file already left")
    for i, name in enumerate(path, 1):
        print(f"  {i:2}. {name}")
    print(f"helpers (leaves that call no other llmctx file): {len(helpers)}")
    for name in helpers:
        print(f"      {name}")
    if returns:
        print("returns:", ", ".join(returns))
    private = result["private_calls"]
    print(f"calls of another file's private functions: {len(private)}")
    for call in private:
        print(f"      {call}")


if __name__ == "__main__":
    main()
