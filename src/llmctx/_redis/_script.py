"""One Lua script run with ``EVALSHA`` straight through a redis-py client's ``execute_command``.

redis-py's ``register_script`` builds a new argument tuple and goes through a few Python layers
per call; on the hot path of a rate limiter that costs as much as the script itself. Here the
SHA and the keys are encoded once, callers pass pre-encoded arguments where they can, a
``NOSCRIPT`` error (a restarted or flushed Redis) loads the script and retries once, and every
other redis-py error becomes the store's :class:`~llmctx.StoreError`.

One script serves both faces of a store: :meth:`_Script.run` on the synchronous client and
:meth:`_Script.arun` on a ``redis.asyncio`` client, with the same command, retry and errors.
A store whose keys change per call (a ledger's accounts) builds a command head per set of
keys once (:meth:`_Script.head`) and passes it to each run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ._client import _Connection


class _Script:
    """A Lua script bound to one store's connection and keys.

    Args:
        connection: the store's connection (its client runs the script; its errors are
            raised).
        source: the Lua source.
        keys: the script's ``KEYS``, fixed for the store's lifetime.
    """

    __slots__ = ("_connection", "_head", "_no_script", "_source", "sha")

    def __init__(self, connection: _Connection, source: str, keys: Sequence[bytes | str]) -> None:
        from redis.exceptions import NoScriptError

        self._connection = connection
        self._source = source
        #: The script's SHA1, as ``SCRIPT EXISTS`` takes it.
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._head = (b"EVALSHA", self.sha.encode(), len(keys), *keys)
        self._no_script: type[Exception] = NoScriptError

    def head(self, keys: Sequence[bytes | str]) -> tuple[Any, ...]:
        """The start of this script's command for ``keys`` (encode it once, pass it to run)."""
        return (b"EVALSHA", self.sha.encode(), len(keys), *keys)

    def __call__(self, doing: str, *args: Any) -> Any:
        """``EVALSHA`` with the bound keys and ``args``; one round trip (two after a NOSCRIPT).

        Args:
            doing: the operation, named in the error if it fails (``"reserve"``).

        Raises:
            StoreError: Redis could not be reached or the script failed.
        """
        return self.run(doing, self._head, *args)

    def run(self, doing: str, head: tuple[Any, ...], *args: Any) -> Any:
        """``EVALSHA`` of ``head`` (from :meth:`head`) with ``args`` on the synchronous client.

        Raises:
            StoreError: Redis could not be reached or the script failed.
        """
        connection = self._connection
        # The client's execute_command is looked up on every call (not bound once), so a
        # wrapper installed on the client (e.g. one counting round trips) sees every call.
        try:
            try:
                return connection.client.execute_command(*head, *args)
            except self._no_script:
                connection.client.script_load(self._source)
                return connection.client.execute_command(*head, *args)
        except connection.error_type as exc:
            raise connection.error(exc, doing) from exc

    async def arun(self, doing: str, head: tuple[Any, ...], *args: Any) -> Any:
        """:meth:`run` on the connection's ``redis.asyncio`` client (for the running loop).

        The scripts one loop pass runs on the same client go to Redis together, as one
        pipeline (:class:`~llmctx._redis._client._Batcher`).

        Cancellation: a run cancelled before its pass's send never runs; cancelled after, it
        may have run (the caller undoes what it may have done). No connection is leaked
        either way: the send belongs to the batcher, which reads every reply.

        Raises:
            StoreError: Redis could not be reached or the script failed.
        """
        connection = self._connection
        try:
            # With the other scripts this loop pass asks of the same client: one pipeline.
            batcher = connection.batcher()
            try:
                return await batcher.submit((*head, *args))
            except self._no_script:
                await batcher.client.script_load(self._source)
                return await batcher.submit((*head, *args))
        except connection.error_type as exc:
            raise connection.error(exc, doing) from exc
