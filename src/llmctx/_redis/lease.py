"""A ResourcePool's leases in Redis, so several processes share its capacity.

:class:`RedisLeaseStore` is a :class:`~llmctx._pool.LeaseStore`: the pool keeps its FIFO
queue and its view of each resource's free units in the process and asks the store, under its
lock, for a lease on the resource with the most free units across every process.

Taking and giving back are :func:`~llmctx._interrupt.protected` (as are the pool's callers): a
Ctrl-C landing between Redis's reply and the lease that records it waits until the lease owns
its member (and the heartbeat renews it), so the release deletes it like any other.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError
from .._interrupt import protected
from ._client import _ClosesOnExit, _Connection, _Renewal
from ._script import _Script

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["RedisLeaseStore"]

logger = logging.getLogger("llmctx.pool")

# Times are Redis server milliseconds. KEYS[1]: the sorted set of leases, member
# "SLOT:AMOUNT:TOKEN", score = expiry. Acquire ARGV: amount, ttl_ms, token, then pairs of
# (slot, capacity) for the slots the caller may use. Returns the slot chosen, or -1.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local used = {}
for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
  local slot, amount = string.match(m, '^(%d+):(%d+):')
  used[slot] = (used[slot] or 0) + tonumber(amount)
end
local n = tonumber(ARGV[1])
local best, bestfree = nil, -1
for i = 4, #ARGV, 2 do
  local free = tonumber(ARGV[i + 1]) - (used[ARGV[i]] or 0)
  if free >= n and free > bestfree then best, bestfree = ARGV[i], free end
end
if not best then return -1 end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', key, expiry, best .. ':' .. ARGV[1] .. ':' .. ARGV[3])
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', key, math.max(expiry, tonumber(top[2])) + 1000)
return tonumber(best)
"""

# ARGV: ttl_ms, then the members to renew. Returns the members that had already expired.
_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local expiry = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', key, ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', key, 'XX', expiry, ARGV[i])
  else
    redis.call('ZREM', key, ARGV[i])
    table.insert(lost, ARGV[i])
  end
end
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', key, tonumber(top[2]) + 1000) end
return lost
"""


class RedisLeaseStore(_ClosesOnExit):
    """Leases of a :class:`~llmctx.ResourcePool` in Redis, so several processes share capacity.

    Each process builds its pool with the same resources (in the same order: a resource is
    known by its position), the same capacities and a store with the same ``name``. Leases
    live in the sorted set ``{llmctx:pool:NAME}:leases`` (hash-tagged for Redis Cluster),
    scored by their expiry in Redis's own clock, so machines' clocks need not agree. Taking a
    lease is one ``EVALSHA`` round trip that first drops expired leases; releasing is one
    ``ZREM``.

    **Renewal.** While this process holds leases, one daemon heartbeat thread per store renews
    all of them every ``renew_every`` seconds in one round trip, so a lease never expires
    under a live holder. A holder that dies (even with SIGKILL) stops renewing, and its
    capacity comes back ``lease_ttl`` seconds after the last renewal at most. A lease found
    expired at renewal (the process stalled longer than ``lease_ttl``, or Redis was
    unreachable) is logged as lost on the ``llmctx.pool`` logger and counted in ``lost``:
    its capacity may already serve another holder. A renewal that cannot reach Redis is
    tried again at the next beat and logged once per outage. A forked child renews only the
    leases it takes itself. The heartbeat is the one :class:`~llmctx.RedisLedger` uses for
    its reservations.

    **Waiting.** A release in this process hands capacity to this process's waiters at once.
    Releases by other processes are not announced: the head waiter looks again every
    ``poll_interval`` seconds (on a timer; the waiting task is woken only once granted).

    Args:
        client_or_url: a synchronous ``redis.Redis`` or ``redis.cluster.RedisCluster``
            client (``decode_responses`` either way; not closed by the store) or a URL such as
            ``"redis://localhost:6379/0"`` or ``"redis+cluster://host:7000"`` (the
            store owns that client and closes it in :meth:`close`).
        name: the shared pool's name.
        lease_ttl: seconds a lease survives without renewal (default 30).
        renew_every: seconds between renewals (default ``lease_ttl / 3``); must be below
            ``lease_ttl``.
        poll_interval: seconds between looks at Redis while waiting (default 0.05).

    Raises:
        ConfigError: an empty name, or a ttl / interval that is not a positive number, or
            ``renew_every >= lease_ttl``; redis not installed, a bad URL or a client that is
            not a synchronous ``redis.Redis``.

    A Redis that cannot be reached or refuses a script raises :class:`~llmctx.StoreError`
    from the pool call that needed it (nothing was leased by a failed take).
    """

    def __init__(
        self,
        client_or_url: redis.Redis | redis.cluster.RedisCluster | str,
        name: str,
        *,
        lease_ttl: float = 30.0,
        renew_every: float | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("RedisLeaseStore(name=...) must be a non-empty string")
        for label, value in (("lease_ttl", lease_ttl), ("poll_interval", poll_interval)):
            if not _positive(value):
                raise ConfigError(f"RedisLeaseStore({label}={value!r}) must be seconds > 0")
        if renew_every is None:
            renew_every = lease_ttl / 3
        if not _positive(renew_every) or renew_every >= lease_ttl:
            raise ConfigError(
                f"RedisLeaseStore(renew_every={renew_every!r}) must be seconds > 0 and below "
                f"lease_ttl={lease_ttl!r}, or the lease expires between renewals"
            )
        self.name = name
        self.key = f"{{llmctx:pool:{name}}}:leases"
        self.lease_ttl = float(lease_ttl)
        self.renew_every = float(renew_every)
        self.poll_interval = float(poll_interval)
        self._ttl_ms = max(1, round(self.lease_ttl * 1000))
        self._conn = _Connection(
            client_or_url,
            owner="RedisLeaseStore",
            subject=f"resource pool {name!r}",
            consequences={
                "take": "no lease was taken",
                "release": f"the lease expires after {self.lease_ttl:g}s",
                "renew": "the leases were not renewed; they expire unless a later renewal "
                "reaches Redis",
                "clear": "the leases were not deleted",
            },
            refused_fix=f"check that the key {self.key!r} is not used by something else",
        )
        #: The redis-py client the store uses.
        self.client: Any = self._conn.client
        keys = (self.key.encode(),)
        self._acquire = _Script(self._conn, _ACQUIRE_LUA, keys)
        self._renew = _Script(self._conn, _RENEW_LUA, keys)
        self._owner = os.urandom(8).hex()
        self._counter = itertools.count(1)
        self._renewal = _Renewal(
            self._renew_members,
            every=self.renew_every,
            on_lost=self._report_lost,
            logger=logger,
            what=f"pool leases in {name!r}",
            thread_name=f"llmctx-lease-heartbeat-{name}",
        )

    def __repr__(self) -> str:
        return (
            f"<RedisLeaseStore {self.name!r} lease_ttl={self.lease_ttl} "
            f"server={self._conn.where!r}>"
        )

    @protected
    def take(self, amount: int, slots: Sequence[tuple[int, int]]) -> tuple[int, str] | None:
        """Lease ``amount`` units on the slot (of ``(slot, capacity)`` pairs) with most free.

        Returns:
            ``(slot, member)``, or None when no slot has ``amount`` free units now.

        Raises:
            StoreError: Redis could not be reached or refused the script; nothing was leased.
        """
        token = f"{self._owner}-{next(self._counter)}"
        args: list[Any] = [amount, self._ttl_ms, token]
        for key, capacity in slots:
            args.append(key)
            args.append(capacity)
        slot = int(self._acquire("take", *args))
        if slot < 0:
            return None
        member = f"{slot}:{amount}:{token}"
        self._renewal.add(member)
        return slot, member

    @protected
    def give_back(self, member: str) -> None:
        """Delete one lease (a release).

        Raises:
            StoreError: Redis could not be reached; the lease expires after ``lease_ttl``.
        """
        self._renewal.discard(member)
        self._conn.run("release", self.client.zrem, self.key, member)

    @property
    def lost(self) -> int:
        """Leases of this process found expired at renewal since the store was created."""
        return self._renewal.lost

    def renew(self) -> int:
        """Renew every lease this process holds now; returns how many were found lost.

        Raises:
            StoreError: Redis could not be reached; nothing was renewed.
        """
        return len(self._renewal.renew())

    def _renew_members(self, members: list[str]) -> Any:
        return self._renew("renew", self._ttl_ms, *members)

    def _report_lost(self, member: str) -> None:
        logger.warning(
            "llmctx: pool lease %s in %r expired before it was renewed; its "
            "capacity may serve another holder. Raise lease_ttl",
            member,
            self.name,
        )

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the heartbeat (leases still held then expire after ``lease_ttl``).

        A client the store made from a URL is closed once the heartbeat has stopped. Closing
        twice is harmless.
        """
        self._renewal.stop(timeout)
        self._conn.close()

    def clear(self) -> None:
        """Delete every lease of this pool name, in every process (for tests and resets).

        Raises:
            StoreError: Redis could not be reached.
        """
        self._conn.run("clear", self.client.delete, self.key)


def _positive(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )
