"""A budget ledger in Redis, shared by every process and machine that names the same budget.

Each operation is one Lua script run with ``EVALSHA`` (a script the server lost, e.g. after
``SCRIPT FLUSH`` or a restart, is loaded again), so the check and the hold of a reservation are
one atomic step on the server: no client-side locks, no ``WATCH`` retry loops.

Data model, all under one hash tag so a cluster keeps the keys on one slot::

    {prefix:name}:totals   hash spent_usd|spent_tokens|spent_requests  settled spend
                                held_usd|held_tokens|held_requests     sum of live reservations
    {prefix:name}:held     zset token -> expiry (Redis server time, ms), one per reservation
    {prefix:name}:expired  zset token -> when to forget a reservation swept after its expiry
    {prefix:name}:audit    list of every change, written only when auditing is on (tests)

A token is ``"<id>:<usd nano>:<tokens>:<requests>"``: it carries the reservation's amounts,
so a reservation is a single sorted-set member and a sweep needs no second lookup.

Money is kept as integer nano-dollars, which Lua's doubles add and compare exactly up to 2**53
nano-dollars (about $9,007,199 of spend plus reservations; beyond that totals may be off by a
few nano-dollars). Reservations are rounded *up* to the nano-dollar and a money limit *down*,
so rounding never admits a call that does not fit; settled spend is rounded half-up.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .._budget import Amount, Budget, LedgerSnapshot
from .._exceptions import BudgetExceeded, ConfigError, StoreError
from ._client import _Connection
from ._script import _Script

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLedger"]

_DIMENSIONS: Final = ("usd", "tokens", "requests")
#: How long a swept reservation's token is remembered, so a late settle still records its spend.
_TOMBSTONE_MS: Final = 86_400_000
#: Upper bound on expired reservations (and old tombstones) one script call cleans up.
_SWEEP_LIMIT: Final = 64
#: Integers travel packed as big-endian int64; limits above this mean "unlimited".
_INT_MAX: Final = 2**62
#: A wide context so scaling dollars to nano-dollars never rounds before we choose how to.
_WIDE: Final = Context(prec=100)

# Every script: KEYS 1 totals, 2 held, 3 expired, 4 audit. Integer arguments travel packed
# with struct in ARGV[1] (ARGV[2] is the token): redis-py spends about a microsecond encoding
# each argument and Lua as long parsing text, and the number of arguments and commands is what
# separates a reserve from a bare EVALSHA. A reservation's token carries its amounts
# ("id:usd:tokens:requests"), so a reservation is one sorted-set member and nothing else.
# Numbers go back to Redis through string.format('%d'): redis.call() would format a Lua number
# with "%.14g" and lose digits above 10**14.
_SWEEP = """
-- Drop up to SWEEP_LIMIT expired reservations from the totals (their capacity returns) and
-- leave a tombstone so a late settle still counts the spend. Old tombstones are forgotten when
-- there is something to sweep or when asked (snapshots): tombstones only appear in sweeps, so
-- this keeps them bounded without a second range query on every reserve.
-- Needs hu, ht, hr (held totals) and audit in scope; returns whether the totals changed.
local function sweep(now, forget)
  local upto = string.format('%d', now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', upto, 'LIMIT', 0, $SWEEP_LIMIT)
  if #due > 0 or forget then
    local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', upto, 'LIMIT', 0, $SWEEP_LIMIT)
    if #old > 0 then redis.call('ZREM', KEYS[3], unpack(old)) end
  end
  if #due == 0 then return false end
  redis.call('ZREM', KEYS[2], unpack(due))
  local stones = {}
  for _, token in ipairs(due) do
    local u, k, r = string.match(token, ':(%-?%d+):(%-?%d+):(%-?%d+)$')
    hu, ht, hr = hu - tonumber(u), ht - tonumber(k), hr - tonumber(r)
    stones[#stones + 1] = string.format('%d', now + $TOMBSTONE_MS)
    stones[#stones + 1] = token
    if audit == 1 then redis.call('RPUSH', KEYS[4], 'x ' .. token) end
  end
  redis.call('ZADD', KEYS[3], unpack(stones))
  return true
end
""".replace("$SWEEP_LIMIT", str(_SWEEP_LIMIT)).replace("$TOMBSTONE_MS", str(_TOMBSTONE_MS))

_LOAD = """
local raw = redis.call('HMGET', KEYS[1], 'spent_usd', 'spent_tokens', 'spent_requests',
                       'held_usd', 'held_tokens', 'held_requests')
local su, st, sr = tonumber(raw[1]) or 0, tonumber(raw[2]) or 0, tonumber(raw[3]) or 0
local hu, ht, hr = tonumber(raw[4]) or 0, tonumber(raw[5]) or 0, tonumber(raw[6]) or 0
local function fmt(n) return string.format('%d', n) end
local function store_held()
  redis.call('HSET', KEYS[1], 'held_usd', fmt(hu), 'held_tokens', fmt(ht), 'held_requests', fmt(hr))
end
"""

# ARGV[1]: audit, usd, tokens, requests, limit usd, limit tokens, limit requests (-1: none),
# ttl ms. ARGV[2]: token. Returns {1} when held, {0, dimension, spent, reserved} when refused.
_RESERVE: Final = (
    """
local audit, u, k, r, lu, lk, lr, ttl = struct.unpack('>i8i8i8i8i8i8i8i8', ARGV[1])
local token = ARGV[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""
    + _LOAD
    + _SWEEP
    + """
local function refused()
  if lu >= 0 and u ~= 0 and su + hu + u > lu then return {0, 1, fmt(su), fmt(hu)} end
  if lk >= 0 and k ~= 0 and st + ht + k > lk then return {0, 2, fmt(st), fmt(ht)} end
  if lr >= 0 and r ~= 0 and sr + hr + r > lr then return {0, 3, fmt(sr), fmt(hr)} end
  return nil
end
local swept = sweep(now, false)
local refusal = refused()
if refusal then
  if swept then store_held() end
  if redis.call('ZSCORE', KEYS[2], token) then
    return {1}  -- a client retry of a reserve that already holds (and so counted itself)
  end
  return refusal
end
if redis.call('ZADD', KEYS[2], 'NX', fmt(now + ttl), token) == 0 then
  if swept then store_held() end
  return {1}  -- a client retry of a reserve the server already ran
end
hu, ht, hr = hu + u, ht + k, hr + r
store_held()
if audit == 1 then redis.call('RPUSH', KEYS[4], 'r ' .. token) end
return {1}
"""
)

# ARGV[1]: audit, settle (1) or release (0), actual usd, tokens, requests. ARGV[2]: token.
# Returns 1 when it changed the ledger, 0 for a no-op (unknown, settled or released token).
_FINISH: Final = (
    """
local audit, settle, au, ak, ar = struct.unpack('>i8i8i8i8i8', ARGV[1])
local token = ARGV[2]
local live = redis.call('ZREM', KEYS[2], token) == 1
if not live then
  if redis.call('ZREM', KEYS[3], token) == 0 then return 0 end
  if settle == 0 then
    -- releasing a swept reservation: its capacity already came back
    if audit == 1 then redis.call('RPUSH', KEYS[4], 'f ' .. token) end
    return 1
  end
end
"""
    + _LOAD
    + """
if live then
  local u, k, r = string.match(token, ':(%-?%d+):(%-?%d+):(%-?%d+)$')
  hu, ht, hr = hu - tonumber(u), ht - tonumber(k), hr - tonumber(r)
end
if settle == 1 then
  redis.call('HSET', KEYS[1], 'spent_usd', fmt(su + au), 'spent_tokens', fmt(st + ak),
             'spent_requests', fmt(sr + ar), 'held_usd', fmt(hu), 'held_tokens', fmt(ht),
             'held_requests', fmt(hr))
  if audit == 1 then
    local entry = 's ' .. token .. ' ' .. fmt(au) .. ' ' .. fmt(ak) .. ' ' .. fmt(ar)
    redis.call('RPUSH', KEYS[4], entry)
  end
else
  store_held()
  if audit == 1 then redis.call('RPUSH', KEYS[4], 'f ' .. token) end
end
return 1
"""
)

# ARGV[1]: audit. Returns the six totals (as strings) and the number of live reservations.
_SNAPSHOT: Final = (
    """
local audit = struct.unpack('>i8', ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""
    + _LOAD
    + _SWEEP
    + """
if sweep(now, true) then store_held() end
return {fmt(su), fmt(st), fmt(sr), fmt(hu), fmt(ht), fmt(hr), redis.call('ZCARD', KEYS[2])}
"""
)

# ARGV[1]: spent usd, tokens, requests. Returns 1 when restored, 0 when the ledger is in use.
_RESTORE: Final = (
    """
local u, k, r = struct.unpack('>i8i8i8', ARGV[1])
"""
    + _LOAD
    + """
if su ~= 0 or st ~= 0 or sr ~= 0 or redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'spent_usd', fmt(u), 'spent_tokens', fmt(k), 'spent_requests', fmt(r))
return 1
"""
)


def _to_nano(usd: Decimal, rounding: str) -> int:
    """Dollars as integer nano-dollars, rounded as asked."""
    if not isinstance(usd, Decimal) or not usd.is_finite():
        raise ConfigError(f"a budget amount of {usd!r} dollars is not a finite Decimal")
    nano = int(usd.scaleb(9, _WIDE).to_integral_value(rounding, _WIDE))
    if abs(nano) > _INT_MAX:
        raise ConfigError(f"an amount of ${usd} is beyond what a RedisLedger can hold")
    return nano


_pack8 = struct.Struct(">8q").pack
_pack5 = struct.Struct(">5q").pack
_pack3 = struct.Struct(">3q").pack
_pack1 = struct.Struct(">q").pack


def _checked(count: int) -> int:
    """A token or request count, checked to fit the script's int64 arguments."""
    if isinstance(count, bool) or not isinstance(count, int) or abs(count) > _INT_MAX:
        raise ConfigError(f"a token or request count of {count!r} is not an int within +-2**62")
    return count


def _from_nano(nano: int) -> Decimal:
    """Integer nano-dollars as dollars, without trailing zeros (``2500`` -> ``0.0000025``)."""
    usd = Decimal(nano).scaleb(-9)
    if usd == usd.to_integral_value():
        return usd.quantize(Decimal(1))
    return usd.normalize()


class RedisLedger:
    """A :class:`~llmctx.Ledger` in Redis that several processes or machines share.

    Every process that builds a ``RedisLedger`` with the same server, ``prefix`` and ``name``
    draws on one budget. The limits travel with each reservation (from the :class:`Budget`
    passed to :meth:`reserve`), so nothing needs setting up in Redis first; processes should
    pass the same limits. A reservation that is neither settled nor released within
    ``reservation_ttl`` seconds of Redis server time (its process crashed) is swept and its
    capacity returns; a settle that arrives later still records the spend.

    Args:
        client_or_url: a ``redis.Redis`` client (not closed by the ledger) or a URL such as
            ``"redis://localhost:6379/0"`` (the ledger owns that client; see :meth:`close`).
        name: the budget's name; the keys are ``{prefix:name}:*``.
        reservation_ttl: seconds a reservation may stay in flight before it is swept. Make it
            longer than your slowest call, streaming included.
        prefix: namespace of the keys.

    Raises:
        ConfigError: redis is not installed, a bad URL, a client that is not a synchronous
            ``redis.Redis``, an empty name or a non-positive ttl.

    The methods are synchronous and thread-safe; each is one round trip. A reservation whose
    caller is interrupted (KeyboardInterrupt, cancellation of a thread's waiter) after the
    script ran is not lost: it expires after ``reservation_ttl``.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        name: str,
        *,
        reservation_ttl: float = 600.0,
        prefix: str = "llmctx",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"RedisLedger(name={name!r}) must be a non-empty string")
        if not isinstance(prefix, str):
            raise ConfigError(f"RedisLedger(prefix={prefix!r}) must be a string")
        if (
            isinstance(reservation_ttl, bool)
            or not isinstance(reservation_ttl, int | float)
            or not math.isfinite(reservation_ttl)
            or reservation_ttl <= 0
        ):
            raise ConfigError(
                f"RedisLedger(reservation_ttl={reservation_ttl!r}) must be a number of "
                "seconds > 0, e.g. 600"
            )
        self.name = name
        self.prefix = prefix
        self.reservation_ttl = float(reservation_ttl)
        base = f"{{{prefix}:{name}}}"
        self._keys = [f"{base}:{part}" for part in ("totals", "held", "expired", "audit")]
        ttl = f"{self.reservation_ttl:g}s"
        self._conn = _Connection(
            client_or_url,
            owner="RedisLedger",
            subject=f"budget ledger {name!r}",
            consequences={
                "reserve": "nothing was reserved, so the call was not sent",
                "settle": f"the call's spend was not recorded; its reservation expires after {ttl}",
                "release": f"the reservation expires after {ttl}",
            },
            refused_fix=f"check that the keys {self._keys[0]!r}... are not used by something else",
        )
        self._client: redis.Redis = self._conn.client
        self._closed = False
        self._audit = False  # tests turn this on to log every change in {prefix:name}:audit
        self._new_token_source()
        keys = tuple(key.encode() for key in self._keys)
        self._reserve_script = _Script(self._conn, _RESERVE, keys)
        self._finish_script = _Script(self._conn, _FINISH, keys)
        self._snapshot_script = _Script(self._conn, _SNAPSHOT, keys)
        self._restore_script = _Script(self._conn, _RESTORE, keys)
        self._ttl_ms = max(1, round(self.reservation_ttl * 1000))
        self._limit_cache: tuple[Decimal, int] | None = None

    def _new_token_source(self) -> None:
        # 64 random bits per ledger object and process, plus a counter (atomic under the GIL):
        # unique across processes, and cheaper than a uuid4 per call.
        self._token_pid = os.getpid()
        self._token_prefix = os.urandom(8).hex()
        self._token_counter = itertools.count()

    def __repr__(self) -> str:
        return (
            f"RedisLedger(name={self.name!r}, prefix={self.prefix!r}, server={self._conn.where!r})"
        )

    # -- the Ledger protocol --------------------------------------------------------------------

    def reserve(self, amount: Amount, budget: Budget) -> str:
        """Hold ``amount`` if it fits under ``budget`` beside everything every process holds.

        Args:
            amount: the call's worst case; its usd is rounded up to the nano-dollar.
            budget: the limits to check (a money limit is rounded down to the nano-dollar).

        Returns:
            The reservation token to pass to :meth:`settle` or :meth:`release`.

        Raises:
            BudgetExceeded: it does not fit in some dimension; nothing was held.
            StoreError: Redis could not be reached or refused the script; nothing was held, so
                the call must not be sent (llmctx fails closed).
            ConfigError: an amount that is not finite or beyond +-2**62.
        """
        if os.getpid() != self._token_pid:  # a forked child must not repeat the parent's tokens
            self._new_token_source()
        usd = _to_nano(amount.usd, ROUND_CEILING)
        tokens, requests = _checked(amount.tokens), _checked(amount.requests)
        token = f"{self._token_prefix}{next(self._token_counter):x}:{usd}:{tokens}:{requests}"
        packed = _pack8(
            self._audit,
            usd,
            tokens,
            requests,
            -1 if budget.usd is None else self._limit_nano(budget.usd),
            -1 if budget.tokens is None else min(budget.tokens, _INT_MAX),
            -1 if budget.requests is None else min(budget.requests, _INT_MAX),
            self._ttl_ms,
        )
        reply = self._run(self._reserve_script, packed, token, "reserve")
        if int(reply[0]) == 1:
            return token
        dimension = _DIMENSIONS[int(reply[1]) - 1]
        spent, reserved = int(reply[2]), int(reply[3])
        limit = budget.limit(dimension)
        assert limit is not None  # the script only refuses on a limited dimension
        raise BudgetExceeded(
            dimension=dimension,
            limit=limit,
            spent=_from_nano(spent) if dimension == "usd" else spent,
            reserved=_from_nano(reserved) if dimension == "usd" else reserved,
            requested=amount.get(dimension),
        )

    def settle(self, token: str, actual: Amount) -> None:
        """Replace the reservation by the actual spend (usd rounded half-up to the nano-dollar).

        A reservation that already expired and was swept still adds ``actual``: the money was
        spent (tokens are remembered for a day after they expire). Unknown, settled or
        released tokens are a no-op, so a retry is harmless.

        Raises:
            StoreError: Redis could not be reached; the spend was not recorded and the
                reservation will expire after ``reservation_ttl``.
        """
        packed = _pack5(
            self._audit,
            1,
            _to_nano(actual.usd, ROUND_HALF_UP),
            _checked(actual.tokens),
            _checked(actual.requests),
        )
        self._run(self._finish_script, packed, token, "settle")

    def release(self, token: str) -> None:
        """Drop the reservation without spending. Unknown or finished tokens: no-op.

        Raises:
            StoreError: Redis could not be reached; the reservation will expire after
                ``reservation_ttl``.
        """
        self._run(self._finish_script, _pack5(self._audit, 0, 0, 0, 0), token, "release")

    def snapshot(self) -> LedgerSnapshot:
        """Settled spend and live reservations of every process, read atomically.

        Expired reservations are swept first (bounded work), so the snapshot does not count
        the holds of crashed processes once their ttl has passed.

        Raises:
            StoreError: Redis could not be reached.
        """
        reply = self._run(self._snapshot_script, _pack1(self._audit), None, "read")
        spent = Amount(_from_nano(int(reply[0])), int(reply[1]), int(reply[2]))
        reserved = Amount(_from_nano(int(reply[3])), int(reply[4]), int(reply[5]))
        return LedgerSnapshot(spent, reserved, int(reply[6]))

    def restore(self, spent: Amount) -> None:
        """Set the settled spend, but only on an empty ledger.

        The state in Redis is authoritative for a shared budget: when the ledger already has
        settled spend or live reservations (another process is using it, or this budget was
        resumed before), this is a no-op. Empty means no spend and nothing in flight (a new
        ledger, or one after :meth:`reset`). Call :meth:`reset` first to overwrite it.

        Raises:
            StoreError: Redis could not be reached.
        """
        packed = _pack3(
            _to_nano(spent.usd, ROUND_HALF_UP), _checked(spent.tokens), _checked(spent.requests)
        )
        self._run(self._restore_script, packed, None, "restore")

    # -- administration -------------------------------------------------------------------------

    def reset(self) -> None:
        """Delete this budget's keys: spend, reservations and audit log start from zero.

        Raises:
            StoreError: Redis could not be reached.
        """
        self._check_open()
        self._conn.run("reset", self._client.delete, *self._keys)

    def close(self) -> None:
        """Close the client if the ledger created it from a URL. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._conn.close()

    def __enter__(self) -> RedisLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed; create a new RedisLedger to use the budget")

    def _limit_nano(self, usd: Decimal) -> int:
        # A budget's limit rarely changes: convert it once, not on every reserve.
        cached = self._limit_cache
        if cached is not None and cached[0] is usd:
            return cached[1]
        if not usd.is_finite():  # Budget rejects these; the attribute may have been reassigned
            raise ConfigError(f"a money limit of {usd!r} is not a finite amount")
        nano = min(int(usd.scaleb(9, _WIDE).to_integral_value(ROUND_FLOOR, _WIDE)), _INT_MAX)
        self._limit_cache = (usd, nano)
        return nano

    def _run(self, script: _Script, packed: bytes, token: str | None, doing: str) -> Any:
        self._check_open()
        if token is None:
            return script(doing, packed)
        return script(doing, packed, token)
