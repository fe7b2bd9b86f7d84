"""A budget ledger in Redis, shared by every process and machine that names the same budget.

Each operation is one Lua script run with ``EVALSHA`` (a script the server lost, e.g. after
``SCRIPT FLUSH`` or a restart, is loaded again), so the check and the hold of a reservation are
one atomic step on the server: no client-side locks, no ``WATCH`` retry loops. The ledger has
two faces on one implementation: ``reserve``/``settle``/``release`` on redis-py's client, and
``areserve``/``asettle``/``arelease`` on ``redis.asyncio`` (the same scripts, arguments and
replies; only the round trip differs).

A ledger holds accounts: its own (budgets without a ``key`` or ``window``), and one per key
and window of the budgets reserved on it. Data model of one account, all under one hash tag
so a cluster keeps its keys on one slot (``base`` is ``{prefix:name}`` for the ledger's own
account and ``{prefix:name#key}`` for a key, followed by ``:<window spec>`` for a window)::

    base:totals     hash spent_<dim>|held_<dim>|expired_<dim> for the five dimensions (usd,
                         tokens, requests, calls, tool_calls), and warned (a bit per dimension
                         whose soft limit fired); an account without a window
    base:w:<start>  the same hash for the window starting at <start> (Unix ms, Redis server
                    time); it expires a day after the window ends
    base:held       zset member -> expiry (Redis server time, ms), one per live reservation
    base:expired    zset member -> when to forget a reservation swept after its expiry
    base:meta       hash desc (the account as JSON: name, key, window), ws/we (the current
                    window), limit_<dim>: what ``llmctx budgets`` shows; written when a window
                    starts
    base:audit      list of every change, written only when auditing is on (tests)

A reservation that reaches its expiry is *swept*: its reserved amount moves from held to spent
(fail closed: its holder vanished, and the call may have run), it is counted in ``expired_*``,
and it leaves a tombstone. A later settle of the tombstone replaces the reserved amount by the
actual one (once); a later release leaves it spent.

A member is ``"<id>:<usd nano>:<tokens>:<requests>:<calls>:<tool calls>"``, prefixed by
``"<window start>|"`` in a windowed account: it carries the reservation's amounts and window,
so a reservation is a single sorted-set member, a sweep needs no second lookup, and a settle
goes to the window the reservation was taken in, however late it comes. The token a caller
holds is the member, prefixed by ``"<base> "`` outside the ledger's own account.

Windows: the script reads Redis's clock (``TIME``) and picks the window itself (a duration:
``now - now % length``), so a window rolls over atomically with the reserve that first sees
it; a calendar period's bounds come from the client (time zones are not Lua's), and a reserve
whose bounds do not hold the server's now is answered with that now and sent again once.

Money is kept as integer nano-dollars, which Lua's doubles add and compare exactly up to 2**53
nano-dollars (about $9,007,199 of spend plus reservations; beyond that totals may be off by a
few nano-dollars). Reservations are rounded *up* to the nano-dollar and a money limit *down*,
so rounding never admits a call that does not fit; settled spend is rounded half-up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from typing import TYPE_CHECKING, Any, Final

from .._budget import _DIMS, Amount, Budget, BudgetWindow, LedgerSnapshot
from .._exceptions import BudgetExceeded, ConfigError, StoreError
from .._interrupt import protected
from ._client import _ClosesOnExit, _Connection, _Renewal
from ._script import _Script

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["RedisLedger"]

logger = logging.getLogger("llmctx.budget")

#: How long a swept reservation's token is remembered, so a late settle can still replace its
#: reserved amount (counted as spent at the sweep) by the actual one; also how long a window's
#: totals are kept after the window ends.
_TOMBSTONE_MS: Final = 86_400_000
#: Upper bound on expired reservations (and old tombstones) one script call cleans up.
_SWEEP_LIMIT: Final = 64
#: Integers travel packed as big-endian int64; limits above this mean "unlimited".
_INT_MAX: Final = 2**62
#: Seconds close() waits for a renewal under way to finish.
_STOP_WAIT: Final = 5.0
#: A wide context so scaling dollars to nano-dollars never rounds before we choose how to.
_WIDE: Final = Context(prec=100)
_NO_LIMITS: Final = (-1, -1, -1, -1, -1)

# Every script: KEYS[1] is the account's held zset; its other keys are named from it (one key
# argument instead of five: redis-py spends about a microsecond encoding each argument, and the
# number of arguments and commands is what separates a reserve from a bare EVALSHA; the keys
# share its hash tag, so a cluster keeps them on its slot). Integer arguments travel packed with
# struct in ARGV[1], followed by the member in a reserve or a settle (one argument less: each
# costs redis-py about 3 % of a pair's client time). Numbers go back to Redis through
# string.format('%d'): redis.call() would format a Lua number with "%.14g" and lose digits
# above 10**14.
_COMMON = """
local base = string.sub(KEYS[1], 1, -6)
local held_key, expired_key, audit_key = KEYS[1], base .. ':expired', base .. ':audit'
local DIM = {'usd', 'tokens', 'requests', 'calls', 'tool_calls'}
local FIELDS = {'spent_usd', 'spent_tokens', 'spent_requests', 'spent_calls', 'spent_tool_calls',
                'held_usd', 'held_tokens', 'held_requests', 'held_calls', 'held_tool_calls',
                'warned', 'next_expiry'}
local function fmt(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function totals_key(ws)
  if ws then return base .. ':w:' .. ws end
  return base .. ':totals'
end
-- A member's window start (a string, nil outside windows) and its five amounts.
local function parse(member)
  local ws = string.match(member, '^(%d+)|')
  local a, b, c, d, e = string.match(member, ':(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+)$')
  return ws, {tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e)}
end
-- Spent and held (five each) of a totals hash, its warned bits, and whether it is new.
local function load(key)
  local raw = redis.call('HMGET', key, unpack(FIELDS))
  local s, h = {}, {}
  for i = 1, 5 do
    s[i] = tonumber(raw[i]) or 0
    h[i] = tonumber(raw[i + 5]) or 0
  end
  return s, h, tonumber(raw[11]) or 0, (not raw[1]) and (not raw[6]), tonumber(raw[12]) or 0
end
local function store_held(key, h, nexp)
  if nexp then
    redis.call('HSET', key, 'held_usd', fmt(h[1]), 'held_tokens', fmt(h[2]),
               'held_requests', fmt(h[3]), 'held_calls', fmt(h[4]), 'held_tool_calls', fmt(h[5]),
               'next_expiry', fmt(nexp))
    return
  end
  redis.call('HSET', key, 'held_usd', fmt(h[1]), 'held_tokens', fmt(h[2]),
             'held_requests', fmt(h[3]), 'held_calls', fmt(h[4]), 'held_tool_calls', fmt(h[5]))
end
local function store_all(key, s, h)
  redis.call('HSET', key, 'spent_usd', fmt(s[1]), 'spent_tokens', fmt(s[2]),
             'spent_requests', fmt(s[3]), 'spent_calls', fmt(s[4]), 'spent_tool_calls', fmt(s[5]),
             'held_usd', fmt(h[1]), 'held_tokens', fmt(h[2]), 'held_requests', fmt(h[3]),
             'held_calls', fmt(h[4]), 'held_tool_calls', fmt(h[5]))
end
-- A window's totals written after the window's own expiry was set (a late settle, a sweep):
-- kept a day, like a tombstone.
local function keep(key, ws)
  if ws and redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, $TOMBSTONE_MS) end
end
"""

_SWEEP = """
-- Move up to SWEEP_LIMIT expired reservations from held to spent: their holder vanished (it
-- renews what it holds while it lives) and its call may have run, so the reserved amount stays
-- spent until a settle says what it really cost. Each goes to the window it was reserved in
-- (cur, whose totals s and h the caller holds, or an earlier one written here), leaves a
-- tombstone for that settle, and adds to expired_* (spend counted only because a holder
-- vanished). Old tombstones are forgotten when there is something to sweep or when asked
-- (snapshots): tombstones only appear in sweeps, so this keeps them bounded without a second
-- range query on every reserve. Returns whether s and h changed.
local function sweep(now, forget, cur, key, s, h, audit)
  local upto = fmt(now)
  local due = redis.call('ZRANGEBYSCORE', held_key, '-inf', upto, 'LIMIT', 0, $SWEEP_LIMIT)
  if #due > 0 or forget then
    local old = redis.call('ZRANGEBYSCORE', expired_key, '-inf', upto, 'LIMIT', 0, $SWEEP_LIMIT)
    if #old > 0 then redis.call('ZREM', expired_key, unpack(old)) end
  end
  if #due == 0 then return false end
  redis.call('ZREM', held_key, unpack(due))
  local stones = {}
  local e = {0, 0, 0, 0, 0}
  local changed = false
  for _, member in ipairs(due) do
    local ws, a = parse(member)
    if ws == cur then
      for i = 1, 5 do
        h[i], s[i], e[i] = h[i] - a[i], s[i] + a[i], e[i] + a[i]
      end
      changed = true
    else
      local other = totals_key(ws)
      for i = 1, 5 do
        if a[i] ~= 0 then
          redis.call('HINCRBY', other, 'held_' .. DIM[i], fmt(-a[i]))
          redis.call('HINCRBY', other, 'spent_' .. DIM[i], fmt(a[i]))
          redis.call('HINCRBY', other, 'expired_' .. DIM[i], fmt(a[i]))
        end
      end
      keep(other, ws)
    end
    stones[#stones + 1] = string.format('%d', now + $TOMBSTONE_MS)
    stones[#stones + 1] = member
    if audit == 1 then redis.call('RPUSH', audit_key, 'x ' .. member) end
  end
  redis.call('ZADD', expired_key, unpack(stones))
  for i = 1, 5 do
    if e[i] ~= 0 then redis.call('HINCRBY', key, 'expired_' .. DIM[i], fmt(e[i])) end
  end
  return changed
end
-- The current window: its start (a string, nil without a window) and end, or nil and the
-- server's now when the client's calendar bounds do not hold it.
local function window(now, mode, wa, wb)
  if mode == 1 then
    local ws = now - now % wa
    return fmt(ws), ws + wa
  elseif mode == 2 then
    if now < wa or now >= wb then return nil, nil end
    return fmt(wa), wb
  end
  return nil, 0
end
"""


def _lua(*parts: str) -> str:
    return (
        "".join(parts)
        .replace("$SWEEP_LIMIT", str(_SWEEP_LIMIT))
        .replace("$TOMBSTONE_MS", str(_TOMBSTONE_MS))
    )


# ARGV[1]: audit, mode (0 none, 1 duration, 2 calendar), wa, wb (mode 1: length ms; mode 2:
# the client's bounds of the current window), ttl ms, then five each of amounts, limits (-1:
# none) and soft-limit thresholds (-1: none), packed; then the member without its window.
# ARGV[2] (optional): the account's description, for its meta hash.
# Returns the window start (0 without a window) when held, as a plain integer (an array reply
# costs redis-py about as much to read as the rest of the client's reserve), {1, ws, fired
# bits, in use x5} when held and a soft limit fired, {0, dimension, spent, reserved} when
# refused, {2, now} when the calendar bounds given do not hold the server's now.
_RESERVE: Final = _lua(
    _COMMON,
    _SWEEP,
    """
local v = {struct.unpack('>i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8', ARGV[1])}
local audit, mode = v[1], v[2]
local now = now_ms()
local cur, we = window(now, mode, v[3], v[4])
if mode == 2 and not cur then return {2, fmt(now)} end
local key = totals_key(cur)
local s, h, warned, fresh, nexp = load(key)
-- next_expiry is at most the earliest expiry in the held zset (each reserve lowers it to its
-- own; renewals only move expiries later; settles only remove), so while it lies ahead there
-- is nothing to sweep and the range query is skipped. A window's first reserve finds none
-- (0) and sweeps.
local swept, moved = false, false
if nexp <= now then
  swept = sweep(now, false, cur, key, s, h, audit)
  local first = redis.call('ZRANGE', held_key, 0, 0, 'WITHSCORES')
  nexp = first[2] and tonumber(first[2]) or now + v[5]
  moved = true
end
local member = string.sub(ARGV[1], 161)  -- after the 20 packed integers
if cur then member = cur .. '|' .. member end
local function keep_sweep()
  if swept then store_all(key, s, h) end
  if moved then redis.call('HSET', key, 'next_expiry', fmt(nexp)) end
  if (swept or moved) and fresh and cur then
    redis.call('PEXPIREAT', key, fmt(we + $TOMBSTONE_MS))
  end
end
for i = 1, 5 do
  local want, lim = v[5 + i], v[10 + i]
  if lim >= 0 and want ~= 0 and s[i] + h[i] + want > lim then
    keep_sweep()
    if redis.call('ZSCORE', held_key, member) then
      return tonumber(cur) or 0  -- a client retry of a reserve that already holds
    end
    return {0, i, fmt(s[i]), fmt(h[i])}
  end
end
if redis.call('ZADD', held_key, 'NX', fmt(now + v[5]), member) == 0 then
  keep_sweep()
  return tonumber(cur) or 0  -- a client retry of a reserve the server already ran
end
if now + v[5] < nexp then nexp, moved = now + v[5], true end
local fired = 0
for i = 1, 5 do
  h[i] = h[i] + v[5 + i]
  local bit_i = 2 ^ (i - 1)
  local t = v[15 + i]
  if t >= 0 and s[i] + h[i] >= t and bit.band(warned, bit_i) == 0 then fired = fired + bit_i end
end
if swept then store_all(key, s, h) end
store_held(key, h, moved and nexp)
if fired ~= 0 then redis.call('HSET', key, 'warned', fmt(warned + fired)) end
if fresh then
  if cur then redis.call('PEXPIREAT', key, fmt(we + $TOMBSTONE_MS)) end
  if ARGV[2] then
    redis.call('HSET', base .. ':meta', 'desc', ARGV[2], 'ws', cur or '0', 'we', fmt(we),
               'limit_usd', fmt(v[11]), 'limit_tokens', fmt(v[12]), 'limit_requests', fmt(v[13]),
               'limit_calls', fmt(v[14]), 'limit_tool_calls', fmt(v[15]))
  end
end
if audit == 1 then redis.call('RPUSH', audit_key, 'r ' .. member) end
if fired ~= 0 then
  return {1, cur or 0, fired, fmt(s[1] + h[1]), fmt(s[2] + h[2]), fmt(s[3] + h[3]),
          fmt(s[4] + h[4]), fmt(s[5] + h[5])}
end
return tonumber(cur) or 0
""",
)

# ARGV[1]: audit, settle (1) or release (0), the five actual amounts, packed; then the member.
# Returns 1 when it changed the ledger, 0 for a no-op (unknown, settled or released member).
# A live member leaves held (and a settle adds its actual spend) in the window it was
# reserved in. A swept member (a tombstone) is already spent at its reserved amount: a settle
# replaces that amount by the actual one, a release leaves it spent (a release cannot prove
# the call did not run). Either way the tombstone goes, so a second settle or release of the
# member is a no-op.
_FINISH: Final = _lua(
    _COMMON,
    """
local audit, settle, a1, a2, a3, a4, a5 = struct.unpack('>i8i8i8i8i8i8i8', ARGV[1])
local actual = {a1, a2, a3, a4, a5}
local member = string.sub(ARGV[1], 57)  -- after the 7 packed integers
local live = redis.call('ZREM', held_key, member) == 1
if not live then
  if redis.call('ZREM', expired_key, member) == 0 then return 0 end
  if settle == 0 then
    if audit == 1 then redis.call('RPUSH', audit_key, 'f ' .. member) end
    return 1
  end
end
local ws, a = parse(member)
local key = totals_key(ws)
local s, h, _, fresh = load(key)
if live then
  for i = 1, 5 do h[i] = h[i] - a[i] end
else
  for i = 1, 5 do
    s[i] = s[i] - a[i]
    if a[i] ~= 0 then redis.call('HINCRBY', key, 'expired_' .. DIM[i], fmt(-a[i])) end
  end
end
if settle == 1 then
  for i = 1, 5 do s[i] = s[i] + actual[i] end
  store_all(key, s, h)
  if audit == 1 then
    redis.call('RPUSH', audit_key, 's ' .. member .. ' ' .. fmt(a1) .. ' ' .. fmt(a2) .. ' '
               .. fmt(a3) .. ' ' .. fmt(a4) .. ' ' .. fmt(a5))
  end
else
  store_held(key, h)
  if audit == 1 then redis.call('RPUSH', audit_key, 'f ' .. member) end
end
if fresh then keep(key, ws) end  -- a window's totals made by its reserve have their expiry
return 1
""",
)

# ARGV[1]: audit, mode, wa, wb (as for a reserve). Returns spent, held and expired (five each,
# as strings), the number of live reservations of the account, and the window start (or {2,
# now} as a reserve does).
_SNAPSHOT: Final = _lua(
    _COMMON,
    _SWEEP,
    """
local audit, mode, wa, wb = struct.unpack('>i8i8i8i8', ARGV[1])
local now = now_ms()
local cur = window(now, mode, wa, wb)
if mode == 2 and not cur then return {2, fmt(now)} end
local key = totals_key(cur)
local s, h = load(key)
if sweep(now, true, cur, key, s, h, audit) then store_all(key, s, h) end
local ex = redis.call('HMGET', key, 'expired_usd', 'expired_tokens', 'expired_requests',
                      'expired_calls', 'expired_tool_calls')
local out = {}
for i = 1, 5 do
  out[i], out[i + 5], out[i + 10] = fmt(s[i]), fmt(h[i]), ex[i] or '0'
end
out[16] = redis.call('ZCARD', held_key)
out[17] = cur or '0'
return out
""",
)

# ARGV[1]: the five spent amounts. Returns 1 when restored, 0 when the account is in use.
_RESTORE: Final = _lua(
    _COMMON,
    """
local spent = {struct.unpack('>i8i8i8i8i8', ARGV[1])}
local key = totals_key(nil)
local s = load(key)
for i = 1, 5 do if s[i] ~= 0 then return 0 end end
if redis.call('ZCARD', held_key) > 0 then return 0 end
redis.call('HSET', key, 'spent_usd', fmt(spent[1]), 'spent_tokens', fmt(spent[2]),
           'spent_requests', fmt(spent[3]), 'spent_calls', fmt(spent[4]),
           'spent_tool_calls', fmt(spent[5]))
return 1
""",
)

# ARGV[1]: ttl ms. ARGV[2...]: members this process holds. Moves each held member's expiry to
# now + ttl (one whose expiry passed but that no sweep took yet is still counted as held, so
# it may be renewed too) and returns the members that are no longer held: swept (the holder
# stalled or could not reach Redis past its ttl), or ended by a settle or release under way.
_RENEW: Final = """
local ttl = struct.unpack('>i8', ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = string.format('%d', now + ttl)
local gone = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
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
    if not usd:
        return 0
    nano = int(usd.scaleb(9, _WIDE).to_integral_value(rounding, _WIDE))
    if abs(nano) > _INT_MAX:
        raise ConfigError(f"an amount of ${usd} is beyond what a RedisLedger can hold")
    return nano


_pack10 = struct.Struct(">10q").pack
_pack7 = struct.Struct(">7q").pack
_pack5 = struct.Struct(">5q").pack
_pack4 = struct.Struct(">4q").pack
_pack1 = struct.Struct(">q").pack


def _counts(amount: Amount) -> tuple[int, int, int, int]:
    """``amount``'s tokens, requests, calls and tool calls, checked as :func:`_checked` does
    (the common case in one test; otherwise the count that fails is named)."""
    tokens, requests = amount.tokens, amount.requests
    calls, tool_calls = amount.calls, amount.tool_calls
    if (
        type(tokens) is int
        and type(requests) is int
        and type(calls) is int
        and type(tool_calls) is int
        and min(tokens, requests, calls, tool_calls) >= -_INT_MAX
        and max(tokens, requests, calls, tool_calls) <= _INT_MAX
    ):
        return tokens, requests, calls, tool_calls
    return _checked(tokens), _checked(requests), _checked(calls), _checked(tool_calls)


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


def _value(dim: int, raw: Any) -> Decimal | int:
    """A reply's number in dimension ``dim`` (0 is usd, in nano-dollars)."""
    return _from_nano(int(raw)) if dim == 0 else int(raw)


class _Account:
    """One account of a ledger as the client sees it: its keys, window and command heads."""

    __slots__ = ("base", "bounds", "desc", "finish", "held", "reserve", "snapshot", "token_head")

    def __init__(self, ledger: RedisLedger, base: str, desc: bytes | None) -> None:
        self.base = base
        self.held = f"{base}:held"
        keys = ledger._declared(base)
        self.reserve = ledger._reserve_script.head(keys)
        self.finish = ledger._finish_script.head(keys)
        self.snapshot = ledger._snapshot_script.head(keys)
        #: What a caller's token starts with ("" for the ledger's own account).
        self.token_head = "" if base == ledger._base else f"{base} "
        self.desc = desc
        #: A calendar window's current bounds (Unix ms), as last confirmed by the server.
        self.bounds: tuple[int, int] | None = None

    def window_args(self, window: BudgetWindow | None) -> tuple[int, int, int]:
        """mode, wa, wb for the scripts (see _RESERVE)."""
        if window is None:
            return 0, 0, 0
        if window.length_ms:
            return 1, window.length_ms, 0
        if self.bounds is None:
            self.bounds = window.bounds(int(time.time() * 1000))
        return 2, *self.bounds


class RedisLedger(_ClosesOnExit):
    """A :class:`~llmctx.Ledger` in Redis that several processes or machines share.

    Every process that builds a ``RedisLedger`` with the same server, ``prefix`` and ``name``
    draws on one budget. The limits travel with each reservation (from the :class:`Budget`
    passed to :meth:`reserve`), so nothing needs setting up in Redis first; processes should
    pass the same limits. A budget with a ``key`` (``Budget(key="user:42", ledger=ledger)``)
    draws on that key's account of the ledger instead, shared by every process using the key;
    one with a ``window`` counts spend in the current window only (Redis server time).

    **A budget never forgets spend.** A reservation is held until its call settles or releases
    it. While its process lives, a daemon thread of this ledger renews every reservation the
    process holds (one round trip per account every ``renew_every`` seconds), so a call may run
    (a stream be read) for far longer than ``reservation_ttl``. A reservation that is not
    renewed for ``reservation_ttl`` seconds of Redis server time (its process crashed, was
    stopped, or could not reach Redis that long) is swept and **counted as spent at its
    reserved amount**: its call may have run, so its capacity does not come back. That spend
    shows in :attr:`LedgerSnapshot.expired <llmctx.LedgerSnapshot.expired>` until the call is
    settled:

    - a settle that arrives later (the process woke up, or a settle that could not reach Redis
      is applied once it is back) replaces the reserved amount by the actual one, once;
    - a release that arrives later leaves the reserved amount spent (a release cannot prove
      the call did not run);
    - a second settle or release of a token is a no-op, also across an expiry, so retrying a
      settle can never count a call twice.

    A swept token is remembered for a day. A settle later than that is a no-op and the
    reserved amount stays spent for good (an overestimate, never an underestimate). A
    reservation settles into the window it was reserved in, however late.

    **Renewal.** The thread starts with the first reservation and stops when the process holds
    none (or at :meth:`close`); reserve, settle and release never wait for it. A renewal that
    cannot reach Redis is tried again at the next beat and logged once per outage on the
    ``llmctx.budget`` logger. A reservation found already swept at renewal (the process stalled
    past ``reservation_ttl``) is logged and counted in :attr:`lost`. A forked child renews only
    the reservations it takes itself. Because a live process renews, a reservation whose call
    never ends (its caller lost the token) stays held until the process exits or the ledger is
    closed.

    Args:
        client_or_url: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (not
            closed by the ledger) or a URL such as ``"redis://localhost:6379/0"`` or
            ``"redis+cluster://host:7000"`` (the ledger owns that client; see :meth:`close`).
        name: the budget's name; the keys are ``{prefix:name}:*`` (``{prefix:name#key}:*``
            for a key's account).
        reservation_ttl: seconds a reservation survives without renewal before it is swept and
            counted as spent. It bounds how long a crashed process's reservations stay
            "in flight" before they count as spent; it does not bound the length of a call.
        renew_every: seconds between renewals (default ``reservation_ttl / 3``); must be below
            ``reservation_ttl``. ``0`` starts no thread: a reservation then expires
            ``reservation_ttl`` after it was taken unless :meth:`renew` is called.
        prefix: namespace of the keys.
        async_client: a ``redis.asyncio.Redis`` for the async faces (not closed by the
            ledger). By default the ledger opens one per event loop on the same server and
            credentials as the synchronous client (closed by :meth:`aclose`).

    Raises:
        ConfigError: redis is not installed, a bad URL, a client that is not a synchronous
            ``redis.Redis``, an empty name, a non-positive ttl, or ``renew_every`` negative or
            not below ``reservation_ttl``.

    The synchronous methods are thread-safe; each is one round trip (a calendar window's
    first reserve after the period changed: two). A reservation whose caller is interrupted
    (KeyboardInterrupt, cancellation of a thread's waiter) after the script ran is renewed
    while the process lives, and counted as spent once it expires. The async faces
    (:meth:`areserve`, :meth:`asettle`, :meth:`arelease`) run the same scripts on
    ``redis.asyncio``; an ``areserve`` cancelled while its script may have run releases what
    it may have reserved (in a task of its own, so the cancellation is not held up).
    """

    #: A RedisLedger is shared by every process on its server: ``Budget(shared=True)`` takes it.
    shared_across_processes = True

    def __init__(
        self,
        client_or_url: redis.Redis | redis.cluster.RedisCluster | str,
        name: str,
        *,
        reservation_ttl: float = 600.0,
        renew_every: float | None = None,
        prefix: str = "llmctx",
        async_client: Any = None,
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
        self._base = f"{{{prefix}:{name}}}"
        self._keys = [f"{self._base}:{part}" for part in ("totals", "held", "expired", "audit")]
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
            async_client=async_client,
        )
        self._client: redis.Redis = self._conn.client
        self._closed = False
        self._audit = False  # tests turn this on to log every change in base:audit
        self._new_token_source()
        keys = self._declared(self._base)
        self._reserve_script = _Script(self._conn, _RESERVE, keys)
        self._finish_script = _Script(self._conn, _FINISH, keys)
        self._snapshot_script = _Script(self._conn, _SNAPSHOT, keys)
        self._restore_script = _Script(self._conn, _RESTORE, keys)
        self._renew_script = _Script(self._conn, _RENEW, keys)
        self._ttl_ms = max(1, round(self.reservation_ttl * 1000))
        self._limit_cache: tuple[Decimal, int] | None = None
        # The last budget's packed window, ttl, limits and soft limits (see _reserve_args).
        self._packed_cache: tuple[tuple[Any, ...], bytes, bytes] | None = None
        # (key, window spec) -> account; base -> account (settles of tokens from anywhere).
        self._accounts: dict[tuple[str | None, str | None], _Account] = {}
        self._by_base: dict[str, _Account] = {}
        self._own = self._account_at(self._base, None)
        self._accounts[(None, None)] = self._own
        #: Releases of cancelled areserves under way (kept so they are not collected).
        self._cleanups: set[asyncio.Task[None]] = set()
        self._renewal = _Renewal(
            self._renew_tokens,
            every=self.renew_every,
            on_lost=self._report_lost,
            logger=logger,
            what=f"reservations on budget ledger {name!r}",
            thread_name=f"llmctx-ledger-renewal-{name}",
        )

    def _declared(self, base: str) -> tuple[bytes, ...]:
        """The keys a script of the account at ``base`` declares (``KEYS``); the held zset first.

        The scripts read only ``KEYS[1]`` and name the account's other keys from it (its
        windows' totals among them, picked by the server's clock). On a cluster they also
        declare ``base:moving``, a key never written: while the account's slot moves between
        two masters, Redis runs a multi-key command only where all its keys exist, so it
        answers every script of the account ASK or TRYAGAIN (retried) until the move ends, and
        no script ever runs beside a part of its account that has already moved.
        """
        held = f"{base}:held".encode()
        if not self._conn.cluster:
            return (held,)
        return (held, f"{base}:moving".encode())

    def _new_token_source(self) -> None:
        # 64 random bits per ledger object and process, plus a counter (atomic under the GIL):
        # unique across processes, and cheaper than a uuid4 per call.
        self._token_pid = os.getpid()
        self._token_prefix = os.urandom(8).hex()
        self._token_counter = itertools.count()

    @property
    def journal_key(self) -> str:
        """This budget's identity for the outbox: the same in every process that names the
        same server, prefix and name (the server without its password).

        On a cluster it is the prefix and name alone: the nodes a client knows depend on the
        node it started from and change with the cluster (a node added, replaced, resharded),
        and settles kept under an old identity would never be replayed.
        """
        if self._conn.cluster:
            return f"redis cluster {self.prefix} {self.name}"
        return f"redis {self._conn.where} {self.prefix} {self.name}"

    def __repr__(self) -> str:
        return (
            f"RedisLedger(name={self.name!r}, prefix={self.prefix!r}, server={self._conn.where!r})"
        )

    # -- accounts -------------------------------------------------------------------------------

    def _account_at(self, base: str, desc: bytes | None) -> _Account:
        account = self._by_base.get(base)
        if account is None:
            account = self._by_base[base] = _Account(self, base, desc)
        elif desc is not None and account.desc is None:
            account.desc = desc
        return account

    def _account(self, budget: Budget) -> _Account:
        """The account ``budget`` draws on (made on first use)."""
        found = self._accounts.get(budget._account)
        if found is not None:
            return found
        key, spec = budget._account
        base = self._base if key is None else f"{{{self.prefix}:{self.name}#{key}}}"
        if spec is not None:
            base = f"{base}:{spec}"
        desc = json.dumps({"name": self.name, "key": key, "window": spec}).encode()
        account = self._accounts[budget._account] = self._account_at(base, desc)
        return account

    def _account_of(self, token: str) -> tuple[_Account, str]:
        """The account a token was reserved on, and its member there."""
        base, _, member = token.rpartition(" ")
        if not base:
            return self._own, member
        return self._account_at(base, None), member

    # -- the Ledger protocol: one implementation, two faces -----------------------------------

    def _reserve_args(
        self, amount: Amount, budget: Budget, account: _Account
    ) -> tuple[str, tuple[Any, ...]]:
        """A new member for ``amount`` under ``budget``, and the reserve script's arguments
        (after its head) that hold it."""
        self._check_open()
        if os.getpid() != self._token_pid:  # a forked child must not repeat the parent's tokens
            self._new_token_source()
        usd = _to_nano(amount.usd, ROUND_CEILING)
        tokens, requests, calls, tool_calls = _counts(amount)
        member = (
            f"{self._token_prefix}{next(self._token_counter):x}"
            f":{usd}:{tokens}:{requests}:{calls}:{tool_calls}"
        )
        window = account.window_args(budget.window)
        # What does not change between reserves of one budget (window, ttl, limits, soft
        # limits) is packed once; the key holds every input, so a reassigned limit repacks.
        key = (
            budget.usd,
            budget.tokens,
            budget.requests,
            budget.calls,
            budget.tool_calls,
            budget.warn_at,
            window,
            self._audit,
        )
        cached = self._packed_cache
        if cached is None or cached[0] != key:
            limits = (
                -1 if budget.usd is None else self._limit_nano(budget.usd),
                -1 if budget.tokens is None else min(budget.tokens, _INT_MAX),
                -1 if budget.requests is None else min(budget.requests, _INT_MAX),
                -1 if budget.calls is None else min(budget.calls, _INT_MAX),
                -1 if budget.tool_calls is None else min(budget.tool_calls, _INT_MAX),
            )
            warn = _NO_LIMITS if budget.warn_at is None else self._thresholds(budget)
            cached = self._packed_cache = (
                key,
                _pack5(self._audit, *window, self._ttl_ms),
                _pack10(*limits, *warn),
            )
        packed = cached[1] + _pack5(usd, tokens, requests, calls, tool_calls) + cached[2]
        packed += member.encode()
        if account.desc is None:
            return member, (packed,)
        return member, (packed, account.desc)

    def _reserved(
        self, reply: Any, member: str, amount: Amount, budget: Budget, account: _Account
    ) -> str | None:
        """The token of a reserve's reply for ``member``, or None: send a new reserve (the
        calendar window changed; its new bounds are taken).

        Raises:
            BudgetExceeded: the reply is a refusal.
        """
        if type(reply) is int:  # held, no soft limit fired: the window's start (0: none)
            start, fired = reply, 0
        else:
            status = int(reply[0])
            if status == 2:  # the calendar period changed: take the server's bounds
                assert budget.window is not None
                account.bounds = budget.window.bounds(int(reply[1]))
                return None
            if status != 1:
                index = int(reply[1]) - 1
                dimension = _DIMS[index]
                limit = budget.limit(dimension)
                assert limit is not None  # the script only refuses on a limited dimension
                raise BudgetExceeded(
                    dimension=dimension,
                    limit=limit,
                    spent=_value(index, reply[2]),
                    reserved=_value(index, reply[3]),
                    requested=amount.get(dimension),
                )
            # Held, and soft limits fired (decided in the script, once per window).
            start, fired = int(reply[1]), int(reply[2])
        if start:
            member = f"{start}|{member}"
        token = account.token_head + member if account.token_head else member
        self._renewal.add(token)
        if fired:
            for i, dim in enumerate(_DIMS):
                if fired & (1 << i):
                    budget._warn(dim, _value(i, reply[3 + i]), start or None)
        return token

    @protected
    def reserve(self, amount: Amount, budget: Budget) -> str:
        """Hold ``amount`` if it fits under ``budget`` beside everything every process holds.

        Args:
            amount: the call's worst case; its usd is rounded up to the nano-dollar.
            budget: the limits to check (a money limit is rounded down to the nano-dollar),
                and the account (key) and window to hold it in.

        Returns:
            The reservation token to pass to :meth:`settle` or :meth:`release`.

        Raises:
            BudgetExceeded: it does not fit in some dimension; nothing was held.
            StoreError: Redis could not be reached or refused the script; nothing was held, so
                the call must not be sent (llmctx fails closed).
            ConfigError: an amount that is not finite or beyond +-2**62.
        """
        account = self._account(budget)
        for _ in range(3):
            member, args = self._reserve_args(amount, budget, account)
            reply = self._reserve_script.run("reserve", account.reserve, *args)
            token = self._reserved(reply, member, amount, budget, account)
            if token is not None:
                return token
        raise StoreError(f"{self!r}: the server's clock keeps leaving the calendar window")

    async def areserve(self, amount: Amount, budget: Budget) -> str:
        """Async twin of :meth:`reserve` on ``redis.asyncio`` (one round trip, same errors).

        Cancellation: a cancelled areserve leaks no connection; what its script may have held
        is released by a task of this ledger (:meth:`aclose` waits for it). If that release
        cannot reach Redis, or reaches it before the cancelled script does, the reservation
        is never renewed: it expires ``reservation_ttl`` later and counts as spent at its
        reserved amount (never less).
        """
        account = self._account(budget)
        member: str | None = None  # the one in flight
        ended = False  # a reply was read, or an error the caller sees (as for reserve)
        try:
            for _ in range(3):
                member, args = self._reserve_args(amount, budget, account)
                try:
                    reply = await self._reserve_script.arun("reserve", account.reserve, *args)
                except Exception:
                    ended = True
                    raise
                ended = True
                token = self._reserved(reply, member, amount, budget, account)
                if token is not None:
                    return token
                ended = False
        finally:
            if not ended and member is not None:  # cancelled while the script was in flight
                self._undo_reserve(account, member, budget.window)
        raise StoreError(f"{self!r}: the server's clock keeps leaving the calendar window")

    def _undo_reserve(self, account: _Account, member: str, window: BudgetWindow | None) -> None:
        """Release, in a task, every member a reserve interrupted mid-flight may have held."""
        if window is None:
            members = [member]
        else:
            # The script picked the window by the server's clock: try the client's current
            # window and its neighbours (a release of a member never held is a no-op).
            now = int(time.time() * 1000)
            first, after = window.bounds(now)
            starts = {first, window.bounds(first - 1)[0], window.bounds(after)[0]}
            members = [f"{start}|{member}" for start in sorted(starts)]
        packed = _pack7(self._audit, 0, 0, 0, 0, 0, 0)

        async def release() -> None:
            for one in members:
                await self._finish_script.arun("release", account.finish, packed + one.encode())

        self._soon(release, "release a cancelled reservation", None)

    def _soon(
        self,
        job: Callable[[], Awaitable[None]],
        doing: str,
        on_error: Callable[[Exception], object] | None,
    ) -> None:
        """Run ``job`` in a task of this ledger (its caller was interrupted); never raises.

        A job that fails is handed to ``on_error``, or logged: its reservation then expires
        and counts as spent at its reserved amount.
        """

        async def run() -> None:
            try:
                await job()
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                    return
                logger.warning(
                    "llmctx: could not %s on %r; it expires %gs after its last renewal and "
                    "then counts as spent at its reserved amount",
                    doing,
                    self,
                    self.reservation_ttl,
                    exc_info=True,
                )

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop any more: the reservation expires (never renewed)
            return
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _soon_finish(
        self,
        account: _Account,
        packed: bytes,
        member: str,
        doing: str,
        on_error: Callable[[Exception], object] | None = None,
    ) -> None:
        """Run the settle or release script for ``member`` in a task (see :meth:`_soon`)."""

        async def finish() -> None:
            await self._finish_script.arun(doing, account.finish, packed + member.encode())

        self._soon(finish, f"{doing} a reservation", on_error)

    def settle_soon(
        self,
        token: str,
        actual: Amount,
        *,
        on_error: Callable[[Exception], object] | None = None,
    ) -> None:
        """Settle ``token`` in a task of this ledger, for a caller that was cancelled.

        Returns at once; :meth:`aclose` waits for the settle. Applied twice (a cancelled
        settle that reached Redis after all), it counts once.

        Args:
            on_error: called with the error if the settle cannot reach Redis (default: logged;
                the reservation then counts as spent at its reserved amount once it expires).
        """
        packed = self._finish_args(1, actual)
        account, member = self._account_of(token)
        self._renewal.discard(token)
        self._soon_finish(account, packed, member, "settle", on_error)

    def release_soon(self, token: str) -> None:
        """Release ``token`` in a task of this ledger, for a caller that was cancelled."""
        packed = self._finish_args(0, Amount())
        account, member = self._account_of(token)
        self._renewal.discard(token)
        self._soon_finish(account, packed, member, "release")

    def _finish_args(self, settle: int, actual: Amount) -> bytes:
        if not settle:
            return _pack7(self._audit, 0, 0, 0, 0, 0, 0)
        return _pack7(self._audit, 1, _to_nano(actual.usd, ROUND_HALF_UP), *_counts(actual))

    @protected
    def settle(self, token: str, actual: Amount) -> None:
        """Replace the reservation by the actual spend (usd rounded half-up to the nano-dollar).

        The spend goes to the window the reservation was taken in. A reservation that expired
        and was swept (counted as spent at its reserved amount) has that amount replaced by
        ``actual``: the spend changes by ``actual - reserved``. Unknown, settled or released
        tokens are a no-op, so a retry is harmless and a settle applied twice counts once.

        Raises:
            StoreError: Redis could not be reached; the spend was not recorded. The
                reservation is no longer renewed: it expires ``reservation_ttl`` after its last
                renewal and then counts as spent at its reserved amount, until this settle is
                applied (retrying it later is safe).
        """
        self._check_open()
        packed = self._finish_args(1, actual)
        account, member = self._account_of(token)
        self._renewal.discard(token)
        self._finish_script.run("settle", account.finish, packed + member.encode())

    async def asettle(self, token: str, actual: Amount) -> None:
        """Async twin of :meth:`settle` (one round trip on ``redis.asyncio``, same errors).

        Cancellation: the settle may or may not have reached Redis; the reservation is no
        longer renewed either way (so, unsettled, it counts as spent once it expires), and a
        settle retried later counts once.
        """
        await self._afinish("settle", token, self._finish_args(1, actual))

    async def _afinish(self, doing: str, token: str, packed: bytes) -> None:
        # The awaited finish (settle or release) of ``token``: one round trip; cancelled in
        # flight, a task of this ledger sends it again (applied twice, it counts once).
        self._check_open()
        account, member = self._account_of(token)
        self._renewal.discard(token)
        ended = False
        try:
            await self._finish_script.arun(doing, account.finish, packed + member.encode())
        except Exception:  # the caller sees it (Holds keeps a settle in the outbox)
            ended = True
            raise
        else:
            ended = True
        finally:
            if not ended:  # cancelled in flight: whether Redis applied it is unknown
                self._soon_finish(account, packed, member, doing)

    @protected
    def release(self, token: str) -> None:
        """Drop the reservation without spending. Unknown or finished tokens: no-op.

        A reservation that already expired and was swept stays spent at its reserved amount.

        Raises:
            StoreError: Redis could not be reached; the reservation is no longer renewed and
                counts as spent once it expires.
        """
        self._check_open()
        account, member = self._account_of(token)
        self._renewal.discard(token)
        packed = self._finish_args(0, Amount())
        self._finish_script.run("release", account.finish, packed + member.encode())

    async def arelease(self, token: str) -> None:
        """Async twin of :meth:`release` (same errors; a cancelled one: as for asettle)."""
        await self._afinish("release", token, self._finish_args(0, Amount()))

    def _snapshot_args(self, budget: Budget | None, account: _Account) -> bytes:
        window = None if budget is None else budget.window
        return _pack4(self._audit, *account.window_args(window))

    def _snapshot_of(self, reply: Any) -> LedgerSnapshot:
        values = [_value(i % 5, reply[i]) for i in range(15)]
        return LedgerSnapshot(
            Amount(*values[0:5]),  # type: ignore[arg-type]
            Amount(*values[5:10]),  # type: ignore[arg-type]
            int(reply[15]),
            Amount(*values[10:15]),  # type: ignore[arg-type]
        )

    def snapshot(self, budget: Budget | None = None) -> LedgerSnapshot:
        """Spend and live reservations of every process, read atomically.

        Args:
            budget: read this budget's account in its current window (default: the ledger's
                own account). ``reservations`` counts the account's live reservations in
                every window; ``reserved`` those of the current one.

        Expired reservations are swept first (bounded work), so the snapshot counts the
        holds of vanished processes as spent once their ttl has passed; that part of
        ``spent`` is also in ``expired``.

        Raises:
            StoreError: Redis could not be reached.
        """
        self._check_open()
        account = self._own if budget is None else self._account(budget)
        for _ in range(3):
            packed = self._snapshot_args(budget, account)
            reply = self._snapshot_script.run("read", account.snapshot, packed)
            if int(reply[0]) == 2 and len(reply) == 2:
                assert budget is not None and budget.window is not None
                account.bounds = budget.window.bounds(int(reply[1]))
                continue
            return self._snapshot_of(reply)
        raise StoreError(f"{self!r}: the server's clock keeps leaving the calendar window")

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
        """Set the settled spend of the ledger's own account, but only when it is empty.

        The state in Redis is authoritative for a shared budget: when the ledger already has
        settled spend or live reservations (another process is using it, or this budget was
        resumed before), this is a no-op. Empty means no spend and nothing in flight (a new
        ledger, or one after :meth:`reset`). Call :meth:`reset` first to overwrite it. The
        accounts of keys are never restored: their spend lives in Redis.

        Raises:
            StoreError: Redis could not be reached.
        """
        self._check_open()
        packed = _pack5(
            _to_nano(spent.usd, ROUND_HALF_UP),
            _checked(spent.tokens),
            _checked(spent.requests),
            _checked(spent.calls),
            _checked(spent.tool_calls),
        )
        self._restore_script("restore", packed)

    # -- administration -------------------------------------------------------------------------

    def reset(self) -> None:
        """Delete this budget's keys (every account of it): spend, reservations and audit log
        start from zero.

        Raises:
            StoreError: Redis could not be reached.
        """
        self._check_open()
        self._renewal.clear()
        client = self._client

        def glob(text: str) -> str:  # SCAN reads [ ] * ? \ as glob characters
            return "".join(f"\\{c}" if c in "[]?*\\" else c for c in text)

        own, named = glob(self._base), glob(f"{{{self.prefix}:{self.name}#")
        keys: set[Any] = set(self._keys)
        for pattern in (f"{own}:*", f"{named}*}}:*"):
            keys.update(self._conn.run("reset", lambda p=pattern: list(client.scan_iter(p))))
        self._conn.run("reset", client.delete, *keys)

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

    async def aclose(self) -> None:
        """:meth:`close`, after closing the async client this ledger opened for this loop and
        letting the releases of cancelled reserves finish."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._conn.aclose()
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

    @staticmethod
    def _thresholds(budget: Budget) -> tuple[int, ...]:
        out: list[int] = []
        for i, value in enumerate(budget.warn_thresholds()):
            if value is None:
                out.append(-1)
            elif i == 0:
                nano = Decimal(value).scaleb(9, _WIDE).to_integral_value(ROUND_CEILING, _WIDE)
                out.append(min(int(nano), _INT_MAX))
            else:
                out.append(min(int(value), _INT_MAX))
        return tuple(out)

    def _renew_tokens(self, tokens: list[str]) -> Any:
        by_account: dict[str, list[str]] = {}
        for token in tokens:
            base, _, member = token.rpartition(" ")
            by_account.setdefault(base, []).append(member)
        gone: list[str] = []
        packed = _pack1(self._ttl_ms)
        for base, members in by_account.items():
            account = self._own if not base else self._account_at(base, None)
            head = self._renew_script.head((account.held.encode(),))
            for raw in self._renew_script.run("renew", head, packed, *members):
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                gone.append(f"{base} {member}" if base else member)
        return gone

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
