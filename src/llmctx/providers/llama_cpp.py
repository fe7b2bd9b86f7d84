"""``llama_cpp.Llama``: local models run in this process by llama-cpp-python.

Charged: ``create_chat_completion`` and ``create_completion`` (``__call__`` and
``create_chat_completion_openai_v1`` go through them), with and without ``stream=True``.
The methods are replaced on the instance; a chat completion's inner text completion is not
charged twice.

Token counts are exact, from the model's own tokenizer:

* before the call, the prompt is rendered with the model's own chat template (when the
  model uses its GGUF template, as SmolLM2 does) and tokenized, so the reservation holds the
  real prompt size (system prompt the template adds included);
* a whole response carries llama.cpp's usage;
* a stream carries none, so llmctx counts the prompt tokens ``Llama.generate`` receives and
  the tokens it yields (the end-of-generation token excluded, as llama.cpp's own usage does).

The model name on records is the name given to :func:`patch_llama` (``local_model()`` uses
``"SmolLM2-135M-Instruct"``), else the ``model=`` argument of the call, else the GGUF file name
without its directory and extension. Calls are free ($0) unless a price is set for that name
with :func:`llmctx.set_price`; with a price they are charged and money budgets apply.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._charge import CallTracker
from .._interrupt import protected, unprotected
from .._pricing import is_unpriced
from .._usage import Usage, raw_usage_dict, usage_from_llama_cpp
from ._base import (
    LimiterLike,
    Outcome,
    Plan,
    StreamFeed,
    count_prompt,
    idle,
    json_tokens,
)
from ._sdk import _CHARGING, PatchRecord, mark_wrappers

__all__ = ["PROVIDER", "class_wrappers", "patch_llama"]

logger = logging.getLogger("llmctx")

PROVIDER = "llama-cpp"

_JSONABLE = (str, int, float, bool, type(None), list, tuple, dict)


class _Counter:
    """Tokens seen by ``Llama.generate`` during one streamed call."""

    __slots__ = ("completion", "eog", "last", "prompt")

    def __init__(self, eog: Callable[[int], bool]) -> None:
        self.eog = eog
        self.prompt: int | None = None
        self.completion = 0
        self.last: int | None = None

    def usage(self) -> Usage | None:
        if self.prompt is None:
            return None
        generated = self.completion
        if self.last is not None and self.eog(self.last):
            generated -= 1  # llama.cpp stops at the end-of-generation token without counting it
        return Usage(input_tokens=self.prompt, output_tokens=max(0, generated), requests=1)


class _LlamaAccumulator:
    """Chunks of a llama.cpp stream (chat or text), counted exactly by the :class:`_Counter`."""

    __slots__ = ("counter", "got_token", "parts", "plan", "tools")

    def __init__(self, plan: Plan, counter: _Counter) -> None:
        self.plan = plan
        self.counter = counter
        self.got_token = False
        self.parts: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: Any) -> bool:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if delta is None:
                piece = choice.get("text")
            else:
                piece = delta.get("content")
                for tc in delta.get("tool_calls") or ():
                    self.got_token = True
                    entry = self.tools.setdefault(
                        tc.get("index", 0), {"id": None, "name": None, "arguments": ""}
                    )
                    fn = tc.get("function") or {}
                    entry["id"] = tc.get("id") or entry["id"]
                    entry["name"] = fn.get("name") or entry["name"]
                    entry["arguments"] += fn.get("arguments") or ""
            if piece:
                self.parts.append(piece)
                self.got_token = True
        return True

    def outcome(self, complete: bool) -> Outcome:
        text = "".join(self.parts) or None
        tools = [self.tools[k] for k in sorted(self.tools)] or None
        usage = self.counter.usage()
        if usage is not None:
            return Outcome(usage=usage, text=text, tool_calls=tools)
        generated = (text or "") + "".join(t["arguments"] for t in tools or ())
        return Outcome(
            usage=self.plan.estimated_usage(generated), text=text, tool_calls=tools, estimated=True
        )


def _extract(plan: Plan, result: Any) -> Outcome:
    """Read a whole llama.cpp response (chat or text completion dict)."""
    choices = result.get("choices") or []
    text: str | None = None
    tools: list[dict[str, Any]] | None = None
    if choices:
        first = choices[0]
        message = first.get("message")
        if message is None:
            text = first.get("text")
        else:
            text = message.get("content")
            calls = message.get("tool_calls") or []
            tools = [
                {
                    "id": c.get("id"),
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": (c.get("function") or {}).get("arguments"),
                }
                for c in calls
            ] or None
    raw = result.get("usage")
    reasons = [c.get("finish_reason") for c in choices if isinstance(c, Mapping)]
    kept = [r for r in reasons if isinstance(r, str)]
    return Outcome(
        usage=usage_from_llama_cpp(raw) if raw else None,
        text=text,
        tool_calls=tools,
        raw_usage=raw_usage_dict(raw),
        metadata={"finish_reasons": kept} if kept else None,
    )


class _LlamaState:
    """What the patched methods of one ``Llama`` share."""

    def __init__(self, llama: Any, model: str | None, limiter: LimiterLike | None) -> None:
        self.llama = llama
        self.limiter = limiter
        self.fixed_model = model
        self.default_model = _default_name(llama)
        self.depth = 0  # > 0 while an outer charged call runs (its inner calls are not charged)
        self.counter: _Counter | None = None
        self.formatter = _chat_formatter(llama)
        self.eog = _eog_test(llama)

    # ------------------------------------------------------------------ counting
    def count_text(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def chat_prompt_tokens(self, params: Mapping[str, Any]) -> int:
        messages = params.get("messages") or []
        if self.formatter is not None:
            try:
                rendered = self.formatter(
                    messages=messages,
                    functions=params.get("functions"),
                    function_call=params.get("function_call"),
                    tools=params.get("tools"),
                    tool_choice=params.get("tool_choice"),
                )
                tokens = self.llama.tokenize(
                    rendered.prompt.encode("utf-8"),
                    add_bos=not rendered.added_special,
                    special=True,
                )
                return len(tokens)
            except Exception:
                logger.debug("llmctx: could not render the chat template", exc_info=True)
        return (
            count_prompt(messages, None, self.count_text)
            + json_tokens(params.get("tools"))
            + json_tokens(params.get("functions"))
        )

    def completion_prompt_tokens(self, prompt: Any) -> int:
        if isinstance(prompt, str):
            return len(self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        if isinstance(prompt, list | tuple):
            return len(prompt)
        return 0

    def plan(self, chat: bool, params: dict[str, Any], stream: bool) -> Plan:
        model_arg = params.get("model")
        model = self.fixed_model or (model_arg if isinstance(model_arg, str) else None)
        model = model or self.default_model
        n_ctx = int(self.llama.n_ctx())
        if chat:
            input_tokens = self.chat_prompt_tokens(params)
        else:
            input_tokens = self.completion_prompt_tokens(params.get("prompt"))
        max_tokens = params.get("max_tokens", None if chat else 16)
        room = max(0, n_ctx - input_tokens)
        # llama.cpp generates until the context is full when max_tokens is None or <= 0.
        limit = min(max_tokens, room) if isinstance(max_tokens, int) and max_tokens > 0 else room
        meta: dict[str, Any] = {"endpoint": "chat" if chat else "completion"}
        if stream:
            meta["stream"] = True
        return Plan(
            provider=PROVIDER,
            model=model,
            request={k: v for k, v in params.items() if isinstance(v, _JSONABLE)},
            input_tokens=input_tokens,
            max_output_tokens=limit,
            extract=_extract,
            free=is_unpriced(model, PROVIDER),
            tokenizer=self.count_text,
            metadata=meta,
        )


def _default_name(llama: Any) -> str:
    path = getattr(llama, "model_path", None)
    if isinstance(path, str) and path:
        name = Path(path).name
        return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    return "llama-cpp"


def _chat_formatter(llama: Any) -> Any:
    """The model's own GGUF chat template, when llama.cpp uses it for chat completions."""
    if getattr(llama, "chat_handler", None) is not None:
        return None
    if getattr(llama, "chat_format", None) != "chat_template.default":
        return None
    template = (getattr(llama, "metadata", None) or {}).get("tokenizer.chat_template")
    if not isinstance(template, str):
        return None
    try:
        from llama_cpp import llama_chat_format

        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        model = llama._model
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
    except Exception:
        logger.debug("llmctx: no chat formatter for this model", exc_info=True)
        return None


def _eog_test(llama: Any) -> Callable[[int], bool]:
    try:
        import llama_cpp

        vocab = llama._model.vocab
        is_eog = llama_cpp.llama_vocab_is_eog

        def eog(token: int) -> bool:
            return bool(is_eog(vocab, token))

        return eog
    except Exception:
        eos = llama.token_eos()
        return lambda token: token == eos


def _bind(
    original: Any, first: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    if not args:
        return dict(kwargs)
    if len(args) == 1:
        return {first: args[0], **kwargs}
    return dict(inspect.signature(original).bind_partial(*args, **kwargs).arguments)


@protected
def _tracked_stream(
    state: _LlamaState, call: CallTracker, plan: Plan, inner: Iterator[Any]
) -> Iterator[Any]:
    """The stream the caller gets: charged when it ends, or when it is dropped unread."""
    counter = _Counter(state.eog)
    feed = StreamFeed(call, plan, _LlamaAccumulator(plan, counter))
    stream = _stream(state, counter, feed, inner)
    # A generator never started runs no finally: without this, a stream dropped before its
    # first chunk would hold its reservation until the process ends.
    finalizer = weakref.finalize(stream, feed.abandon)
    finalizer.atexit = False
    return stream


def _stream(
    state: _LlamaState, counter: _Counter, feed: StreamFeed, inner: Iterator[Any]
) -> Iterator[Any]:
    """Pass ``inner``'s chunks through, counting tokens, and end the call exactly once."""

    def counted() -> Iterator[Any]:
        while True:
            # generate() is called lazily inside next(); it picks up the counter it finds here.
            state.counter = counter
            try:
                chunk = next(inner)
            except StopIteration:
                return
            finally:
                state.counter = None
            yield chunk

    try:
        yield from feed.relay(counted())
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


@protected
def _charged(
    state: _LlamaState, original: Any, chat: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        params = _bind(original, "messages" if chat else "prompt", args, kwargs)
        stream = bool(params.get("stream", False))
        plan = state.plan(chat, params, stream)
    except Exception:
        logger.exception("llmctx: could not plan a llama.cpp call; running it untracked")
        return _generate(original, args, kwargs)
    call = plan.track(state.limiter)
    state.depth += 1  # calls llama.cpp makes inside this one are not charged again
    token = _CHARGING.set(True)  # nor by an SDK-wide patch under an instance-level one
    try:
        call.start()
        result = _generate(original, args, kwargs)
    except BaseException as exc:
        plan.fail(call, exc, None)  # a no-op for a refused call: it leaves no record
        raise
    finally:
        _CHARGING.reset(token)
        state.depth -= 1
    if stream:
        call.mark_first_byte()
        return _tracked_stream(state, call, plan, result)
    try:
        outcome = _extract(plan, result)
    except Exception:
        logger.exception("llmctx: could not read a llama.cpp response")
        outcome = Outcome(estimated=True)
    plan.finish(call, outcome)
    return result


@unprotected
def _generate(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # The generation itself: a Ctrl-C here is raised at once (see _interrupt), into _charged,
    # which records the call as cancelled.
    return original(*args, **kwargs)


def patch_llama(
    llama: Any, *, limiter: LimiterLike | None = None, model: str | None = None
) -> list[PatchRecord]:
    """Charge ``llama``'s completions to the current session (patched on the instance).

    Args:
        llama: a ``llama_cpp.Llama``.
        limiter: a rate limiter to take each call from (``reserve``, blocking).
        model: the model name for records and prices (default: the GGUF file's name).

    Returns:
        What uninstrument needs to undo the patch.
    """
    state = _LlamaState(llama, model, limiter)
    records: list[PatchRecord] = []

    def patch(attr: str, value: Any) -> None:
        had = attr in vars(llama)
        records.append(PatchRecord(attr, had, vars(llama).get(attr)))
        setattr(llama, attr, value)

    chat_original = llama.create_chat_completion
    text_original = llama.create_completion
    generate_original = llama.generate

    def create_chat_completion(*args: Any, **kwargs: Any) -> Any:
        if state.depth or (limiter is None and idle()):
            return chat_original(*args, **kwargs)
        return _charged(state, chat_original, True, args, kwargs)

    def create_completion(*args: Any, **kwargs: Any) -> Any:
        if state.depth or (limiter is None and idle()):
            return text_original(*args, **kwargs)
        return _charged(state, text_original, False, args, kwargs)

    def generate(tokens: Any, *args: Any, **kwargs: Any) -> Any:
        counter = state.counter
        inner = generate_original(tokens, *args, **kwargs)
        if counter is None:
            return inner
        counter.prompt = len(tokens)
        return _counting(counter, inner)

    patch("create_chat_completion", create_chat_completion)
    patch("create_completion", create_completion)
    patch("generate", generate)
    llama._llmctx_state = state
    records.append(PatchRecord("_llmctx_state", False, None))
    return records


def _counting(counter: _Counter, inner: Iterator[int]) -> Iterator[int]:
    try:
        for token in inner:
            counter.completion += 1
            counter.last = token
            yield token
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


_SDK_STATE = "_llmctx_sdk_state"


def _sdk_state(llama: Any, limiter: LimiterLike | None) -> _LlamaState:
    # One state per Llama, made at its first charged call under an SDK-wide patch.
    state: _LlamaState | None = llama.__dict__.get(_SDK_STATE)
    if state is None:
        state = _LlamaState(llama, None, limiter)
        llama.__dict__[_SDK_STATE] = state
    state.limiter = limiter
    return state


def class_wrappers(
    originals: Mapping[str, Callable[..., Any]], get_limiter: Callable[[], LimiterLike | None]
) -> dict[str, Callable[..., Any]]:
    """``Llama``'s completion methods and ``generate``, charged, for the class itself.

    The model name on records is the call's ``model=`` argument, else the GGUF file name.
    """
    chat_fn = originals["create_chat_completion"]
    text_fn = originals["create_completion"]
    generate_fn = originals["generate"]

    def create_chat_completion(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return chat_fn(self, *args, **kwargs)
        state = _sdk_state(self, limiter)
        if state.depth:
            return chat_fn(self, *args, **kwargs)
        return _charged(state, chat_fn.__get__(self), True, args, kwargs)

    def create_completion(self: Any, *args: Any, **kwargs: Any) -> Any:
        limiter = get_limiter()
        if (limiter is None and idle()) or _CHARGING.get():
            return text_fn(self, *args, **kwargs)
        state = _sdk_state(self, limiter)
        if state.depth:
            return text_fn(self, *args, **kwargs)
        return _charged(state, text_fn.__get__(self), False, args, kwargs)

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        inner = generate_fn(self, tokens, *args, **kwargs)
        state: _LlamaState | None = self.__dict__.get(_SDK_STATE)
        counter = None if state is None else state.counter
        if counter is None:
            return inner
        counter.prompt = len(tokens)
        return _counting(counter, inner)

    return mark_wrappers(
        {
            "create_chat_completion": create_chat_completion,
            "create_completion": create_completion,
            "generate": generate,
        },
        originals,
    )
