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

On a Redis Cluster the head starts with ``"EVALSHA"`` as a str: redis-py's cluster client
reads the keys of EVAL and EVALSHA from the command itself only when it can compare the name
as a str (with bytes it fails with a TypeError). The client follows ``MOVED`` and ``ASK``
itself; a ``TRYAGAIN`` it gives up on (the script's slot is moving between two masters: see
``RedisLedger._declared``), or a ``CLUSTERDOWN`` (a failover), is retried here for up to
:data:`_TRY_AGAIN_FOR` seconds: a command answered with either did not run. ``SCRIPT LOAD``
after ``NOSCRIPT`` goes to every primary (the cluster client's rule for it), so the node that
answered it has the script too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

from ._client import _Connection

#: Seconds a script refused with TRYAGAIN (its slot moving between nodes) is sent again for.
_TRY_AGAIN_FOR: Final = 10.0
#: Seconds between those sends.
_TRY_AGAIN_EVERY: Final = 0.05


class _Script:
    """A Lua script bound to one store's connection and keys.

    Args:
        connection: the store's connection (its client runs the script; its errors are
            raised).
        source: the Lua source.
        keys: the script's ``KEYS``, fixed for the store's lifetime.
    """

    __slots__ = (
        "_command",
        "_connection",
        "_head",
        "_loads",
        "_no_script",
        "_source",
        "_try_again",
        "sha",
    )

    def __init__(self, connection: _Connection, source: str, keys: Sequence[bytes | str]) -> None:
        from redis.exceptions import ClusterError, NoScriptError, TryAgainError

        self._connection = connection
        self._source = source
        #: The script's SHA1, as ``SCRIPT EXISTS`` takes it.
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._command: bytes | str = "EVALSHA" if connection.cluster else b"EVALSHA"
        self._head = self.head(keys)
        self._no_script: type[Exception] = NoScriptError
        # redis-py raises ClusterError("TTL exhausted.") when its own TRYAGAIN retries run
        # out, ClusterDownError (a ClusterError) while a failover is under way: neither ran.
        self._try_again: tuple[type[Exception], ...] = (TryAgainError, ClusterError)
        # The SCRIPT LOAD under way on each async client (see _aload).
        self._loads: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def head(self, keys: Sequence[bytes | str]) -> tuple[Any, ...]:
        """The start of this script's command for ``keys`` (encode it once, pass it to run)."""
        return (self._command, self.sha.encode(), len(keys), *keys)

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
            except self._try_again:
                if not connection.cluster:
                    raise
            return self._run_again(head, args)
        except connection.error_type as exc:
            raise connection.error(exc, doing) from exc

    def _run_again(self, head: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        # A cluster's TRYAGAIN outlasted redis-py's own retries: the slot is still moving.
        client = self._connection.client
        deadline = time.monotonic() + _TRY_AGAIN_FOR
        while True:
            time.sleep(_TRY_AGAIN_EVERY)
            try:
                return client.execute_command(*head, *args)
            except self._no_script:
                client.script_load(self._source)
            except self._try_again:
                if time.monotonic() >= deadline:
                    raise

    async def _arun_again(self, head: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        client = self._connection.async_client()
        deadline = time.monotonic() + _TRY_AGAIN_FOR
        while True:
            await asyncio.sleep(_TRY_AGAIN_EVERY)
            try:
                async with self._connection.cluster_gate():
                    return await client.execute_command(*head, *args)
            except self._no_script:
                async with self._connection.cluster_gate():
                    await self._aload(client)
            except self._try_again:
                if time.monotonic() >= deadline:
                    raise

    async def _aload(self, client: Any) -> None:
        """``SCRIPT LOAD`` on the async ``client``, once for every caller that met NOSCRIPT
        meanwhile: a burst of callers after a ``SCRIPT FLUSH`` (or a restart) each loading it
        held a connection each, the whole pool (50 in a burst of 200), where one load serves
        them all.

        Cancellation: a caller cancelled while it waits leaves the load running for the others.

        Raises:
            redis.RedisError: the load failed (every caller waiting for it gets the error).
        """
        load = self._loads.get(client)
        if load is None or load.done():
            load = asyncio.ensure_future(client.script_load(self._source))
            # Retrieved here too, so a load whose callers were all cancelled is not reported
            # as an exception never retrieved.
            load.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._loads[client] = load
        await asyncio.shield(load)

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
        if connection.cluster:
            return await self._arun_cluster(doing, head, args)
        try:
            # With the other scripts this loop pass asks of the same client: one pipeline.
            batcher = connection.batcher()
            try:
                return await batcher.submit((*head, *args))
            except self._no_script:
                await self._aload(batcher.client)
                return await batcher.submit((*head, *args))
        except connection.error_type as exc:
            raise connection.error(exc, doing) from exc

    async def _arun_cluster(self, doing: str, head: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        # One round trip on the async cluster client, which routes it by its keys' slot.
        # Cancelled while waiting for the gate, the script is never sent.
        connection = self._connection
        client = connection.async_client()
        try:
            async with connection.cluster_gate():
                try:
                    return await client.execute_command(*head, *args)
                except self._no_script:
                    await self._aload(client)
                    return await client.execute_command(*head, *args)
                except self._try_again:
                    pass
            return await self._arun_again(head, args)
        except connection.error_type as exc:
            raise connection.error(exc, doing) from exc
