"""A budget ledger in Redis, shared by every process and machine that names the same budget.

Each operation is one Lua script run with ``EVALSHA`` (a script the server lost, e.g. after
``SCRIPT FLUSH`` or a restart, is loaded again), so the check and the hold of a reservation are
one atomic step on the server: no client-side locks, no ``WATCH`` retry loops.

Data model, all under one hash tag so a cluster keeps the keys on one slot::

    {prefix:name}:totals   hash spent_usd|spent_tokens|spent_requests  spend, swept included
                                held_usd|held_tokens|held_requests     sum of live reservations
                                expired_usd|expired_tokens|...         the part of spent that
                                    is the reserved amount of swept, not yet settled reservations
    {prefix:name}:held     zset token -> expiry (Redis server time, ms), one per reservation
    {prefix:name}:expired  zset token -> when to forget a reservation swept after its expiry
    {prefix:name}:audit    list of every change, written only when auditing is on (tests)

A reservation that reaches its expiry is *swept*: its reserved amount moves from held to spent
(fail closed: its holder vanished, and the call may have run), it is counted in ``expired_*``,
and it leaves a tombstone. A later settle of the tombstone replaces the reserved amount by the
actual one (once); a later release leaves it spent.

A token is ``"<id>:<usd nano>:<tokens>:<requests>"``: it carries the reservation's amounts,
so a reservation is a single sorted-set member and a sweep needs no second lookup.

Money is kept as integer nano-dollars, which Lua's doubles add and compare exactly up to 2**53
nano-dollars (about $9,007,199 of spend plus reservations; beyond that totals may be off by a
few nano-dollars). Reservations are rounded *up* to the nano-dollar and a money limit *down*,
so rounding never admits a call that does not fit; settled spend is rounded half-up.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from typing import TYPE_CHECKING, Any, Final

from .._budget import Amount, Budget, LedgerSnapshot
from .._exceptions import BudgetExceeded, ConfigError, StoreError
from .._interrupt import protected
from ._client import _ClosesOnExit, _Connection, _Renewal
from ._script import _Script

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLedger"]

logger = logging.getLogger("llmctx.budget")

_DIMENSIONS: Final = ("usd", "tokens", "requests")
#: How long a swept reservation's token is remembered, so a late settle can still replace its
#: reserved amount (counted as spent at the sweep) by the actual one.
_TOMBSTONE_MS: Final = 86_400_000
#: Upper bound on expired reservations (and old tombstones) one script call cleans up.
_SWEEP_LIMIT: Final = 64
#: Integers travel packed as big-endian int64; limits above this mean "unlimited".
_INT_MAX: Final = 2**62
#: Seconds close() waits for a renewal under way to finish.
_STOP_WAIT: Final = 5.0
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
-- Move up to SWEEP_LIMIT expired reservations from held to spent: their holder vanished (it
-- renews what it holds while it lives) and its call may have run, so the reserved amount stays
-- spent until a settle says what it really cost. Each leaves a tombstone for that settle, and
-- adds to expired_* (spend counted only because a holder vanished). Old tombstones are
-- forgotten when there is something to sweep or when asked (snapshots): tombstones only appear
-- in sweeps, so this keeps them bounded without a second range query on every reserve.
-- Needs su, st, sr, hu, ht, hr and audit in scope; returns whether the totals changed.
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
  local eu, et, er = 0, 0, 0
  for _, token in ipairs(due) do
    local u, k, r = string.match(token, ':(%-?%d+):(%-?%d+):(%-?%d+)$')
    u, k, r = tonumber(u), tonumber(k), tonumber(r)
    hu, ht, hr = hu - u, ht - k, hr - r
    su, st, sr = su + u, st + k, sr + r
    eu, et, er = eu + u, et + k, er + r
    stones[#stones + 1] = string.format('%d', now + $TOMBSTONE_MS)
    stones[#stones + 1] = token
    if audit == 1 then redis.call('RPUSH', KEYS[4], 'x ' .. token) end
  end
  redis.call('ZADD', KEYS[3], unpack(stones))
  redis.call('HINCRBY', KEYS[1], 'expired_usd', string.format('%d', eu))
  redis.call('HINCRBY', KEYS[1], 'expired_tokens', string.format('%d', et))
  redis.call('HINCRBY', KEYS[1], 'expired_requests', string.format('%d', er))
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
local function store_all()
  redis.call('HSET', KEYS[1], 'spent_usd', fmt(su), 'spent_tokens', fmt(st),
             'spent_requests', fmt(sr), 'held_usd', fmt(hu), 'held_tokens', fmt(ht),
             'held_requests', fmt(hr))
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
  if swept then store_all() end
  if redis.call('ZSCORE', KEYS[2], token) then
    return {1}  -- a client retry of a reserve that already holds (and so counted itself)
  end
  return refusal
end
if redis.call('ZADD', KEYS[2], 'NX', fmt(now + ttl), token) == 0 then
  if swept then store_all() end
  return {1}  -- a client retry of a reserve the server already ran
end
hu, ht, hr = hu + u, ht + k, hr + r
if swept then store_all() else store_held() end
if audit == 1 then redis.call('RPUSH', KEYS[4], 'r ' .. token) end
return {1}
"""
)

# ARGV[1]: audit, settle (1) or release (0), actual usd, tokens, requests. ARGV[2]: token.
# Returns 1 when it changed the ledger, 0 for a no-op (unknown, settled or released token).
# A live token leaves held (and a settle adds its actual spend). A swept token (a tombstone) is
# already spent at its reserved amount: a settle replaces that amount by the actual one, a
# release leaves it spent (a release cannot prove the call did not run). Either way the
# tombstone goes, so a second settle or release of the token is a no-op.
_FINISH: Final = (
    """
local audit, settle, au, ak, ar = struct.unpack('>i8i8i8i8i8', ARGV[1])
local token = ARGV[2]
local live = redis.call('ZREM', KEYS[2], token) == 1
if not live then
  if redis.call('ZREM', KEYS[3], token) == 0 then return 0 end
  if settle == 0 then
    if audit == 1 then redis.call('RPUSH', KEYS[4], 'f ' .. token) end
    return 1
  end
end
"""
    + _LOAD
    + """
local u, k, r = string.match(token, ':(%-?%d+):(%-?%d+):(%-?%d+)$')
u, k, r = tonumber(u), tonumber(k), tonumber(r)
if live then
  hu, ht, hr = hu - u, ht - k, hr - r
else
  su, st, sr = su - u, st - k, sr - r
  redis.call('HINCRBY', KEYS[1], 'expired_usd', fmt(-u))
  redis.call('HINCRBY', KEYS[1], 'expired_tokens', fmt(-k))
  redis.call('HINCRBY', KEYS[1], 'expired_requests', fmt(-r))
end
if settle == 1 then
  su, st, sr = su + au, st + ak, sr + ar
  store_all()
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

# ARGV[1]: audit. Returns spent, held and expired (three each, as strings) and the number of
# live reservations.
_SNAPSHOT: Final = (
    """
local audit = struct.unpack('>i8', ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""
    + _LOAD
    + _SWEEP
    + """
if sweep(now, true) then store_all() end
local ex = redis.call('HMGET', KEYS[1], 'expired_usd', 'expired_tokens', 'expired_requests')
return {fmt(su), fmt(st), fmt(sr), fmt(hu), fmt(ht), fmt(hr), ex[1] or '0', ex[2] or '0',
        ex[3] or '0', redis.call('ZCARD', KEYS[2])}
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


# ARGV[1]: ttl ms. ARGV[2...]: tokens this process holds. Moves each held token's expiry to now
# + ttl (one whose expiry passed but that no sweep took yet is still counted as held, so it
# may be renewed too) and returns the tokens that are no longer held: swept (the holder
# stalled or could not reach Redis past its ttl), or ended by a settle or release under way.
_RENEW: Final = """
local ttl = struct.unpack('>i8', ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = string.format('%d', now + ttl)
local gone = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[2], 'XX', expiry, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
"""


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


def _seconds(value: Any) -> bool:
    """Whether ``value`` is a finite number of seconds (a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _from_nano(nano: int) -> Decimal:
    """Integer nano-dollars as dollars, without trailing zeros (``2500`` -> ``0.0000025``)."""
    usd = Decimal(nano).scaleb(-9)
    if usd == usd.to_integral_value():
        return usd.quantize(Decimal(1))
    return usd.normalize()


class RedisLedger(_ClosesOnExit):
    """A :class:`~llmctx.Ledger` in Redis that several processes or machines share.

    Every process that builds a ``RedisLedger`` with the same server, ``prefix`` and ``name``
    draws on one budget. The limits travel with each reservation (from the :class:`Budget`
    passed to :meth:`reserve`), so nothing needs setting up in Redis first; processes should
    pass the same limits.

    **A budget never forgets spend.** A reservation is held until its call settles or releases
    it. While its process lives, a daemon thread of this ledger renews every reservation the
    process holds (one round trip every ``renew_every`` seconds), so a call may run (a stream
    be read) for far longer than ``reservation_ttl``. A reservation that is not renewed for
    ``reservation_ttl`` seconds of Redis server time (its process crashed, was stopped, or
    could not reach Redis that long) is swept and **counted as spent at its reserved
    amount**: its call may have run, so its capacity does not come back. That spend shows in
    :attr:`LedgerSnapshot.expired <llmctx.LedgerSnapshot.expired>` until the call is settled:

    - a settle that arrives later (the process woke up, or a settle that could not reach Redis
      is applied once it is back) replaces the reserved amount by the actual one, once;
    - a release that arrives later leaves the reserved amount spent (a release cannot prove
      the call did not run);
    - a second settle or release of a token is a no-op, also across an expiry, so retrying a
      settle can never count a call twice.

    A swept token is remembered for a day. A settle later than that is a no-op and the
    reserved amount stays spent for good (an overestimate, never an underestimate).

    **Renewal.** The thread starts with the first reservation and stops when the process holds
    none (or at :meth:`close`); reserve, settle and release never wait for it. A renewal that
    cannot reach Redis is tried again at the next beat and logged once per outage on the
    ``llmctx.budget`` logger. A reservation found already swept at renewal (the process stalled
    past ``reservation_ttl``) is logged and counted in :attr:`lost`. A forked child renews only
    the reservations it takes itself. Because a live process renews, a reservation whose call
    never ends (its caller lost the token) stays held until the process exits or the ledger is
    closed.

    Args:
        client_or_url: a ``redis.Redis`` client (not closed by the ledger) or a URL such as
            ``"redis://localhost:6379/0"`` (the ledger owns that client; see :meth:`close`).
        name: the budget's name; the keys are ``{prefix:name}:*``.
        reservation_ttl: seconds a reservation survives without renewal before it is swept and
            counted as spent. It bounds how long a crashed process's reservations stay
            "in flight" before they count as spent; it does not bound the length of a call.
        renew_every: seconds between renewals (default ``reservation_ttl / 3``); must be below
            ``reservation_ttl``. ``0`` starts no thread: a reservation then expires
            ``reservation_ttl`` after it was taken unless :meth:`renew` is called.
        prefix: namespace of the keys.

    Raises:
        ConfigError: redis is not installed, a bad URL, a client that is not a synchronous
            ``redis.Redis``, an empty name, a non-positive ttl, or ``renew_every`` negative or
            not below ``reservation_ttl``.

    The methods are synchronous and thread-safe; each is one round trip. A reservation whose
    caller is interrupted (KeyboardInterrupt, cancellation of a thread's waiter) after the
    script ran is renewed while the process lives, and counted as spent once it expires.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        name: str,
        *,
        reservation_ttl: float = 600.0,
        renew_every: float | None = None,
        prefix: str = "llmctx",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"RedisLedger(name={name!r}) must be a non-empty string")
        if not isinstance(prefix, str):
            raise ConfigError(f"RedisLedger(prefix={prefix!r}) must be a string")
        if not _seconds(reservation_ttl) or reservation_ttl <= 0:
            raise ConfigError(
                f"RedisLedger(reservation_ttl={reservation_ttl!r}) must be a number of "
                "seconds > 0, e.g. 600"
            )
        if renew_every is None:
            renew_every = reservation_ttl / 3
        if not _seconds(renew_every) or renew_every < 0 or renew_every >= reservation_ttl:
            raise ConfigError(
                f"RedisLedger(renew_every={renew_every!r}) must be seconds >= 0 and below "
                f"reservation_ttl={reservation_ttl!r} (or the reservations expire between "
                "renewals); 0 turns the renewal thread off"
            )
        self.name = name
        self.prefix = prefix
        self.reservation_ttl = float(reservation_ttl)
        self.renew_every = float(renew_every)
        base = f"{{{prefix}:{name}}}"
        self._keys = [f"{base}:{part}" for part in ("totals", "held", "expired", "audit")]
        ttl = f"{self.reservation_ttl:g}s"
        expires = f"it expires {ttl} after its last renewal and then counts as spent"
        self._conn = _Connection(
            client_or_url,
            owner="RedisLedger",
            subject=f"budget ledger {name!r}",
            consequences={
                "reserve": "nothing was reserved, so the call was not sent",
                "settle": f"the call's spend was not recorded; its reservation is no longer "
                f"renewed: {expires} at its reserved amount until the settle is applied",
                "release": f"the reservation is no longer renewed: {expires}",
                "renew": "this process's reservations were not renewed; they expire unless a "
                "later renewal reaches Redis",
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
        self._renew_script = _Script(self._conn, _RENEW, keys)
        self._ttl_ms = max(1, round(self.reservation_ttl * 1000))
        self._limit_cache: tuple[Decimal, int] | None = None
        self._renewal = _Renewal(
            self._renew_tokens,
            every=self.renew_every,
            on_lost=self._report_lost,
            logger=logger,
            what=f"reservations on budget ledger {name!r}",
            thread_name=f"llmctx-ledger-renewal-{name}",
        )

    def _new_token_source(self) -> None:
        # 64 random bits per ledger object and process, plus a counter (atomic under the GIL):
        # unique across processes, and cheaper than a uuid4 per call.
        self._token_pid = os.getpid()
        self._token_prefix = os.urandom(8).hex()
        self._token_counter = itertools.count()

    @property
    def journal_key(self) -> str:
        """This budget's identity for the outbox: the same in every process that names the
        same server, prefix and name (the server without its password)."""
        return f"redis {self._conn.where} {self.prefix} {self.name}"

    def __repr__(self) -> str:
        return (
            f"RedisLedger(name={self.name!r}, prefix={self.prefix!r}, server={self._conn.where!r})"
        )

    # -- the Ledger protocol --------------------------------------------------------------------

    @protected
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
        if budget.calls is not None or budget.tool_calls is not None:
            # Fail closed: this ledger's script counts usd, tokens and requests only, so a cap
            # on calls would never stop a call. Refuse the budget rather than ignore the cap.
            raise ConfigError(
                f"{budget!r}: a RedisLedger cannot cap calls or tool_calls yet; put those caps "
                "on a budget with the in-memory ledger (the default) or leave them off"
            )
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
            self._renewal.add(token)
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

    @protected
    def settle(self, token: str, actual: Amount) -> None:
        """Replace the reservation by the actual spend (usd rounded half-up to the nano-dollar).

        A reservation that expired and was swept (counted as spent at its reserved amount)
        has that amount replaced by ``actual``: the spend changes by ``actual - reserved``.
        Unknown, settled or released tokens are a no-op, so a retry is harmless and a settle
        applied twice counts once.

        Raises:
            StoreError: Redis could not be reached; the spend was not recorded. The
                reservation is no longer renewed: it expires ``reservation_ttl`` after its last
                renewal and then counts as spent at its reserved amount, until this settle is
                applied (retrying it later is safe).
        """
        packed = _pack5(
            self._audit,
            1,
            _to_nano(actual.usd, ROUND_HALF_UP),
            _checked(actual.tokens),
            _checked(actual.requests),
        )
        self._renewal.discard(token)
        self._run(self._finish_script, packed, token, "settle")

    @protected
    def release(self, token: str) -> None:
        """Drop the reservation without spending. Unknown or finished tokens: no-op.

        A reservation that already expired and was swept stays spent at its reserved amount.

        Raises:
            StoreError: Redis could not be reached; the reservation is no longer renewed and
                counts as spent once it expires.
        """
        self._renewal.discard(token)
        self._run(self._finish_script, _pack5(self._audit, 0, 0, 0, 0), token, "release")

    def snapshot(self) -> LedgerSnapshot:
        """Spend and live reservations of every process, read atomically.

        Expired reservations are swept first (bounded work), so the snapshot counts the
        holds of vanished processes as spent once their ttl has passed; that part of
        ``spent`` is also in ``expired``.

        Raises:
            StoreError: Redis could not be reached.
        """
        reply = self._run(self._snapshot_script, _pack1(self._audit), None, "read")
        spent = Amount(_from_nano(int(reply[0])), int(reply[1]), int(reply[2]))
        reserved = Amount(_from_nano(int(reply[3])), int(reply[4]), int(reply[5]))
        expired = Amount(_from_nano(int(reply[6])), int(reply[7]), int(reply[8]))
        return LedgerSnapshot(spent, reserved, int(reply[9]), expired)

    def renew(self) -> int:
        """Renew every reservation this process holds now; return how many were found lost.

        The renewal thread calls this every ``renew_every`` seconds; call it yourself when
        the thread is off (``renew_every=0``). A lost reservation was swept already: it counts
        as spent at its reserved amount until its settle arrives.

        Raises:
            StoreError: Redis could not be reached; nothing was renewed.
        """
        self._check_open()
        return len(self._renewal.renew())

    @property
    def lost(self) -> int:
        """Reservations of this process found swept at renewal since the ledger was created."""
        return self._renewal.lost

    @protected
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
        self._renewal.clear()
        self._conn.run("reset", self._client.delete, *self._keys)

    def close(self) -> None:
        """Stop renewing, then close the client if the ledger created it from a URL.

        Reservations of this process still held are no longer renewed: they expire
        ``reservation_ttl`` later and count as spent at their reserved amount. Closing twice
        is harmless.
        """
        if self._closed:
            return
        self._closed = True
        self._renewal.stop(_STOP_WAIT)
        self._conn.close()

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

    def _renew_tokens(self, tokens: list[str]) -> Any:
        return self._renew_script("renew", _pack1(self._ttl_ms), *tokens)

    def _report_lost(self, token: str) -> None:
        logger.warning(
            "llmctx: reservation %s on budget ledger %r expired before it was renewed (this "
            "process stalled or could not reach Redis for longer than reservation_ttl=%gs); it "
            "counts as spent at its reserved amount until its call settles. Raise "
            "reservation_ttl",
            token,
            self.name,
            self.reservation_ttl,
        )

    def _run(self, script: _Script, packed: bytes, token: str | None, doing: str) -> Any:
        self._check_open()
        if token is None:
            return script(doing, packed)
        return script(doing, packed, token)
