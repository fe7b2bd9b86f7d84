"""No orphans when the host dies: a small watcher process that outlives the hub's process.

A stdio server runs in its own session (so one ``killpg`` reaches its grandchildren, and a
Ctrl-C in the terminal does not hit it before the hub can stop it cleanly). The price is that
nothing kills it when the process running the hub dies without running its cleanup (SIGKILL,
an OOM kill, a segfault): it would be re-parented to init and live on, and the npx -> sh ->
node chains many servers are made of are exactly what accumulates that way.

:class:`Reaper` closes that hole. Before the hub starts its first stdio server it spawns one
watcher per hub (a few lines of Python started with ``-I -S``: ~15 ms, ~8 MB), holding the
read end of a pipe whose only write end stays in the hub's process. The kernel closes that
write end whatever way the process dies; the watcher sees end-of-file and then kills:

* every process group the hub registered (each server's group: its children and
  grandchildren that did not start a session of their own), and
* on Linux, every process whose environment carries the hub's marker
  ``LLMCTX_MCP_OWNER=<token>`` (put into each server's environment before it is spawned, so
  a server killed between fork and registration, or a grandchild that moved to another
  session, is found too), scanning ``/proc`` until none is left.

A normal exit of the hub closes the pipe as well; by then the hub has stopped its servers, so
the watcher finds nothing and exits. The watcher ignores SIGINT and SIGHUP (a Ctrl-C or a
closed terminal reaches the host, whose death is the watcher's signal).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from contextlib import suppress

import anyio

__all__ = ["OWNER_VAR", "Reaper"]

logger = logging.getLogger("llmctx.mcp")

#: The environment variable that marks a hub's server processes (and their descendants).
OWNER_VAR = "LLMCTX_MCP_OWNER"

_WATCHER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
marker = ("LLMCTX_MCP_OWNER=" + sys.argv[1]).encode()
groups = set()
buf = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except InterruptedError:
        continue
    except OSError:
        break
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        try:
            (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
        except ValueError:
            pass
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
me = os.getpid()
def marked():
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(name))
    return found
for _ in range(200):
    found = marked()
    if not found:
        break
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.01)
"""

_EXIT_WAIT = 2.0
_EXIT_POLL = 0.005


class Reaper:
    """One hub's watcher process; see the module docstring.

    Use it as an async context manager around everything that spawns servers. Entering
    spawns the watcher (fork + exec: a millisecond or two, so it is done synchronously);
    exiting closes the pipe, which makes the watcher sweep and exit, and waits for it (shielded,
    at most 2 s, then it is killed). Registration calls never block and never raise: a watcher
    that died early only costs the protection.
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._write_fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment entry every server of this hub gets (its marker)."""
        return {OWNER_VAR: self.token}

    async def __aenter__(self) -> Reaper:
        if sys.platform == "win32":  # no process groups or /proc: nothing to do
            return self
        read_fd, write_fd = os.pipe()  # both close-on-exec: no server inherits the write end
        try:
            self._process = subprocess.Popen(  # noqa: ASYNC220 (fork+exec: a millisecond)
                [sys.executable, "-I", "-S", "-c", _WATCHER, self.token],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            os.close(write_fd)
            logger.warning(
                "MCP hub: could not start the watcher that kills its servers if this process "
                "dies (%s); servers may outlive a killed host",
                exc,
            )
        else:
            self._write_fd = write_fd
        finally:
            os.close(read_fd)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        fd, self._write_fd = self._write_fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        process, self._process = self._process, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_EXIT_WAIT):
                while process.poll() is None:  # noqa: ASYNC110 (no event for a child exit)
                    await anyio.sleep(_EXIT_POLL)
            if process.poll() is None:
                process.kill()
                process.wait()

    def watch(self, pgid: int) -> None:
        """Register a server's process group (its pid: each server leads its own group)."""
        self._send(f"+{pgid}\n")

    def unwatch(self, pgid: int) -> None:
        """Forget a process group that was killed and reaped (its id may be reused)."""
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        if self._write_fd is None:
            return
        try:
            os.write(self._write_fd, line.encode())
        except OSError:  # the watcher died: nothing to tell, nothing to fail
            with suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = None
