"""llmctx: every resource of an LLM application inside a context manager.

The public surface lives here; the modules behind it are private except the namespaces users
import on purpose (``llmctx.stores``, ``llmctx.testing``, ``llmctx.mcp``).
"""

from __future__ import annotations

from ._budget import Amount, Budget, BudgetWarning, Ledger, LedgerSnapshot, MemoryLedger
from ._charge import CallConsumer, CallTracker, add_call_consumer, track_call
from ._context import ContextThreadPoolExecutor, current_session, wrap
from ._exceptions import (
    BudgetExceeded,
    BudgetOverrun,
    ConfigError,
    LLMCtxError,
    LLMCtxWarning,
    NoHealthyResource,
    PriceError,
    SessionNotFound,
    SessionStateError,
    StoreError,
    UnknownPrice,
    UnknownPriceWarning,
    UsageError,
)
from ._interrupt import deferring as defer_interrupts
from ._limits import (
    AcquireTimeout,
    RateLimiter,
    RateLimiterStatistics,
    Reservation,
    WouldBlock,
)
from ._monitor import MonitorResult, monitor, timed
from ._pool import Lease, PoolStatistics, ResourcePool
from ._pricing import ModelPrice, clear_prices, lookup_price, price_override, price_usage, set_price
from ._recorder import PromptResponse, Recorder, record
from ._redact import redact
from ._redis import RedisLeaseStore, RedisLedger, RedisRateStore
from ._session import Session, session
from ._tokens import TokenCount, count_tokens, register_tokenizer
from ._usage import CallRecord, Usage, normalize_usage
from ._version import __version__
from .providers import instrument, is_instrumented, local_model, local_model_pool, uninstrument

__all__ = [
    "__version__",
    "AcquireTimeout",
    "Amount",
    "Budget",
    "BudgetExceeded",
    "BudgetOverrun",
    "BudgetWarning",
    "CallConsumer",
    "CallRecord",
    "CallTracker",
    "ConfigError",
    "ContextThreadPoolExecutor",
    "Lease",
    "Ledger",
    "LedgerSnapshot",
    "LLMCtxError",
    "LLMCtxWarning",
    "MemoryLedger",
    "ModelPrice",
    "MonitorResult",
    "NoHealthyResource",
    "PoolStatistics",
    "PriceError",
    "PromptResponse",
    "RateLimiter",
    "RateLimiterStatistics",
    "Recorder",
    "RedisLeaseStore",
    "RedisLedger",
    "RedisRateStore",
    "Reservation",
    "ResourcePool",
    "Session",
    "SessionNotFound",
    "SessionStateError",
    "StoreError",
    "TokenCount",
    "UnknownPrice",
    "UnknownPriceWarning",
    "Usage",
    "UsageError",
    "WouldBlock",
    "add_call_consumer",
    "clear_prices",
    "count_tokens",
    "current_session",
    "defer_interrupts",
    "instrument",
    "is_instrumented",
    "local_model",
    "local_model_pool",
    "lookup_price",
    "monitor",
    "normalize_usage",
    "price_override",
    "price_usage",
    "record",
    "redact",
    "register_tokenizer",
    "session",
    "set_price",
    "timed",
    "track_call",
    "uninstrument",
    "wrap",
]
