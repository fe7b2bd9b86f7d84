"""One Lua script run with ``EVALSHA`` straight through a redis-py client's ``execute_command``.

redis-py's ``register_script`` builds a new argument tuple and goes through a few Python layers
per call; on the hot path of a rate limiter that costs as much as the script itself. Here the
SHA is encoded once, callers pass pre-encoded arguments where they can, and a ``NOSCRIPT``
error (a restarted or flushed Redis) loads the script and retries once.
"""

from __future__ import annotations

import hashlib
from typing import Any


class _Script:
    """A Lua script bound to one synchronous redis-py client."""

    __slots__ = ("_client", "_no_script", "_sha", "_source")

    def __init__(self, client: Any, source: str) -> None:
        from redis.exceptions import NoScriptError

        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._no_script: type[Exception] = NoScriptError

    def __call__(self, key: bytes | str, *args: Any) -> Any:
        """``EVALSHA`` with one key; one round trip (two after a ``NOSCRIPT``)."""
        try:
            return self._client.execute_command(b"EVALSHA", self._sha, 1, key, *args)
        except self._no_script:
            self._client.script_load(self._source)
            return self._client.execute_command(b"EVALSHA", self._sha, 1, key, *args)
