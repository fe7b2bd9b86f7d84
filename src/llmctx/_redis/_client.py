"""The one convention of llmctx's Redis stores: a client or a URL in, ``StoreError`` out.

:class:`~llmctx.RedisLedger`, :class:`~llmctx.RedisRateStore` and
:class:`~llmctx.RedisLeaseStore` each build a :class:`_Connection`: it imports redis-py
lazily (``import llmctx`` never imports it), takes a synchronous ``redis.Redis`` client (never
closed by the store) or a URL (whose client the store owns and closes in ``close()``),
describes the server without its password, and turns every redis-py error into a
:class:`~llmctx.StoreError` whose message names what the store was doing, the server, what
did not happen and what to check. All Lua goes through :class:`~._script._Script`, which uses
this class for its errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from .._exceptions import ConfigError, StoreError
from .._redact import redact_url

_T = TypeVar("_T")


def _import_redis(owner: str) -> ModuleType:
    """The redis module, or a ConfigError naming the extra to install."""
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(f"{owner} needs the redis package: pip install 'llmctx[redis]'") from None
    return redis


def _describe(client: Any) -> tuple[str, str | None]:
    """``host:port`` (or ``unix:path``) of a client, and its password to scrub from errors."""
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
        client_or_url: a synchronous ``redis.Redis`` client, or a URL such as
            ``"redis://localhost:6379/0"`` (then this connection owns the client).
        owner: the store's class name, for configuration errors.
        subject: what the store is, for runtime errors (``"budget ledger 'team'"``).
        consequences: what did not happen when an operation (the key) failed.
        refused_fix: what to check when Redis answered with an error (not a lost connection).

    Raises:
        ConfigError: redis is not installed, the URL is malformed, or the client is not a
            synchronous redis-py client.
    """

    __slots__ = (
        "_consequences",
        "_password",
        "_refused_fix",
        "_subject",
        "_unreachable",
        "client",
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
    ) -> None:
        module = _import_redis(owner)
        if isinstance(client_or_url, str):
            try:
                client = module.Redis.from_url(client_or_url)
            except ValueError as exc:
                raise ConfigError(
                    f"{owner}: invalid Redis URL {redact_url(client_or_url)!r} ({exc}); "
                    "use redis://[:password@]host:port/db, rediss://... or unix://path"
                ) from None
            self.owns_client = True
        elif callable(getattr(client_or_url, "execute_command", None)):
            import inspect  # only here: import llmctx stays cheap

            if inspect.iscoroutinefunction(client_or_url.execute_command):
                raise ConfigError(
                    f"{owner} needs a synchronous redis.Redis client, not "
                    f"{type(client_or_url).__name__} from redis.asyncio; pass a URL or "
                    "redis.Redis(...)"
                )
            client = client_or_url
            self.owns_client = False
        else:
            raise ConfigError(
                f"{owner} needs a redis.Redis client or a URL, not {type(client_or_url)!r}"
            )
        self.client: Any = client
        #: The base of every redis-py error, for ``except`` clauses.
        self.error_type: type[Exception] = module.RedisError
        self._unreachable: tuple[type[Exception], ...] = (
            module.exceptions.ConnectionError,
            module.exceptions.TimeoutError,
        )
        self.where, self._password = _describe(client)
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
        detail = str(exc)
        if self._password:
            detail = detail.replace(self._password, "***")
        connection = isinstance(exc, self._unreachable)
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

    def close(self) -> None:
        """Close the client if it was made from a URL (the caller's client stays open)."""
        if self.owns_client:
            self.client.close()
