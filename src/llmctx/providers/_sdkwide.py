"""SDK-wide instrumentation: patch the SDK classes, so every client in the process is charged.

``llmctx.instrument()`` replaces the one method each SDK sends every model call through, on
the SDK's base class (``openai._base_client.SyncAPIClient.request`` and its async twin,
Anthropic's two, ``google.genai._api_client.BaseApiClient``'s four request methods,
``llama_cpp.Llama``'s two completion methods and ``generate``). Every client is covered:
made before or after, by user code or inside a framework, sync or async, and the copies
``with_options()`` makes. Outside any session, ``record()`` block and tracer, a patched
method checks two context variables and calls the original.

An SDK is patched all at once or not at all: its version is checked against the range llmctx
is tested with, and every attribute is looked up, before the first one is replaced.
``uninstrument()`` puts back exactly what was there.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from .._exceptions import ConfigError
from ._base import LimiterLike, idle
from ._sdk import _CHARGING, Adapter, charge_async, charge_sync, feedback_process, mark_wrappers

__all__ = [
    "SUPPORTED_SDKS",
    "Instrumentation",
    "active_sdks",
    "instrument_sdks",
    "uninstrument_sdks",
]

logger = logging.getLogger("llmctx")


@dataclass(frozen=True, slots=True)
class _SDK:
    name: str
    module: str
    distribution: str
    minimum: tuple[int, ...]
    below: tuple[int, ...]
    install: str
    # Patched by a bare instrument() only when already imported (importing it is slow).
    only_if_imported: bool = False

    @property
    def range(self) -> str:
        low = ".".join(map(str, self.minimum))
        high = ".".join(map(str, self.below))
        return f"{self.distribution}>={low},<{high}"


#: What ``instrument()`` can patch, by name, with the versions llmctx supports.
SUPPORTED_SDKS: Final = {
    sdk.name: sdk
    for sdk in (
        _SDK("openai", "openai", "openai", (3, 54), (4,), "pip install 'llmctx[openai]'"),
        _SDK(
            "anthropic", "anthropic", "anthropic", (2, 12), (3,), "pip install 'llmctx[anthropic]'"
        ),
        _SDK(
            "google-genai",
            "google.genai",
            "google-genai",
            (3, 0),
            (4,),
            "pip install 'llmctx[google]'",
        ),
        _SDK(
            "llama-cpp",
            "llama_cpp",
            "llama_cpp_python",
            (0, 3, 36),
            (0, 4),
            "pip install 'llmctx[local]'",
        ),
        _SDK("litellm", "litellm", "litellm", (1, 80), (2,), "pip install litellm", True),
    )
}

_ALIASES: Final = {
    "google": "google-genai",
    "google_genai": "google-genai",
    "google.genai": "google-genai",
    "genai": "google-genai",
    "llama_cpp": "llama-cpp",
    "llama-cpp-python": "llama-cpp",
    "llama_cpp_python": "llama-cpp",
}


@dataclass(slots=True)
class _ClassPatch:
    owner: Any  # a class, or a module (litellm's entry points)
    attr: str
    had: bool
    previous: Any


@dataclass(slots=True)
class _Active:
    """One patched SDK: its limiter (read by the wrappers at each call) and how to undo it."""

    limiter: LimiterLike | None
    patches: list[_ClassPatch] = field(default_factory=list)


_active: dict[str, _Active] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Instrumentation:
    """What :func:`llmctx.instrument` patched SDK-wide: ``sdks`` names them.

    ``uninstrument()`` (or leaving it as a ``with`` block) puts those SDKs back; calling it
    twice is harmless.
    """

    sdks: tuple[str, ...]

    def uninstrument(self) -> bool:
        """Undo the patches of :attr:`sdks`; True if any was still in place."""
        return uninstrument_sdks(self.sdks) if self.sdks else False

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SUPPORTED_SDKS:
        raise ConfigError(
            f"llmctx.instrument({name!r}): not a supported SDK; the supported ones are "
            + ", ".join(repr(n) for n in SUPPORTED_SDKS)
            + " (or pass a client instance)"
        )
    return key


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _installed_version(sdk: _SDK, module: Any) -> str | None:
    try:
        return importlib.metadata.version(sdk.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None)
        return version if isinstance(version, str) else None


def _targets(sdk: _SDK, module: Any) -> list[tuple[Any, str]]:
    """Every (class, attribute) the SDK's patch replaces; raises if one is missing."""
    if sdk.name in {"openai", "anthropic"}:
        base = importlib.import_module(f"{sdk.module}._base_client")
        return [
            (base.SyncAPIClient, "request"),
            (base.AsyncAPIClient, "request"),
            (base.SyncAPIClient, "_process_response"),
            (base.AsyncAPIClient, "_process_response"),
        ]
    if sdk.name == "google-genai":
        from .google_genai import CLASS_METHODS

        api_client = importlib.import_module("google.genai._api_client")
        return [(api_client.BaseApiClient, name) for name in CLASS_METHODS]
    if sdk.name == "litellm":
        from ..integrations.litellm import ENTRY_POINTS

        # The package's own entry points (a dispatcher over litellm.main's, which it
        # captured at import): what users and frameworks call as litellm.completion.
        return [(module, name) for name in ENTRY_POINTS]
    return [
        (module.Llama, "create_chat_completion"),
        (module.Llama, "create_completion"),
        (module.Llama, "generate"),
    ]


def _wrappers(
    sdk: _SDK, originals: dict[str, Callable[..., Any]], active: _Active
) -> dict[str, Callable[..., Any]]:
    def get_limiter() -> LimiterLike | None:
        return active.limiter

    if sdk.name == "google-genai":
        from .google_genai import class_wrappers

        return class_wrappers(originals, get_limiter)
    if sdk.name == "litellm":
        from ..integrations.litellm import wrappers as litellm_wrappers

        return litellm_wrappers(importlib.import_module("litellm"), originals, get_limiter)
    if sdk.name == "llama-cpp":
        from .llama_cpp import class_wrappers as llama_wrappers

        return llama_wrappers(originals, get_limiter)
    adapter: Adapter
    if sdk.name == "openai":
        from .openai import OpenAIAdapter

        adapter = OpenAIAdapter()
    else:
        from .anthropic import AnthropicAdapter

        adapter = AnthropicAdapter()
    sync_request = originals["SyncAPIClient.request"]
    async_request = originals["AsyncAPIClient.request"]

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = active.limiter
        if (limiter is None and idle()) or _CHARGING.get():
            return sync_request(self, *args, **kwargs)
        return charge_sync(sync_request.__get__(self), adapter, limiter, args, kwargs)

    async def arequest(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = active.limiter
        if (limiter is None and idle()) or _CHARGING.get():
            return await async_request(self, *args, **kwargs)
        return await charge_async(async_request.__get__(self), adapter, limiter, args, kwargs)

    wrappers: dict[str, Callable[..., Any]] = {
        "SyncAPIClient.request": request,
        "AsyncAPIClient.request": arequest,
    }
    if active.limiter is not None:
        for key in ("SyncAPIClient._process_response", "AsyncAPIClient._process_response"):
            process = feedback_process(originals[key], get_limiter, adapter)
            wrappers[key] = process
    return mark_wrappers(wrappers, originals)


def _key(sdk: _SDK, owner: Any, attr: str) -> str:
    return f"{owner.__name__}.{attr}" if sdk.name in {"openai", "anthropic"} else attr


def _patch(sdk: _SDK, module: Any, limiter: LimiterLike | None) -> _Active:
    targets = _targets(sdk, module)  # every attribute, before anything changes
    originals: dict[str, Callable[..., Any]] = {}
    for owner, attr in targets:
        value = owner.__dict__.get(attr)
        if value is None or not callable(value):
            where = getattr(owner, "__qualname__", getattr(owner, "__name__", "?"))
            raise ConfigError(
                f"llmctx cannot instrument {sdk.distribution}: {where}.{attr} "
                f"is missing; llmctx supports {sdk.range}"
            )
        originals[_key(sdk, owner, attr)] = value
    active = _Active(limiter)
    wrappers = _wrappers(sdk, originals, active)
    try:
        for owner, attr in targets:
            wrapper = wrappers.get(_key(sdk, owner, attr))
            if wrapper is None:
                continue
            had = attr in owner.__dict__
            active.patches.append(_ClassPatch(owner, attr, had, owner.__dict__.get(attr)))
            setattr(owner, attr, wrapper)
    except BaseException:
        _unpatch(active)
        raise
    return active


def _unpatch(active: _Active) -> None:
    for patch in reversed(active.patches):
        if patch.had:
            setattr(patch.owner, patch.attr, patch.previous)
        else:
            with contextlib.suppress(AttributeError):  # someone removed it first
                delattr(patch.owner, patch.attr)
    active.patches.clear()


def _load(sdk: _SDK, explicit: bool) -> Any | None:
    """The SDK's module when it can be patched; None (with a warning) or an error otherwise."""
    if not explicit and sdk.only_if_imported and sdk.module not in sys.modules:
        return None
    try:
        module = importlib.import_module(sdk.module)
    except ImportError as exc:
        if explicit:
            raise ConfigError(
                f"llmctx.instrument({sdk.name!r}): {sdk.distribution} is not installed "
                f"({exc}); install it with {sdk.install}"
            ) from exc
        return None
    version = _installed_version(sdk, module)
    numbers = _version_tuple(version or "")
    if not numbers or not (sdk.minimum <= numbers < sdk.below):
        message = (
            f"llmctx supports {sdk.range}, but {sdk.distribution} {version or '(unknown version)'} "
            f"is installed; install a supported version ({sdk.install})"
        )
        if explicit:
            raise ConfigError(f"llmctx.instrument({sdk.name!r}): {message}")
        warnings.warn(
            f"llmctx.instrument(): {sdk.name} left uninstrumented: {message}", stacklevel=4
        )
        return None
    return module


def instrument_sdks(names: Iterable[str], limiter: LimiterLike | None) -> Instrumentation:
    """Patch the named SDKs (all importable supported ones when ``names`` is empty).

    Raises:
        ConfigError: a named SDK is unknown, not installed, of an unsupported version, or
            lacks a method llmctx patches (nothing of that SDK is patched then).
    """
    requested = [_canonical(n) for n in names]
    explicit = bool(requested)
    chosen = list(dict.fromkeys(requested)) if explicit else list(SUPPORTED_SDKS)
    modules = {}
    for name in chosen:
        module = _load(SUPPORTED_SDKS[name], explicit)
        if module is not None:
            modules[name] = module
    done: list[str] = []
    with _lock:
        for name, module in modules.items():
            existing = _active.get(name)
            if existing is not None:
                if limiter is not None and limiter is not existing.limiter:
                    logger.warning(
                        "llmctx: %s is already instrumented; the new limiter is ignored "
                        "(llmctx.uninstrument(%r) first to change limiters)",
                        name,
                        name,
                    )
                done.append(name)
                continue
            sdk = SUPPORTED_SDKS[name]
            try:
                _active[name] = _patch(sdk, module, limiter)
            except ConfigError:
                if explicit:
                    raise
                warnings.warn(f"llmctx.instrument(): {name} left uninstrumented", stacklevel=3)
                continue
            done.append(name)
    return Instrumentation(tuple(done))


def uninstrument_sdks(names: Iterable[str] = ()) -> bool:
    """Undo SDK-wide patches (all of them when ``names`` is empty); True if any was undone.

    Raises:
        ConfigError: a name is not a supported SDK.
    """
    chosen = [_canonical(n) for n in names] or list(SUPPORTED_SDKS)
    undone = False
    with _lock:
        for name in chosen:
            active = _active.pop(name, None)
            if active is not None:
                _unpatch(active)
                undone = True
    return undone


def active_sdks() -> tuple[str, ...]:
    """The SDKs patched SDK-wide right now."""
    return tuple(_active)
