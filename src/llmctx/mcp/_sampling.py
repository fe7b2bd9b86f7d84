"""Answer MCP sampling requests with a model, on the charge path.

A server may ask the client to run a model for it (``sampling/createMessage``). When the hub
answers with :func:`model_sampler`, that model call is an ordinary instrumented call: charged
to the llmctx session of the tool call it serves (or, when that cannot be told, to the session
current when the hub was entered), counted in its budgets, and refused by them before anything
runs. A refusal goes back to the server as a JSON-RPC error whose message says why, so the
server's tool fails with the reason and the caller sees it.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types

from .._context import bind_session, reset_session
from .._exceptions import LLMCtxError
from .server import CallbackContext, SamplingCallback

__all__ = ["model_sampler"]

logger = logging.getLogger("llmctx.mcp")


def model_sampler(
    model: Any,
    *,
    model_name: str | None = None,
    max_tokens: int | None = None,
) -> SamplingCallback:
    """A sampling callback that answers servers' ``sampling/createMessage`` with ``model``.

    Args:
        model: a ``llama_cpp.Llama`` (e.g. :func:`llmctx.local_model`), an OpenAI client or an
            Anthropic client. It is instrumented (a no-op if it already is), so every answer
            is charged to the session of the call it serves and checked against its budgets.
        model_name: the model to ask for with an OpenAI or Anthropic client (required for
            them; a llama.cpp model is the one it holds).
        max_tokens: an upper bound on the tokens an answer may use, whatever the server asks
            for (the server's ``maxTokens`` applies when lower).

    Returns:
        An ``async (ctx, params)`` callback for ``Hub(sampling_callback=...)`` or
        :class:`ServerCallbacks`. Text content only: image or audio messages are refused.

    Raises:
        ConfigError: the client is not one of the known kinds, or an OpenAI/Anthropic
            client was given without ``model_name``.
    """
    from .._exceptions import ConfigError
    from ..providers import instrument

    kind = _kind(model)
    if kind is None:
        raise ConfigError(
            f"model_sampler() takes a llama_cpp.Llama, an OpenAI or an Anthropic client, not "
            f"{type(model).__name__}"
        )
    if kind != "llama" and not model_name:
        raise ConfigError(f"model_sampler() with an {kind} client needs model_name=")
    client = instrument(model)

    async def sample(
        ctx: CallbackContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        try:
            messages = _messages(params)
        except ValueError as exc:
            return types.ErrorData(code=types.INVALID_PARAMS, message=str(exc))
        limit = params.max_tokens if max_tokens is None else min(params.max_tokens, max_tokens)

        def run() -> tuple[str, str, str | None]:
            # The model call runs under the session of the tool call it serves.
            token = bind_session(ctx.charge_to)
            try:
                return _complete(kind, client, model_name, messages, params, limit)
            finally:
                reset_session(token, None)

        try:
            text, used_model, stop = await anyio.to_thread.run_sync(run)
        except LLMCtxError as exc:  # a budget or a rate limit refused it: say so
            logger.info("MCP sampling for %r refused: %s", ctx.server, exc)
            return types.ErrorData(
                code=types.INTERNAL_ERROR,
                message=f"sampling refused by the client ({type(exc).__name__}): {exc}",
            )
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=text),
            model=used_model,
            stop_reason=stop,
        )

    return sample


def _kind(model: Any) -> str | None:
    if callable(getattr(model, "create_chat_completion", None)):
        return "llama"
    if getattr(getattr(model, "chat", None), "completions", None) is not None:
        return "openai"
    if getattr(model, "messages", None) is not None and hasattr(model.messages, "create"):
        return "anthropic"
    return None


def _messages(params: types.CreateMessageRequestParams) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for message in params.messages:
        blocks = message.content if isinstance(message.content, list) else [message.content]
        texts = []
        for block in blocks:
            if not isinstance(block, types.TextContent):
                raise ValueError(
                    f"this client answers sampling with text only; got {block.type} content"
                )
            texts.append(block.text)
        out.append({"role": message.role, "content": "\n".join(texts)})
    return out


def _complete(
    kind: str,
    client: Any,
    model_name: str | None,
    messages: list[dict[str, str]],
    params: types.CreateMessageRequestParams,
    limit: int,
) -> tuple[str, str, str | None]:
    options: dict[str, Any] = {}
    if params.temperature is not None:
        options["temperature"] = params.temperature
    if params.stop_sequences:
        options["stop"] = list(params.stop_sequences)
    if kind == "anthropic":
        if params.stop_sequences:
            options["stop_sequences"] = options.pop("stop")
        if params.system_prompt:
            options["system"] = params.system_prompt
        reply = client.messages.create(
            model=model_name, max_tokens=limit, messages=messages, **options
        )
        text = "".join(getattr(b, "text", "") for b in reply.content)
        stop = "maxTokens" if reply.stop_reason == "max_tokens" else "endTurn"
        return text, str(reply.model), stop
    chat = messages
    if params.system_prompt:
        chat = [{"role": "system", "content": params.system_prompt}, *messages]
    if kind == "llama":
        reply = client.create_chat_completion(messages=chat, max_tokens=limit, **options)
        choice = reply["choices"][0]
        name = str(reply.get("model") or "local")
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
    else:
        reply = client.chat.completions.create(
            model=model_name, messages=chat, max_tokens=limit, **options
        )
        choice = reply.choices[0]
        name = str(reply.model)
        text = choice.message.content or ""
        finish = choice.finish_reason
    return text, name, "maxTokens" if finish == "length" else "endTurn"
