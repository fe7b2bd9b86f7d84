"""Test fixture: a process that runs a hub (the "host"), to be killed with SIGKILL by a test.

Usage::

    python host.py CONFIG.json

It prints ``STARTING`` just before entering the hub and ``READY <json of pids>`` once every
server started, then keeps calling ``echo`` on the servers whose names start with ``t`` (a
host that is serving) until it is killed.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import anyio

from llmctx.mcp import Hub, MCPHubError


async def main(config: dict[str, object]) -> None:
    """Run the hub of ``config`` until killed."""
    print("STARTING", flush=True)
    async with Hub.from_config(config, policy="best_effort") as hub:
        pids = {name: status.pid for name, status in hub.status().items()}
        print("READY " + json.dumps(pids), flush=True)
        while True:
            for name in pids:
                if name.startswith("t"):
                    with contextlib.suppress(MCPHubError):
                        await hub.call(f"{name}.echo", {"text": "serving"})
            await anyio.sleep(0.01)


if __name__ == "__main__":
    anyio.run(main, json.loads(Path(sys.argv[1]).read_text()))
