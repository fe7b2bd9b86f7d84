"""The one convention of llmctx's Redis stores: a client or a URL in, ``StoreError`` out.

:class:`~llmctx.RedisLedger`, :class:`~llmctx.RedisRateStore` and
:class:`~llmctx.RedisLeaseStore` each build a :class:`_Connection`: it imports redis-py
lazily (``import llmctx`` never imports it), takes a synchronous ``redis.Redis`` or
``redis.cluster.RedisCluster`` client (never closed by the store) or a URL (whose client the
store owns and closes in ``close()``; ``redis+cluster://host:port`` names a Redis Cluster),
describes the server without its password, and turns every redis-py error into a
:class:`~llmctx.StoreError` whose message names what the store was doing, the server, what
did not happen and what to check. All Lua goes through :class:`~._script._Script`, which uses
this class for its errors.

:class:`_Renewal` is the other thing the stores share: what one store object holds in this
process (leases, reservations) and the daemon thread that renews it in Redis while it is held.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Final, Self, TypeVar

from .._exceptions import ConfigError, StoreError
from .._redact import redact_known, redact_text, redact_url
from .._turns import take_turn

_T = TypeVar("_T")


def _import_redis(owner: str) -> ModuleType:
    """The redis module, or a ConfigError naming the extra to install."""
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(f"{owner} needs the redis package: pip install 'llmctx[redis]'") from None
    return redis


#: The URL schemes of a Redis Cluster, and the plain scheme redis-py's RedisCluster takes.
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_CLUSTER_FORM: Final = "redis+cluster://[[user]:password@]host:port (rediss+cluster:// for TLS)"


def _cluster_url(url: str, owner: str) -> str | None:
    """The ``redis://`` URL redis-py's RedisCluster takes for a ``redis+cluster://`` one; None
    for a URL that names no cluster.

    Raises:
        ConfigError: a cluster URL of another form (a database, a ``cluster=`` query, an
            unknown scheme naming a cluster).
    """
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # redis-py names what is wrong with it
    scheme = parts.scheme.lower()
    plain = _CLUSTER_SCHEMES.get(scheme)
    if plain is None:
        if "cluster" in scheme or "cluster" in parse_qs(parts.query):
            raise ConfigError(
                f"{owner}: {redact_url(url)!r} is not a Redis Cluster URL llmctx reads; use "
                f"{_CLUSTER_FORM}"
            )
        return None
    if parts.path not in ("", "/", "/0"):
        raise ConfigError(
            f"{owner}: a Redis Cluster has database 0 only, not {parts.path.lstrip('/')!r} "
            f"({redact_url(url)!r}); use {_CLUSTER_FORM}"
        )
    return plain + url[len(scheme) :]


def _node_pool(client: Any) -> Any:
    """The connection pool of a RedisCluster's default node (None if it has no node)."""
    node = client.get_default_node() or next(iter(client.get_nodes()), None)
    return getattr(getattr(node, "redis_connection", None), "connection_pool", None)


def _node_kwargs(client: Any) -> dict[str, Any]:
    """The connection settings of a RedisCluster's nodes (host and port aside)."""
    kwargs = getattr(_node_pool(client), "connection_kwargs", None)
    return dict(kwargs) if isinstance(kwargs, dict) else {}


def _describe(client: Any, cluster: bool = False) -> tuple[str, str | None]:
    """``host:port`` (or ``unix:path``) of a client, and its password to scrub from errors.

    A cluster is ``cluster host:port,...`` (its startup nodes, at most three named).
    """
    if cluster:
        names = sorted(client.nodes_manager.startup_nodes)
        shown = ",".join(names[:3]) + (",..." if len(names) > 3 else "")
        password = _node_kwargs(client).get("password")
        return f"cluster {shown}", str(password) if password else None
    try:
        kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    except AttributeError:
        return "the Redis server", None
    password = kwargs.get("password")
    secret = str(password) if password else None
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}", secret
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}", secret


class _Connection:
    """One store's redis-py client, how to describe its server, and how its errors read.

    Args:
        client_or_url: a synchronous ``redis.Redis`` or ``redis.cluster.RedisCluster``
            client, or a URL such as ``"redis://localhost:6379/0"`` or
            ``"redis+cluster://localhost:7000"`` (then this connection owns the client).
        owner: the store's class name, for configuration errors.
        subject: what the store is, for runtime errors (``"budget ledger 'team'"``).
        consequences: what did not happen when an operation (the key) failed.
        refused_fix: what to check when Redis answered with an error (not a lost connection).

    Raises:
        ConfigError: redis is not installed, the URL is malformed, or the client is not a
            synchronous redis-py client.
        StoreError: a cluster URL whose nodes cannot be reached (redis-py's RedisCluster asks
            a node for the slot map when it is built).

    On a cluster (:attr:`cluster`), scripts name their command ``"EVALSHA"`` as a str (the
    cluster client routes EVALSHA by its keys only when it can read the name as a str), the
    async face is a ``redis.asyncio.cluster.RedisCluster`` on the same startup nodes and
    credentials, and its scripts go one by one, not through the :class:`_Batcher` (see
    :meth:`batcher`).
    """

    __slots__ = (
        "_aclients",
        "_async_given",
        "_batchers",
        "_consequences",
        "_gates",
        "_module",
        "_moved",
        "_password",
        "_refused_fix",
        "_subject",
        "_unreachable",
        "client",
        "cluster",
        "error_type",
        "owns_client",
        "where",
    )

    def __init__(
        self,
        client_or_url: Any,
        *,
        owner: str,
        subject: str,
        consequences: Mapping[str, str],
        refused_fix: str,
        async_client: Any = None,
    ) -> None:
        module = _import_redis(owner)
        self._module = module
        self._async_given = async_client
        self._aclients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._batchers: weakref.WeakKeyDictionary[Any, _Batcher] = weakref.WeakKeyDictionary()
        self._gates: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        from redis.cluster import RedisCluster

        #: Whether the client is a ``redis.cluster.RedisCluster``.
        self.cluster = False
        #: The bases of every redis-py error, for ``except`` clauses (a cluster client raises
        #: RedisClusterException, which is no RedisError, when no node answers).
        self.error_type: tuple[type[Exception], ...] = (
            module.RedisError,
            module.exceptions.RedisClusterException,
        )
        self._unreachable: tuple[type[Exception], ...] = (
            module.exceptions.ConnectionError,
            module.exceptions.TimeoutError,
            module.exceptions.RedisClusterUnreachableError,
            module.exceptions.ClusterDownError,
        )
        if isinstance(client_or_url, str):
            cluster_url = _cluster_url(client_or_url, owner)
            try:
                if cluster_url is None:
                    client = module.Redis.from_url(client_or_url)
                else:
                    client = RedisCluster.from_url(cluster_url)
                    self.cluster = True
            except ValueError as exc:
                raise ConfigError(
                    f"{owner}: invalid Redis URL {redact_url(client_or_url)!r} ({exc}); "
                    "use redis://[:password@]host:port/db, rediss://..., unix://path or "
                    f"{_CLUSTER_FORM}"
                ) from None
            except self.error_type as exc:  # a cluster's nodes are asked for its slots now
                detail = redact_text(str(exc))
                raise StoreError(
                    f"{owner}: could not reach the Redis Cluster at {redact_url(client_or_url)} "
                    f"({type(exc).__name__}: {detail}); nothing was built. Fix: check that "
                    "the cluster runs and the URL names one of its nodes"
                ) from None
            self.owns_client = True
        elif isinstance(client_or_url, RedisCluster):
            client = client_or_url
            self.cluster = True
            self.owns_client = False
        elif callable(getattr(client_or_url, "execute_command", None)):
            import inspect  # only here: import llmctx stays cheap

            if inspect.iscoroutinefunction(client_or_url.execute_command):
                raise ConfigError(
                    f"{owner} needs a synchronous redis.Redis or redis.cluster.RedisCluster "
                    f"client, not {type(client_or_url).__name__} from redis.asyncio; pass a "
                    "URL or redis.Redis(...) (give the async client as async_client=)"
                )
            client = client_or_url
            self.owns_client = False
        else:
            raise ConfigError(
                f"{owner} needs a redis.Redis client or a URL (or a redis.cluster.RedisCluster), "
                f"not {type(client_or_url)!r}"
            )
        self.client: Any = client
        self._moved: type[Exception] = module.exceptions.MovedError
        self.where, self._password = _describe(client, self.cluster)
        self._subject = subject
        self._consequences = dict(consequences)
        self._refused_fix = refused_fix

    def run(self, doing: str, command: Callable[..., _T], *args: Any) -> _T:
        """``command(*args)``, a redis-py client method, with its errors as StoreError.

        Raises:
            StoreError: Redis could not be reached or refused the command.
        """
        try:
            return command(*args)
        except self.error_type as exc:
            raise self.error(exc, doing) from exc

    def error(self, exc: Exception, doing: str) -> StoreError:
        """The StoreError for redis-py's ``exc`` raised while doing ``doing``.

        It names the server (never its password), whether Redis was unreachable or refused,
        what did not happen, and the fix.
        """
        detail = redact_text(str(exc))
        if self._password:
            detail = redact_known(detail, [self._password])
        connection = isinstance(exc, self._unreachable)
        if isinstance(exc, self._moved) and not self.cluster:
            return StoreError(
                f"{self._subject}: Redis at {self.where} is a Redis Cluster node and the key "
                f"lives on another node ({type(exc).__name__}: {detail}); the {doing} did not "
                "happen. Fix: give a cluster client: a redis+cluster://host:port URL or "
                "redis.cluster.RedisCluster(...)"
            )
        what = (
            f"could not reach Redis at {self.where}"
            if connection
            else f"Redis at {self.where} refused the {doing}"
        )
        consequence = self._consequences.get(doing, f"the {doing} did not happen")
        fix = (
            "check that Redis is running and the URL (host, port, password) is right"
            if connection
            else self._refused_fix
        )
        return StoreError(
            f"{self._subject}: {what} ({type(exc).__name__}: {detail}); {consequence}. Fix: {fix}"
        )

    def async_client(self) -> Any:
        """The ``redis.asyncio`` client for the running event loop (built on first use).

        The one given to the store (``async_client=``) if any; else one per event loop (a
        redis.asyncio connection belongs to the loop that opened it), on the same server,
        database and credentials as the synchronous client. Those are the store's to close
        (:meth:`aclose`).
        """
        if self._async_given is not None:
            return self._async_given
        import asyncio

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None and self.cluster:
            client = self._aclients[loop] = self._async_cluster()
        if client is None:
            import redis.asyncio

            kwargs = _async_kwargs(self.client.connection_pool.connection_kwargs)
            sync_class = self.client.connection_pool.connection_class
            if issubclass(sync_class, self._module.SSLConnection):
                kwargs["connection_class"] = redis.asyncio.SSLConnection
            elif issubclass(sync_class, self._module.UnixDomainSocketConnection):
                kwargs["connection_class"] = redis.asyncio.UnixDomainSocketConnection
            # Tasks beyond the pool's size wait for a connection (a plain pool would refuse
            # them with "Too many connections").
            size = getattr(self.client.connection_pool, "max_connections", None) or 50
            pool = redis.asyncio.BlockingConnectionPool(
                max_connections=min(size, 50), timeout=None, **kwargs
            )
            client = self._aclients[loop] = redis.asyncio.Redis(connection_pool=pool)
        return client

    def _async_cluster(self) -> Any:
        """A ``redis.asyncio.cluster.RedisCluster`` on the sync cluster's startup nodes, with
        its nodes' credentials, timeouts and TLS."""
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        kwargs = _async_kwargs(_node_kwargs(self.client), skip=_NODE_ONLY)
        sync_class = getattr(_node_pool(self.client), "connection_class", None)
        if isinstance(sync_class, type) and issubclass(sync_class, self._module.SSLConnection):
            kwargs["ssl"] = True
        else:  # ssl_* settings only mean something to an SSL connection
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
        nodes = [
            ClusterNode(node.host, node.port)
            for node in self.client.nodes_manager.startup_nodes.values()
        ]
        return RedisCluster(startup_nodes=nodes, max_connections=50, **kwargs)

    def cluster_gate(self) -> Any:
        """The running loop's ``asyncio.Semaphore`` bounding the scripts in flight on the async
        cluster client at once (made on first use).

        redis.asyncio's cluster client has no blocking pool: a command past a node's
        ``max_connections`` fails at once with MaxConnectionsError. Tasks past this bound wait
        here instead, as they wait for a connection on one server. The bound is the smallest
        ``max_connections`` of the client's nodes (50 for the client the store builds), so the
        scripts of every task may go to one node (a hot account) and still find a connection.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            client = self.async_client()
            sizes = [getattr(node, "max_connections", None) for node in client.get_nodes()]
            known = [size for size in sizes if isinstance(size, int) and size > 0]
            gate = self._gates[loop] = asyncio.Semaphore(min(known, default=50))
        return gate

    def batcher(self) -> _Batcher:
        """The running loop's :class:`_Batcher` on :meth:`async_client` (made on first use).

        Not used on a cluster: there each script goes straight to the async cluster
        client, which routes it to its slot's node and follows MOVED, ASK and TRYAGAIN
        itself (a batch would first have to be split by node; per-node batching is not
        built).
        """
        import asyncio

        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher(self.async_client(), loop)
        return batcher

    async def aclose(self) -> None:
        """Close the async client this connection built for the running loop, if any, once
        the commands it was sending have their replies."""
        import asyncio

        loop = asyncio.get_running_loop()
        batcher = self._batchers.pop(loop, None)
        if batcher is not None:
            await batcher.drain()
        self._gates.pop(loop, None)
        client = self._aclients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Close the client if it was made from a URL (the caller's client stays open).

        Async clients built for event loops are dropped (their connections close with them);
        :meth:`aclose` closes the running loop's one cleanly.
        """
        self._aclients.clear()
        self._gates.clear()
        if self.owns_client:
            self.client.close()


class _Batcher:
    """The commands one pass of an event loop sends on one ``redis.asyncio`` client, sent
    together: one pipeline (one connection, one write, one read of all the replies).

    Sent one by one, 300 concurrent scripts cost about 225 us of the loop's CPU each (a
    connection taken from the pool and given back, a write and a read per command); as one
    pipeline, about 43 us (one run, 300 EVALSHAs). The first command of a pass schedules the
    send for the next pass (``loop.call_soon``), so commands asked for together go together
    and a lone command waits for no other. Each caller gets its own reply or its own error
    (``raise_on_error=False``); a failure of the whole send (Redis out of reach) goes to every
    caller of that batch. A caller cancelled before the send is left out of it (its command
    never runs); cancelled after, its command runs and its reply is dropped, as when a
    command of its own is cancelled in flight. The send is a task of the batcher's, not of
    any caller's, so one caller's cancellation never cuts the others' replies.
    """

    __slots__ = ("busy", "client", "loop", "queued", "sending")

    #: Pipelines waiting for their replies at once, at most: the commands asked for meanwhile
    #: wait and go in the next one, so a burst holds this many connections, not one per pass.
    MAX_IN_FLIGHT = 4

    def __init__(self, client: Any, loop: Any) -> None:
        self.client = client
        self.loop = loop
        self.queued: list[tuple[tuple[Any, ...], Any]] = []
        self.sending: set[Any] = set()
        self.busy = 0  # pipelines sent whose replies are not read yet

    def submit(self, command: tuple[Any, ...]) -> Any:
        """Queue ``command`` for this pass's send; returns the future of its reply."""
        future = self.loop.create_future()
        if not self.queued:
            self.loop.call_soon(self._flush)
        self.queued.append((command, future))
        return future

    def _flush(self) -> None:
        if self.busy >= self.MAX_IN_FLIGHT:
            return  # a send that ends schedules the next flush
        batch = [(command, future) for command, future in self.queued if not future.done()]
        self.queued = []
        if batch:
            self.busy += 1  # given back by _send once the replies are read
            task = self.loop.create_task(self._send(batch))
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], Any]]) -> None:
        try:
            if len(batch) == 1:
                replies = [await self.client.execute_command(*batch[0][0])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # the loop is shutting down: the callers are cancelled too
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self.busy -= 1
            if self.queued:  # commands that waited for a pipeline to come back
                self.loop.call_soon(self._flush)
        # The callers wake a few per loop pass (llmctx._turns), not all in the next one: a
        # batch of 300 replies would otherwise run 300 callers' continuations in one pass.
        try:
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                await take_turn()
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except BaseException:  # the loop is shutting down while replies wait for a turn
            for _, future in batch:
                future.cancel()
            raise

    async def drain(self) -> None:
        """Wait until every batch being sent has its replies."""
        import asyncio

        self._flush()
        while self.sending or self.queued:
            await asyncio.gather(*self.sending, return_exceptions=True)
            self._flush()


#: What a synchronous client's connection settings an async twin takes over.
_ASYNC_KWARGS: Final = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "client_name",
    "health_check_interval",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)

#: Settings of a single node that a cluster client sets for itself.
_NODE_ONLY: Final = ("host", "port", "db", "path")


def _async_kwargs(given: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    """The redis.asyncio settings of a sync client's connection settings ``given`` (but
    ``skip``): the same server, credentials, timeouts and TLS."""
    kwargs = {k: given[k] for k in _ASYNC_KWARGS if k in given and k not in skip}
    for timeout in ("socket_timeout", "socket_connect_timeout"):
        if f"orig_{timeout}" in given and timeout not in kwargs:
            kwargs[timeout] = given[f"orig_{timeout}"]
    return kwargs


#: Every live _Renewal, so a forked child can drop what its parent holds (see _after_fork).
_RENEWALS: Final[weakref.WeakSet[_Renewal]] = weakref.WeakSet()
_MISSING: Final = object()


class _Renewal:
    """The members one store holds in this process, and the daemon thread that renews them.

    The thread starts with the first member :meth:`add` takes and exits at the first beat that
    finds nothing held, so an idle store has no thread. Each beat renews every member in one
    call of ``renew`` (one round trip); the lock is held only to copy the members, never across
    Redis, so :meth:`add` and :meth:`discard` (the owner's hot path) never wait for a beat. A
    beat that fails (Redis unreachable) is retried at the next one and logged once per outage:
    one warning when renewals start failing, one line when they work again. After
    ``os.fork()`` the child starts with nothing held and no thread: what the parent holds is
    the parent's to renew.

    Args:
        renew: renews the members it is given in one round trip and returns those Redis no
            longer has (expired before they were renewed); raises StoreError.
        every: seconds between beats; 0 starts no thread (the owner calls :meth:`renew`).
        on_lost: called with each member found gone that this process still held.
        logger: where the outage lines go.
        what: what is renewed, for those lines (``"pool leases in 'gpu'"``).
        thread_name: the heartbeat thread's name.
    """

    def __init__(
        self,
        renew: Callable[[list[str]], Sequence[Any]],
        *,
        every: float,
        on_lost: Callable[[str], None],
        logger: logging.Logger,
        what: str,
        thread_name: str,
    ) -> None:
        self._renew = renew
        self._every = every
        self._on_lost = on_lost
        self._logger = logger
        self._what = what
        self._thread_name = thread_name
        #: Members found gone at a renewal while this process still held them.
        self.lost = 0
        self._lock = threading.Lock()
        self._held: dict[str, None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _RENEWALS.add(self)

    def add(self, member: str) -> None:
        """Hold ``member`` (renewed from now on); starts the heartbeat if none runs."""
        with self._lock:
            self._held[member] = None
            if self._thread is None and self._every > 0 and not self._stop.is_set():
                thread = threading.Thread(target=self._beat, name=self._thread_name, daemon=True)
                # Started before it is recorded: an interrupt in between leaves no thread
                # recorded that never runs (the next add starts one).
                thread.start()
                self._thread = thread

    def discard(self, member: str) -> None:
        """Stop renewing ``member`` (it was released or settled). Unknown members: no-op."""
        with self._lock:
            self._held.pop(member, None)

    def clear(self) -> None:
        """Stop renewing everything (the owner deleted it in Redis)."""
        with self._lock:
            self._held.clear()

    def members(self) -> list[str]:
        """A copy of what is held now."""
        with self._lock:
            return list(self._held)

    @property
    def running(self) -> bool:
        """Whether a heartbeat thread runs now."""
        with self._lock:
            return self._thread is not None

    def renew(self) -> list[str]:
        """Renew everything held now in one call; return the members found lost.

        A member found gone that this process no longer holds (released while the renewal was
        on its way) is not lost and is not reported.

        Raises:
            StoreError: Redis could not be reached; nothing was renewed.
        """
        members = self.members()
        if not members:
            return []
        gone = self._renew(members)
        if not gone:
            return []
        lost: list[str] = []
        with self._lock:
            for raw in gone:
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                if self._held.pop(member, _MISSING) is None:
                    lost.append(member)
            self.lost += len(lost)
        for member in lost:
            self._on_lost(member)
        return lost

    def stop(self, timeout: float | None) -> None:
        """Stop the heartbeat for good and wait up to ``timeout`` seconds for it to end."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self._every):
            with self._lock:
                if not self._held:  # checked and forgotten together: a racing add starts anew
                    self._thread = None
                    return
            try:
                self.renew()
            except Exception:  # Redis unreachable: try again next beat, log once per outage
                if not failing:
                    self._logger.warning(
                        "llmctx: could not renew %s; retrying every %gs, and logging again "
                        "only when a renewal works",
                        self._what,
                        self._every,
                        exc_info=True,
                    )
                failing = True
            else:
                if failing:
                    self._logger.info("llmctx: renewing %s works again", self._what)
                failing = False
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None

    def _after_fork(self) -> None:
        # Only the forking thread survives in the child: the heartbeat is gone and the lock may
        # have been held by it. The parent's members stay the parent's.
        stopped = self._stop.is_set()
        self._lock = threading.Lock()
        self._held = {}
        self._thread = None
        self._stop = threading.Event()
        if stopped:
            self._stop.set()


def _after_fork() -> None:
    for renewal in list(_RENEWALS):
        renewal._after_fork()


os.register_at_fork(after_in_child=_after_fork)


class _ClosesOnExit:
    """``with store:`` closes it on the way out (the three Redis stores share this)."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
