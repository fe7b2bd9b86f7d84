"""Everything llmctx keeps in Redis, under one convention.

- :mod:`.ledger`: :class:`RedisLedger`, a budget ledger shared across processes.
- :mod:`.rate`: :class:`RedisRateStore`, the GCRA state of a shared rate limit.
- :mod:`.lease`: :class:`RedisLeaseStore`, the leases of a shared resource pool.
- :mod:`._client`: the convention they share: a ``redis.Redis`` client or a URL, the server
  described without its password, every redis-py error raised as ``StoreError``.
- :mod:`._script`: ``_Script``, the one way Lua reaches Redis (``EVALSHA``, reloaded after
  ``NOSCRIPT``).

Nothing here imports redis-py at import time: a store imports it when it is built, so
``import llmctx`` stays cheap without the ``redis`` extra.
"""

from __future__ import annotations

from .lease import RedisLeaseStore
from .ledger import RedisLedger
from .rate import RedisRateStore

__all__ = ["RedisLeaseStore", "RedisLedger", "RedisRateStore"]
