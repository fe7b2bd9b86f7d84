"""Every error llmctx raises on purpose derives from one root, :class:`LLMCtxError`.

The tree::

    LLMCtxError
    ├── ConfigError (also ValueError)       bad input: a negative budget, a malformed DSN, ...
    ├── UsageError (also RuntimeError)       an object used out of order: a limiter
    │   │                                    reservation settled before it was admitted, a
    │   │                                    pool lease or a hub used outside its block, ...
    │   └── SessionStateError                a session used out of order: entered twice,
    │                                        resumed while completed, ...
    ├── SessionNotFound (also KeyError)      resume/show of an id the store does not have
    ├── StoreError                           the store could not be opened or written
    ├── PriceError
    │   └── UnknownPrice                     no price for a model while a money budget is active
    ├── BudgetExceeded                       a reservation would take a budget past its limit
    ├── WouldBlock                           acquire_nowait() of a limiter or pool cannot proceed
    │                                        (``retry_after`` says when it could)
    ├── AcquireTimeout (also TimeoutError)   a limiter or pool wait ran past its timeout
    │                                        (both defined in _waiting.py, which the two share)
    ├── NoHealthyResource                    every resource of a pool failed its health check
    │                                        and none can be replaced
    └── MCPHubError                          llmctx.mcp's errors (tree in mcp/_errors.py)

Warnings: ``LLMCtxWarning`` (a UserWarning) and its children ``UnknownPriceWarning``, issued once
per model when a call cannot be priced and no money budget is active (its cost is then None),
and ``BudgetOverrun``, issued once per call that used more than it reserved (charged in full).

Messages say what happened and what to do next. Cancellation and KeyboardInterrupt are never
wrapped: they pass through llmctx untouched.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from ._money import format_usd
from ._redact import redact_text

__all__ = [
    "BudgetExceeded",
    "BudgetOverrun",
    "ConfigError",
    "LLMCtxError",
    "LLMCtxWarning",
    "NoHealthyResource",
    "PriceError",
    "SessionNotFound",
    "SessionStateError",
    "StoreError",
    "UnknownPrice",
    "UnknownPriceWarning",
    "UsageError",
]


def is_cancellation(exc_type: type[BaseException] | None) -> bool:
    """True for every flavour of "stopped from outside": asyncio, trio and anyio cancellation,
    KeyboardInterrupt, SystemExit, GeneratorExit (sessions and calls record them as cancelled).
    """
    if exc_type is None:
        return False
    if issubclass(
        exc_type, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit
    ):
        return True
    # trio's and anyio's cancellation classes are not importable without their loops; match
    # them by name.
    return exc_type.__name__ == "Cancelled"


class LLMCtxError(Exception):
    """Root of every error llmctx raises on purpose."""


class ConfigError(LLMCtxError, ValueError):
    """Bad input from the caller: the message names the argument and the fix."""


class UsageError(LLMCtxError, RuntimeError):
    """An llmctx object was used out of order: misuse of the API, not a runtime failure.

    Also a ``RuntimeError``, the builtin Python raises for the same kind of mistake.
    """


class SessionStateError(UsageError):
    """A session was used out of order (entered twice, resumed after completion, ...)."""


class SessionNotFound(LLMCtxError, KeyError):
    """No session with that id (or name, for ``session.resume``) exists in the store."""

    def __init__(
        self, session_id: str, where: str = "the store", *, message: str | None = None
    ) -> None:
        self.session_id = session_id
        super().__init__(
            message
            or f"no session with id {session_id!r} in {where}; "
            "`llmctx sessions ls` lists the ids that exist"
        )

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class StoreError(LLMCtxError):
    """The store could not be opened, read or written."""


class PriceError(LLMCtxError):
    """A price could not be determined or applied."""


class UnknownPrice(PriceError):
    """No price is known for a model while a money budget is active (llmctx fails closed)."""

    def __init__(
        self, model: str, provider: str | None = None, service_tier: str | None = None
    ) -> None:
        self.model = model
        self.provider = provider
        #: The service tier the request asked for, when the model has no price at it.
        self.service_tier = service_tier
        where = f" from provider {provider!r}" if provider else ""
        if service_tier is not None:
            super().__init__(
                f"no {service_tier!r} service-tier price is known for model {model!r}{where}, "
                "and a money budget is active, so the call was not sent (llmctx never prices "
                "a tier at the standard rate). Set one with "
                f"llmctx.set_price({model!r}, input_per_mtok=..., output_per_mtok=..., "
                f"service_tiers={{{service_tier!r}: {{'input_per_mtok': ..., "
                "'output_per_mtok': ...}}), or send the request without that tier"
            )
            return
        super().__init__(
            f"no price is known for model {model!r}{where}, and a money budget is active, "
            "so the call was not sent (llmctx never prices an unknown model at $0). Set one with "
            f"llmctx.set_price({model!r}, input_per_mtok=..., output_per_mtok=...)"
        )


class NoHealthyResource(LLMCtxError):
    """Every resource of a :class:`~llmctx.ResourcePool` failed its health check (quarantined)
    and none can come back: the pool has no ``factory``, or the factory kept failing. Waiting
    would never end, so waiters and new acquires get this at once."""


class BudgetExceeded(LLMCtxError):
    """A reservation would take a budget past its limit; nothing was sent.

    Attributes:
        dimension: ``"usd"``, ``"tokens"`` or ``"requests"``.
        limit: the budget's limit in that dimension.
        spent: what settled calls have used so far.
        reserved: what calls in flight hold.
        requested: what the refused call asked for.
        session_id: the session whose budget refused it (may be an ancestor).
        budget: the :class:`~llmctx.Budget` that refused it.
        request: a copy of the refused request's body (OpenAI and Anthropic SDK calls), for a
            ``Budget(on_exceed=...)`` to change.
    """

    def __init__(
        self,
        *,
        dimension: str,
        limit: Decimal | int,
        spent: Decimal | int,
        reserved: Decimal | int,
        requested: Decimal | int,
        session_id: str | None = None,
        session_name: str | None = None,
    ) -> None:
        self.dimension = dimension
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.session_id = session_id
        self.session_name = session_name
        #: The budget that refused (set by the charge path), and a copy of the refused
        #: request's body where the provider has one (for ``Budget(on_exceed=...)``).
        self.budget: Any = None
        self.request: dict[str, Any] | None = None
        super().__init__(dimension, limit, spent, reserved, requested)

    def __str__(self) -> str:
        # Built on demand: the charge path fills in the session after the ledger refused.
        fmt = format_usd if self.dimension == "usd" else str
        label = {"usd": "money", "tokens": "token", "requests": "request"}.get(
            self.dimension, self.dimension
        )
        who = self.session_name or self.session_id
        # A session name is the user's free text: it may quote a key.
        of = f" of session {redact_text(who)!r}" if who else ""
        return (
            f"{label} budget{of} exceeded before sending: limit {fmt(self.limit)}, "
            f"spent {fmt(self.spent)}, reserved by calls in flight {fmt(self.reserved)}, "
            f"this call needs up to {fmt(self.requested)}. Raise the budget, lower max_tokens, "
            "or start a new session"
        )

    @property
    def remaining(self) -> Decimal | int:
        """What is left for new calls: limit - spent - reserved (never below zero)."""
        left = self.limit - self.spent - self.reserved
        return left if left > 0 else type(left)(0)


class LLMCtxWarning(UserWarning):
    """Root of llmctx's warnings."""


class UnknownPriceWarning(LLMCtxWarning):
    """A call could not be priced; its cost is None (no money budget was active)."""


class BudgetOverrun(LLMCtxWarning):
    """A call used more than it reserved (a provider over-reported, or a price rose mid-call).

    It is charged in full, so the budget may now be past its limit; the next reservation is
    refused. ``reserved`` and ``used`` are :class:`~llmctx.Amount` values.
    """

    def __init__(self, message: str, *, reserved: Any = None, used: Any = None) -> None:
        super().__init__(message)
        self.reserved = reserved
        self.used = used
