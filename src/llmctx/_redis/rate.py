"""RateLimiter state in Redis: one GCRA cell that many processes and machines share.

:class:`RedisRateStore` is a :class:`~llmctx._limits.RateStore`: the limiter keeps its FIFO
queue in the process and asks the store, under its lock, whether the head fits now.

Its acquire and adjust are :func:`~llmctx._interrupt.protected` (as are the limiter's callers):
a Ctrl-C landing between Redis's reply and the limiter's record of it waits until the
admission is recorded, so it is settled or given back like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError
from .._interrupt import protected
from ._client import _ClosesOnExit, _Connection
from ._script import _Script

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["RedisRateStore"]

# Times in the scripts are microseconds (Lua numbers are doubles: nanoseconds since the epoch
# would lose precision). KEYS[1]: the state, one string "TAT_REQUESTS TAT_TOKENS" set with
# PX, so each write is one command (this runs on every admission; a hash would need HSET and
# PEXPIRE). The acquire script takes two arguments so the client packs little: ARGV[1] is
# "interval_req_us interval_tok_us tolerance_us ttl_ms" (encoded once per limit), ARGV[2] the
# tokens. It returns the delay in microseconds (0: admitted, both dimensions committed).
_ACQUIRE_LUA = """
local ireq, itok, tol, ttl = string.match(ARGV[1], '^(%S+) (%S+) (%S+) (%S+)$')
ireq = tonumber(ireq)
itok = tonumber(itok)
tol = tonumber(tol)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local treq, ttok = now, now
local v = redis.call('GET', KEYS[1])
if v then
  local a, b = string.match(v, '^(%S+) (%S+)$')
  treq = math.max(tonumber(a), now)
  ttok = tonumber(b)
end
local delay = treq + math.min(ireq, tol) - tol - now
if itok > 0 then
  ttok = math.max(ttok, now)
  local cost = tonumber(ARGV[2]) * itok
  delay = math.max(delay, ttok + math.min(cost, tol) - tol - now)
  ttok = ttok + cost
end
if delay > 0 then
  return math.ceil(delay)
end
treq = treq + ireq
local horizon = math.max(treq, ttok, now) - now
redis.call('SET', KEYS[1], string.format('%.3f %.3f', treq, ttok),
  'PX', math.ceil(horizon / 1000) + tonumber(ttl))
return 0
"""

# The rarer operations. ARGV: op ('adjust', 'push' or 'state'), two signed microsecond values
# ('' = leave that dimension alone), ttl_ms.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op = ARGV[1]
local treq, ttok = now, now
local v = redis.call('GET', KEYS[1])
if v then
  local a, b = string.match(v, '^(%S+) (%S+)$')
  treq = tonumber(a)
  ttok = tonumber(b)
end
if op == 'state' then
  return {tostring(treq), tostring(ttok), tostring(now)}
end
if op == 'adjust' then
  treq = treq + tonumber(ARGV[2])
  ttok = ttok + tonumber(ARGV[3])
elseif op == 'push' then
  if ARGV[2] ~= '' then treq = math.max(treq, now + tonumber(ARGV[2])) end
  if ARGV[3] ~= '' then ttok = math.max(ttok, now + tonumber(ARGV[3])) end
end
local horizon = math.max(treq, ttok, now) - now
redis.call('SET', KEYS[1], string.format('%.3f %.3f', treq, ttok),
  'PX', math.ceil(horizon / 1000) + tonumber(ARGV[4]))
return 0
"""


class RedisRateStore(_ClosesOnExit):
    """Rate-limiter state in Redis, so many processes and machines share one limit.

    Every operation is one ``EVALSHA`` round trip of a Lua script, sent straight through the
    client's ``execute_command``; an acquire sends two arguments, the limits packed and
    encoded once plus the tokens (after a ``NOSCRIPT`` error, e.g. a restarted Redis, the
    script is loaded again and the call retried). The script reads Redis's own ``TIME``, so
    the machines' clocks do not need to agree. The key is hash-tagged
    (``{llmctx:rl:NAME}:gcra``) so it works on Redis Cluster, and it expires once the bucket
    has refilled (plus ``ttl`` seconds), so idle limiters leave nothing behind.

    Every limiter sharing a name must use the same ``rpm``, ``tpm`` and ``burst``. FIFO order
    holds among the waiters of one process; across processes, whoever asks first once
    capacity is back goes first.

    Args:
        client_or_url: a synchronous ``redis.Redis`` or ``redis.cluster.RedisCluster``
            client (``decode_responses`` either way; not closed by the store) or a URL such as
            ``"redis://localhost:6379/0"`` or ``"redis+cluster://host:7000"`` (the
            store owns that client; see :meth:`close`).
        name: the shared limit's name, e.g. ``"openai-gpt-4o"``.
        ttl: seconds a full, idle bucket's key stays before it expires (default 60).

    Raises:
        ConfigError: an empty name, a negative ttl, redis not installed, a bad URL or a client
            that is not a synchronous ``redis.Redis``.

    A Redis that cannot be reached or refuses a script raises :class:`~llmctx.StoreError`
    from the limiter call that needed it (nothing was admitted by a failed acquire).
    """

    def __init__(
        self,
        client_or_url: redis.Redis | redis.cluster.RedisCluster | str,
        name: str,
        *,
        ttl: float = 60.0,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("RedisRateStore(name=...) must be a non-empty string")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl >= 0:
            raise ConfigError(f"RedisRateStore(ttl={ttl!r}) must be >= 0 seconds")
        self.name = name
        self.key = f"{{llmctx:rl:{name}}}:gcra"
        self._conn = _Connection(
            client_or_url,
            owner="RedisRateStore",
            subject=f"rate limit {name!r}",
            consequences={
                "acquire": "nothing was admitted, so the request must not be sent",
                "adjust": "the settle or release did not reach the shared schedule",
                "push": "the provider's feedback was not applied",
                "read": "the shared state could not be read",
                "clear": "the shared state was not deleted",
            },
            refused_fix=f"check that the key {self.key!r} is not used by something else",
        )
        #: The redis-py client the store uses.
        self.client: Any = self._conn.client
        self._ttl_ms = int(ttl * 1000)
        keys = (self.key.encode(),)
        self._acquire = _Script(self._conn, _ACQUIRE_LUA, keys)
        self._other = _Script(self._conn, _LUA, keys)
        # The acquire script's first argument depends only on the limits: encoded once.
        self._limits: tuple[int, int, int] | None = None
        self._packed = b""

    def __repr__(self) -> str:
        return f"RedisRateStore(name={self.name!r}, server={self._conn.where!r})"

    @staticmethod
    def _us(ns: int) -> str:
        return repr(ns / 1000)

    @protected
    def try_acquire(
        self, interval_req: int, interval_tok: int, tolerance: int, tokens: int, now: int
    ) -> int:
        """Admit one request of ``tokens`` tokens now in the shared state, or say how long to wait.

        Raises:
            StoreError: Redis could not be reached or refused the script; nothing was admitted.
        """
        limits = (interval_req, interval_tok, tolerance)
        if limits != self._limits:
            self._packed = (
                f"{self._us(interval_req)} {self._us(interval_tok)} "
                f"{self._us(tolerance)} {self._ttl_ms}"
            ).encode()
            self._limits = limits
        return int(self._acquire("acquire", self._packed, tokens)) * 1000

    @protected
    def adjust(self, req_delta: int, tok_delta: int, now: int) -> None:
        """Move the shared schedules by signed nanoseconds.

        Raises:
            StoreError: Redis could not be reached; the schedule was not moved.
        """
        self._other("adjust", "adjust", self._us(req_delta), self._us(tok_delta), self._ttl_ms)

    def push_back(self, req_until: int | None, tok_until: int | None, now: int) -> None:
        """Make each shared TAT at least the given value (None: leave that dimension alone).

        Raises:
            StoreError: Redis could not be reached; the schedule was not moved.
        """
        # The store's own clock decides, so pass offsets from "now", not absolute times.
        req = "" if req_until is None else self._us(req_until - now)
        tok = "" if tok_until is None else self._us(tok_until - now)
        self._other("push", "push", req, tok, self._ttl_ms)

    def state(self, now: int) -> tuple[int, int, int]:
        """``(tat_requests, tat_tokens, now)`` in nanoseconds of Redis's clock.

        Raises:
            StoreError: Redis could not be reached.
        """
        treq, ttok, rnow = self._other("read", "state", "", "", self._ttl_ms)
        return (
            int(float(treq) * 1000),
            int(float(ttok) * 1000),
            int(float(rnow) * 1000),
        )

    def clear(self) -> None:
        """Delete the shared state (the bucket starts full again).

        Raises:
            StoreError: Redis could not be reached.
        """
        self._conn.run("clear", self.client.delete, self.key)

    def close(self) -> None:
        """Close the client if the store created it from a URL. Closing twice is harmless."""
        self._conn.close()
