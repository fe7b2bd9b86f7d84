"""Prices: genai-prices lookups, the fast path's exactness, overrides, and ``llmctx prices``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import types as gt
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import llmctx
from llmctx._cli.app import app
from llmctx._exceptions import ConfigError, PriceError
from llmctx._pricing import (
    ModelPrice,
    clear_prices,
    estimate_cost,
    known_models,
    lookup_price,
    price_override,
    price_usage,
    set_price,
)
from llmctx._usage import Usage

# Real models covering plain, tiered (Anthropic, Gemini) and cache-write prices.
FAST_MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("gemini-2.5-pro", "google"),
    ("gemini-2.5-flash", "google"),
]

USAGES = [
    Usage(input_tokens=0, output_tokens=0),
    Usage(input_tokens=1_000, output_tokens=1_000),
    Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000, cache_write_tokens=300),
    Usage(input_tokens=9_999, output_tokens=1, cache_read_tokens=9_999),
    Usage(input_tokens=200_000, output_tokens=4_096, cache_read_tokens=150_000),
    Usage(input_tokens=200_001, output_tokens=4_096, cache_write_tokens=200_001),
    Usage(input_tokens=987_654, output_tokens=32_100, cache_read_tokens=500_000,
          cache_write_tokens=87_654, reasoning_tokens=20_000),
]  # fmt: skip


def _calc_price(model: str, usage: Usage, provider: str | None) -> Decimal:
    result = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        ),
        model,
        provider_id=provider,
    )
    return result.total_price


@pytest.fixture(autouse=True)
def _no_overrides() -> Iterator[None]:
    """Every test starts and ends without price overrides."""
    clear_prices()
    yield
    clear_prices()


@pytest.mark.parametrize(("model", "provider"), FAST_MODELS)
def test_fast_path_equals_calc_price_exactly(model: str, provider: str) -> None:
    """The cached fast path returns the very Decimal (value and digits) calc_price returns."""
    price = lookup_price(model, provider)
    assert price is not None
    assert price.source == "genai-prices"
    assert price.note is None, "these models must be priced by the fast path"
    for usage in USAGES:
        cost, reason = price_usage(model, usage, provider)
        expected = _calc_price(model, usage, provider)
        assert reason is None
        assert cost == expected
        assert str(cost) == str(expected)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    model=st.sampled_from(FAST_MODELS),
    inp=st.integers(0, 2_000_000),
    out=st.integers(0, 200_000),
    read_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
)
def test_fast_path_equals_calc_price_on_random_usage(
    model: tuple[str, str], inp: int, out: int, read_share: float, write_share: float
) -> None:
    """Any consistent usage costs exactly what calc_price says, tiers and caches included."""
    read = int(inp * read_share)
    write = int((inp - read) * write_share)
    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                  cache_write_tokens=write)  # fmt: skip
    cost, _ = price_usage(model[0], usage, model[1])
    expected = _calc_price(model[0], usage, model[1])
    assert cost == expected
    assert str(cost) == str(expected)


def test_every_bundled_model_prices_exactly_like_calc_price() -> None:
    """For every genai-prices model, price_usage equals calc_price and estimate_cost covers it."""
    from llmctx import _pricing

    usage = Usage(input_tokens=250_123, output_tokens=4_321, cache_read_tokens=100_007,
                  cache_write_tokens=20_011)  # fmt: skip
    genai_usage = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    thinking = dataclasses.replace(usage, reasoning_tokens=1_999)
    raw = {"cache_creation": {"ephemeral_1h_input_tokens": 7_003}}
    genai_thinking = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_reasoning_tokens=1_999,
        cache_write_1h_tokens=7_003,
    )
    checked = 0
    for gprovider in _pricing._snapshot().providers:
        for info in gprovider.models:
            price = lookup_price(info.id, gprovider.id)
            if price is None:  # a few ids are not matched by their own match rules
                continue
            cost, reason = price_usage(info.id, usage, gprovider.id)
            assert cost is not None, reason
            estimate = estimate_cost(info.id, usage.input_tokens, usage.output_tokens,
                                     gprovider.id)  # fmt: skip
            assert estimate is not None
            assert estimate >= cost, info.id
            if price.note and "time of day" in price.note:
                continue  # compared in its own test: the hour may change between two calls
            expected = info.calc_price(genai_usage, gprovider).total_price
            assert (cost, str(cost)) == (expected, str(expected)), (gprovider.id, info.id)
            # The same call with reasoning and 1-hour cache writes (Anthropic's raw usage).
            cost, reason = price_usage(info.id, thinking, gprovider.id, raw_usage=raw)
            assert cost is not None and estimate >= cost, (info.id, reason)
            expected = info.calc_price(genai_thinking, gprovider).total_price
            assert (cost, str(cost)) == (expected, str(expected)), (gprovider.id, info.id)
            checked += 1
    assert checked > 1_000


@pytest.mark.parametrize(
    ("ref", "provider", "canonical"),
    [
        ("gpt-4o-2024-08-06", None, "gpt-4o"),
        ("GPT-4o-mini", None, "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", None, "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4-5", None, "claude-sonnet-4-5"),
        ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ],
)
def test_provider_style_names_resolve(ref: str, provider: str | None, canonical: str) -> None:
    """Model names as providers return them (dated, prefixed, any case) find their price."""
    price = lookup_price(ref, provider)
    assert price is not None
    assert price.model == canonical
    assert price.snapshot is not None
    assert price.snapshot.startswith("genai-prices")


def test_prefixed_reference_costs_like_the_plain_name() -> None:
    """'anthropic/claude-…' is priced exactly like 'claude-…' from anthropic."""
    usage = USAGES[2]
    assert price_usage("anthropic/claude-haiku-4-5", usage) == price_usage(
        "claude-haiku-4-5", usage, "anthropic"
    )


def test_unknown_model_returns_none_and_how_to_fix() -> None:
    """An unknown model is never priced at $0: (None, reason naming llmctx.set_price)."""
    cost, reason = price_usage("no-such-model-xyz", Usage(input_tokens=10, output_tokens=10))
    assert cost is None
    assert reason is not None
    assert "no-such-model-xyz" in reason
    assert "llmctx.set_price" in reason
    assert lookup_price("no-such-model-xyz") is None
    assert estimate_cost("no-such-model-xyz", 100, 100) is None


def test_unknown_provider_is_not_guessed() -> None:
    """A provider genai-prices does not know gets no price, even for a famous model name."""
    cost, reason = price_usage("gpt-4o", Usage(input_tokens=10), provider="my-local-server")
    assert cost is None
    assert reason is not None
    assert "my-local-server" in reason


def test_missing_model_name_has_a_reason() -> None:
    """A call that reported no model is unpriced with a reason, not an exception."""
    cost, reason = price_usage(None, Usage(input_tokens=10))
    assert cost is None
    assert reason is not None
    assert "no model name" in reason


def test_inconsistent_usage_is_reported_not_priced() -> None:
    """More cache tokens than input tokens yields (None, reason) and cost() raises PriceError."""
    usage = Usage(input_tokens=10, cache_read_tokens=20)
    cost, reason = price_usage("gpt-4o", usage)
    assert cost is None
    assert reason is not None
    assert "inconsistent" in reason
    price = lookup_price("gpt-4o")
    assert price is not None
    with pytest.raises(PriceError, match="inconsistent"):
        price.cost(usage)


def test_override_wins_and_coerces_numbers() -> None:
    """set_price beats genai-prices; str/int/float/Decimal rates become exact Decimals."""
    set_price("gpt-4o", input_per_mtok="1.10", output_per_mtok=2, cache_read_per_mtok=0.1,
              cache_write_per_mtok=Decimal("3"))  # fmt: skip
    price = lookup_price("gpt-4o")
    assert price is not None
    assert price.source == "code"
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("1.10"), Decimal(2))
    assert price.cache_read_per_mtok == Decimal("0.1")
    assert price.cache_write_per_mtok == Decimal(3)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=500_000,
                  cache_write_tokens=100_000)  # fmt: skip
    cost, _ = price_usage("GPT-4o", usage)
    # 400k plain input * 1.10 + 500k * 0.1 + 100k * 3 + 1M * 2
    assert cost == Decimal("0.44") + Decimal("0.05") + Decimal("0.3") + Decimal(2)


def test_override_without_cache_rates_charges_the_input_rate() -> None:
    """Cache reads and writes cost the input rate when the override gives them none."""
    set_price("my-finetune", input_per_mtok=4, output_per_mtok=8)
    usage = Usage(input_tokens=1_000_000, output_tokens=0, cache_read_tokens=600_000,
                  cache_write_tokens=400_000)  # fmt: skip
    assert price_usage("my-finetune", usage) == (Decimal(4), None)


def test_override_for_a_local_model_at_zero() -> None:
    """A local model priced at 0 costs exactly $0, and a prefixed name finds it."""
    set_price("smollm2-135m-instruct", input_per_mtok=0, output_per_mtok=0)
    cost, reason = price_usage(
        "local/smollm2-135m-instruct", Usage(input_tokens=50, output_tokens=9)
    )
    assert (cost, reason) == (Decimal(0), None)


def test_provider_specific_override_applies_only_to_that_provider() -> None:
    """An override with provider= prices that provider's calls only."""
    set_price("shared-model", input_per_mtok=1, output_per_mtok=1, provider="acme")
    assert lookup_price("shared-model", "acme") is not None
    assert lookup_price("shared-model", "ACME") is not None
    assert lookup_price("shared-model") is None
    assert lookup_price("shared-model", "other") is None


def test_override_replaces_a_cached_lookup() -> None:
    """A price set after a lookup was cached is seen by the next call."""
    before = lookup_price("gpt-4o-mini")
    assert before is not None
    assert before.source == "genai-prices"
    set_price("gpt-4o-mini", input_per_mtok=9, output_per_mtok=9)
    after = lookup_price("gpt-4o-mini")
    assert after is not None
    assert after.source == "code"
    clear_prices()
    again = lookup_price("gpt-4o-mini")
    assert again is not None
    assert again.source == "genai-prices"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_per_mtok": -1, "output_per_mtok": 1}, "input_per_mtok"),
        ({"input_per_mtok": 1, "output_per_mtok": "abc"}, "output_per_mtok"),
        ({"input_per_mtok": True, "output_per_mtok": 1}, "input_per_mtok"),
        ({"input_per_mtok": float("nan"), "output_per_mtok": 1}, "input_per_mtok"),
        ({"input_per_mtok": "Infinity", "output_per_mtok": 1}, "input_per_mtok"),
        ({"input_per_mtok": 1, "output_per_mtok": 1, "cache_read_per_mtok": -0.5}, "cache_read"),
        ({"input_per_mtok": 1, "output_per_mtok": None}, "output_per_mtok"),
    ],
)
def test_bad_rates_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    """Negative, non-finite or non-numeric rates are refused with a ConfigError."""
    with pytest.raises(ConfigError, match=match):
        set_price("x-model", **kwargs)  # type: ignore[arg-type]
    assert lookup_price("x-model") is None


def test_empty_model_name_is_refused() -> None:
    """set_price('') raises ConfigError instead of pricing every nameless call."""
    with pytest.raises(ConfigError, match="model"):
        set_price("  ", input_per_mtok=1, output_per_mtok=1)


def test_price_override_restores_previous_state() -> None:
    """price_override sets a price for the block and restores what was there on exit."""
    set_price("m-1", input_per_mtok=1, output_per_mtok=1)
    with price_override("m-1", input_per_mtok=5, output_per_mtok=5) as inner:
        assert inner.input_per_mtok == Decimal(5)
        assert lookup_price("m-1") == inner
        with price_override("m-2", input_per_mtok=2, output_per_mtok=2):
            assert lookup_price("m-2") is not None
        assert lookup_price("m-2") is None
    restored = lookup_price("m-1")
    assert restored is not None
    assert restored.input_per_mtok == Decimal(1)


def test_price_override_restores_on_exception() -> None:
    """An exception inside price_override still removes the temporary price."""

    def fail_inside() -> None:
        with price_override("gpt-4o", input_per_mtok=0, output_per_mtok=0):
            price = lookup_price("gpt-4o")
            assert price is not None
            assert price.source == "code"
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    price = lookup_price("gpt-4o")
    assert price is not None
    assert price.source == "genai-prices"


def test_estimate_is_worst_case_input_rate() -> None:
    """Reservations price input at the highest input-side rate: Anthropic's 1-hour writes."""
    price = lookup_price("claude-haiku-4-5")
    assert price is not None
    assert price.cache_write_1h_per_mtok is not None
    assert price.cache_write_per_mtok is not None
    highest = max(price.input_per_mtok, price.cache_write_per_mtok, price.cache_write_1h_per_mtok)
    assert highest == price.cache_write_1h_per_mtok
    expected = highest + price.output_per_mtok  # one million of each
    assert estimate_cost("claude-haiku-4-5", 1_000_000, 1_000_000) == expected
    # gpt-4o: no cache-write rate, so the input rate: 2.5 + 10.
    assert estimate_cost("gpt-4o", 1_000_000, 1_000_000) == Decimal("12.5")


def test_estimate_is_never_below_the_actual_cost() -> None:
    """For the same token counts, the estimate covers any split into cache reads/writes."""
    for model, provider in FAST_MODELS:
        for usage in USAGES:
            estimate = estimate_cost(model, usage.input_tokens, usage.output_tokens, provider)
            cost, _ = price_usage(model, usage, provider)
            assert estimate is not None
            assert cost is not None
            assert estimate >= cost, (model, usage)


def test_estimate_uses_the_tier_the_prompt_size_selects() -> None:
    """gemini-2.5-pro doubles its input rate above 200k prompt tokens; the estimate follows."""
    small = estimate_cost("gemini-2.5-pro", 200_000, 0, "google")
    large = estimate_cost("gemini-2.5-pro", 200_001, 0, "google")
    assert small == Decimal("0.25")
    assert large is not None
    assert large > small * 2 - Decimal("0.0001")


def test_estimate_refuses_negative_counts() -> None:
    """Negative token counts are a ConfigError."""
    with pytest.raises(ConfigError):
        estimate_cost("gpt-4o", -1, 10)


def test_time_of_day_price_goes_through_calc_price() -> None:
    """A price that depends on the hour (deepseek) is computed by genai-prices every call."""
    price = lookup_price("deepseek-chat")
    assert price is not None
    assert price.note is not None
    usage = USAGES[2]
    cost, _ = price_usage("deepseek-chat", usage)
    info = price._genai[1] if price._genai else None
    assert isinstance(info, gt.ModelInfo)
    assert isinstance(info.prices, list)
    variants = {v.prices.calc_price(genai_prices.Usage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
    ))["total_price"] for v in info.prices}  # fmt: skip
    assert cost in variants
    estimate = estimate_cost("deepseek-chat", usage.input_tokens, usage.output_tokens)
    assert estimate is not None
    assert estimate >= max(variants)


def test_stale_dated_price_is_looked_up_again() -> None:
    """A cached price past its change date is replaced on the next call (fake expiry)."""
    from llmctx import _pricing

    real = lookup_price("gpt-4o")
    assert real is not None
    # A fake: no bundled model has a price change dated in the future to wait for.
    _pricing._cache[("gpt-4o", None)] = dataclasses.replace(real, _expires_at=0.0)
    cost, _ = price_usage("gpt-4o", USAGES[1])
    assert cost == _calc_price("gpt-4o", USAGES[1], None)
    refreshed = _pricing._cache[("gpt-4o", None)]
    assert refreshed is not None
    assert refreshed._expires_at is None


def test_known_models_lists_genai_and_overrides() -> None:
    """known_models includes genai-prices ids and override names, optionally per provider."""
    set_price("zz-custom", input_per_mtok=1, output_per_mtok=1)
    names = known_models()
    assert "gpt-4o" in names
    assert "zz-custom" in names
    assert "gpt-4o" not in known_models("anthropic")


def test_model_price_is_a_frozen_value() -> None:
    """ModelPrice is immutable, so a cached price cannot be changed by a caller."""
    price = lookup_price("gpt-4o")
    assert isinstance(price, ModelPrice)
    with pytest.raises(dataclasses.FrozenInstanceError):
        price.input_per_mtok = Decimal(0)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# llmctx prices MODEL

runner = CliRunner()


def test_cli_shows_prices_source_and_example() -> None:
    """`llmctx prices` prints the per-MTok rates, the data source and a 1k+1k example."""
    result = runner.invoke(app, ["prices", "gpt-4o-2024-08-06"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "$2.50" in out
    assert "$10.00" in out
    assert "$1.25" in out  # cache read
    assert "genai-prices" in out
    assert "$0.0125" in out  # 1000 * 2.5 / 1M + 1000 * 10 / 1M


def test_cli_shows_tiers() -> None:
    """Tiered prices list their higher rates with the prompt size that selects them."""
    result = runner.invoke(app, ["prices", "gemini-2.5-pro", "--provider", "google"])
    assert result.exit_code == 0, result.output
    assert "200,000" in result.output
    assert "$2.50" in result.output


def test_cli_json() -> None:
    """--json prints machine-readable prices with Decimal strings."""
    result = runner.invoke(app, ["prices", "claude-haiku-4-5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["provider"] == "anthropic"
    assert data["per_mtok_usd"] == {
        "input": "1",
        "output": "5",
        "cache_read": "0.1",
        "cache_write": "1.25",
        "cache_write_1h": "2",
        "reasoning": None,
    }
    assert data["example"]["cost_usd"] == "0.006"
    assert data["source"] == "genai-prices"
    assert data["origin"].startswith("genai-prices ")
    assert data["shadowed"] == []


def test_other_units_read_as_words_with_one_money_format() -> None:
    """Units other than tokens read "$10.00 per 1K web searches", in JSON as decimal strings."""
    price = lookup_price("gpt-4o", "openai")
    assert price is not None
    assert "$10.00 per 1K web searches" in price.other_prices
    web = next(u for u in price.unit_prices if u.unit == "web searches")
    assert (web.per, web.usd, web.charged) == (1000, Decimal(10), False)
    result = runner.invoke(app, ["prices", "gpt-4o", "--provider", "openai"])
    assert "Also priced, not tracked by llmctx: $10.00 per 1K web searches" in " ".join(
        result.output.split()
    )
    assert "/web searches K" not in result.output
    data = json.loads(runner.invoke(app, ["prices", "gpt-4o", "--json"]).output)
    assert {"unit": "web searches", "per": 1000, "usd": "10", "charged": False,
            "text": "$10.00 per 1K web searches"} in data["unit_prices"]  # fmt: skip


def test_a_per_request_fee_is_shown_as_charged() -> None:
    """A per-request fee (charged on every call) is listed as charged, not as untracked."""
    price = lookup_price("sonar", "perplexity")
    assert price is not None
    fee = next(u for u in price.unit_prices if u.unit == "requests")
    assert fee.charged and fee.text == "$12.00 per 1K requests"
    result = runner.invoke(app, ["prices", "sonar", "--provider", "perplexity"])
    assert "Also charged: $12.00 per 1K requests" in result.output


def test_cli_shows_an_override() -> None:
    """A price set with set_price in the process is what the command shows, labelled so."""
    set_price("house-model", input_per_mtok="0.5", output_per_mtok="1.5")
    result = runner.invoke(app, ["prices", "house-model"])
    assert result.exit_code == 0, result.output
    assert "Source: code (llmctx.set_price in this process)" in result.output
    assert "$0.50" in result.output
    assert "input rate" in result.output  # no cache rates given
    assert "$0.002" in result.output  # 1000 * 0.5 / 1M + 1000 * 1.5 / 1M


def test_cli_unknown_model_suggests_close_names() -> None:
    """An unknown model exits 1 with close model names and both ways to price it."""
    result = runner.invoke(app, ["prices", "gpt-4o-minni"])
    assert result.exit_code == 1
    assert "gpt-4o-mini" in result.output
    assert "llmctx prices set gpt-4o-minni --input USD_PER_MTOK" in " ".join(result.output.split())
    assert "llmctx.set_price" in result.output


def test_cli_unknown_provider_says_so() -> None:
    """An unknown --provider exits 1 and says genai-prices does not know it."""
    result = runner.invoke(app, ["prices", "gpt-4o", "--provider", "nobody"])
    assert result.exit_code == 1
    assert "nobody" in result.output


# --------------------------------------------------------------------------------------------
# What providers bill beyond input and output: 1-hour cache writes, reasoning, service tiers,
# dated prices. Every expected cost is genai-prices' own calc_price on the same inputs.

AFTER_TIERS = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # after every tier's "since" in the data


def _genai(
    model: str,
    usage: Usage,
    provider: str | None,
    *,
    cache_write_1h: int = 0,
    context: dict[str, str] | None = None,
    at: datetime | None = None,
) -> Decimal:
    """genai_prices.calc_price for the same call, 1-hour writes and reasoning included."""
    counts: dict[str, int] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.reasoning_tokens:
        counts["output_reasoning_tokens"] = usage.reasoning_tokens
    if cache_write_1h:
        counts["cache_write_1h_tokens"] = cache_write_1h
    return genai_prices.calc_price(
        genai_prices.Usage(**counts),
        model,
        provider_id=provider,
        genai_request_timestamp=at,
        price_context=context,
    ).total_price


def _anthropic_raw(five_minutes: int, one_hour: int, **extra: object) -> dict[str, object]:
    """Anthropic's usage as the SDK reports it (the part llmctx reads)."""
    return {
        "cache_creation_input_tokens": five_minutes + one_hour,
        "cache_creation": {
            "ephemeral_5m_input_tokens": five_minutes,
            "ephemeral_1h_input_tokens": one_hour,
        },
        **extra,
    }


@pytest.mark.parametrize(
    ("model", "input_tokens"),
    [
        ("claude-sonnet-4-5", 12_345),
        ("claude-sonnet-4-5", 250_000),  # above the 200K tier: the 1-hour rate is tiered too
        ("claude-haiku-4-5", 12_345),
        ("claude-opus-4-6", 12_345),
    ],
)
def test_one_hour_cache_writes_cost_their_own_rate(model: str, input_tokens: int) -> None:
    """Anthropic's 1-hour cache writes (from the raw usage) cost what calc_price says, more than
    the same tokens written for 5 minutes."""
    usage = Usage(input_tokens=input_tokens, output_tokens=700, cache_read_tokens=2_000,
                  cache_write_tokens=3_000)  # fmt: skip
    raw = _anthropic_raw(five_minutes=1_000, one_hour=2_000)
    cost, reason = price_usage(model, usage, "anthropic", raw_usage=raw, at=AFTER_TIERS)
    expected = _genai(model, usage, "anthropic", cache_write_1h=2_000, at=AFTER_TIERS)
    assert reason is None
    assert (cost, str(cost)) == (expected, str(expected))
    five_minute_only, _ = price_usage(model, usage, "anthropic", at=AFTER_TIERS)
    assert five_minute_only is not None and cost is not None
    assert cost > five_minute_only
    price = lookup_price(model, "anthropic")
    assert price is not None and price.note is None  # still the fast path


def test_more_one_hour_writes_than_writes_is_inconsistent() -> None:
    """A raw usage claiming more 1-hour writes than cache writes is reported, not priced."""
    usage = Usage(input_tokens=10_000, output_tokens=10, cache_write_tokens=100)
    raw = {"cache_creation": {"ephemeral_1h_input_tokens": 101}}
    cost, reason = price_usage("claude-sonnet-4-5", usage, "anthropic", raw_usage=raw)
    assert cost is None
    assert reason is not None and "1-hour cache writes (101)" in reason


def test_reasoning_costs_the_output_rate_unless_the_data_prices_it() -> None:
    """OpenAI reasoning tokens cost the output rate; Perplexity's own reasoning rate applies."""
    plain = Usage(input_tokens=10_000, output_tokens=4_000)
    thinking = dataclasses.replace(plain, reasoning_tokens=3_000)
    gpt5 = price_usage("gpt-5", thinking, "openai", at=AFTER_TIERS)
    assert gpt5 == price_usage("gpt-5", plain, "openai", at=AFTER_TIERS)
    assert gpt5[0] == _genai("gpt-5", thinking, "openai", at=AFTER_TIERS)
    deep, reason = price_usage("sonar-deep-research", thinking, "perplexity", at=AFTER_TIERS)
    expected = _genai("sonar-deep-research", thinking, "perplexity", at=AFTER_TIERS)
    assert reason is None
    assert (deep, str(deep)) == (expected, str(expected))
    assert deep != price_usage("sonar-deep-research", plain, "perplexity", at=AFTER_TIERS)[0]
    price = lookup_price("sonar-deep-research", "perplexity")
    assert price is not None
    assert price.reasoning_per_mtok is not None
    assert price.note is None  # a reasoning rate no longer needs calc_price on every call


REASONING_MODELS = [*FAST_MODELS, ("sonar-deep-research", "perplexity"), ("gpt-5", "openai")]


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    model=st.sampled_from(REASONING_MODELS),
    inp=st.integers(0, 2_000_000),
    out=st.integers(0, 200_000),
    read_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
    hour_share=st.floats(0, 1),
    reasoning_share=st.floats(0, 1),
)
def test_one_hour_writes_and_reasoning_equal_calc_price_on_random_usage(
    model: tuple[str, str],
    inp: int,
    out: int,
    read_share: float,
    write_share: float,
    hour_share: float,
    reasoning_share: float,
) -> None:
    """Any consistent usage with 1-hour writes and reasoning costs exactly what calc_price says."""
    read = int(inp * read_share)
    write = int((inp - read) * write_share)
    hour = int(write * hour_share)
    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                  cache_write_tokens=write, reasoning_tokens=int(out * reasoning_share))  # fmt: skip
    raw = _anthropic_raw(write - hour, hour)
    cost, _ = price_usage(model[0], usage, model[1], raw_usage=raw, at=AFTER_TIERS)
    expected = _genai(model[0], usage, model[1], cache_write_1h=hour, at=AFTER_TIERS)
    assert (cost, str(cost)) == (expected, str(expected))


@pytest.mark.parametrize("model", ["gpt-5", "o3", "gpt-4o"])
@pytest.mark.parametrize(
    ("tier", "context"),
    [
        ("default", {"service_tier": "default"}),
        ("flex", {"service_tier": "flex"}),
        ("priority", {"service_tier": "priority"}),
        ("batch", {"processing": "batch"}),
    ],
)
def test_service_tiers_cost_what_calc_price_says(
    model: str, tier: str, context: dict[str, str]
) -> None:
    """OpenAI flex/priority and Batch API calls cost genai-prices' rates for that tier."""
    usage = USAGES[2]
    cost, reason = price_usage(model, usage, "openai", service_tier=tier, at=AFTER_TIERS)
    if tier == "flex" and model == "gpt-4o":
        # The data has no flex rate for gpt-4o: calc_price would charge the standard rate.
        assert cost is None
        assert reason is not None and "'flex'" in reason and "service_tiers" in reason
        return
    expected = _genai(model, usage, "openai", context=context, at=AFTER_TIERS)
    assert reason is None
    assert (cost, str(cost)) == (expected, str(expected))
    standard = _genai(model, usage, "openai", at=AFTER_TIERS)
    assert (cost == standard) == (tier == "default")


def test_a_tier_the_data_has_no_rates_for_is_unpriced_not_standard() -> None:
    """A tier unknown to the data, or before the data has its rates, has no cost and a reason
    (calc_price would silently charge the standard rate)."""
    usage = USAGES[2]
    before = datetime(2026, 1, 1, tzinfo=UTC)  # before the data's flex rates (2026-10-12)
    for tier, at in (("scale", AFTER_TIERS), ("flex", before)):
        cost, reason = price_usage("gpt-5", usage, "openai", service_tier=tier, at=at)
        assert cost is None
        assert reason is not None
        assert f"no {tier!r} service-tier price for model 'gpt-5' on {at:%Y-%m-%d}" in reason
        assert "llmctx prices" not in reason or "service_tiers" in reason
        standard = _genai("gpt-5", usage, "openai", at=at)
        genai_tier = _genai("gpt-5", usage, "openai", context={"service_tier": tier}, at=at)
        assert genai_tier == standard  # what llmctx refuses to do
    assert lookup_price("gpt-5", "openai", service_tier="scale") is None


def test_anthropic_batch_and_tier_from_the_raw_usage() -> None:
    """Anthropic's usage.service_tier "batch" prices the call at the Batch API rates."""
    usage = USAGES[2]
    raw = _anthropic_raw(300, 0, service_tier="batch")
    cost, reason = price_usage("claude-opus-4-6", usage, "anthropic", raw_usage=raw,
                               at=AFTER_TIERS)  # fmt: skip
    expected = _genai("claude-opus-4-6", usage, "anthropic", context={"processing": "batch"},
                      at=AFTER_TIERS)  # fmt: skip
    assert reason is None
    assert cost == expected
    assert cost != _genai("claude-opus-4-6", usage, "anthropic", at=AFTER_TIERS)
    standard = _anthropic_raw(300, 0, service_tier="standard")
    cost, _ = price_usage("claude-opus-4-6", usage, "anthropic", raw_usage=standard,
                          at=AFTER_TIERS)  # fmt: skip
    assert cost == _genai("claude-opus-4-6", usage, "anthropic", at=AFTER_TIERS)


def test_the_price_in_force_at_the_call_time() -> None:
    """A call is priced at the rate in force when it was made (o3's price fell on 2025-06-10)."""
    usage = USAGES[2]
    old, new = datetime(2025, 6, 9, 23, 59, tzinfo=UTC), datetime(2025, 6, 10, tzinfo=UTC)
    old_cost, _ = price_usage("o3", usage, "openai", at=old)
    new_cost, _ = price_usage("o3", usage, "openai", at=new)
    assert old_cost == _genai("o3", usage, "openai", at=old)
    assert new_cost == _genai("o3", usage, "openai", at=new)
    assert old_cost != new_cost
    # A naive time is UTC, as in genai-prices.
    assert price_usage("o3", usage, "openai", at=old.replace(tzinfo=None))[0] == old_cost
    # The old price does not replace the current one for calls made now.
    assert price_usage("o3", usage, "openai")[0] == _genai("o3", usage, "openai")
    price = lookup_price("o3", "openai", at=old)
    assert price is not None
    assert price.valid_until == new.date()
    assert [c.since for c in price.history] == [None, new.date()]


def test_every_bundled_service_tier_prices_exactly_like_calc_price() -> None:
    """For every genai-prices price variant, price_usage at that tier equals calc_price."""
    from llmctx import _pricing

    usage = Usage(input_tokens=250_123, output_tokens=4_321, cache_read_tokens=100_007,
                  cache_write_tokens=20_011, reasoning_tokens=1_234)  # fmt: skip
    raw = {"cache_creation": {"ephemeral_1h_input_tokens": 7_003}}
    checked = 0
    for gprovider in _pricing._snapshot().providers:
        for info in gprovider.models:
            for variant in info.price_variants or ():
                if len(variant.when) != 1 or lookup_price(info.id, gprovider.id) is None:
                    continue
                ((key, value),) = variant.when.items()
                tier = {"processing": "batch"}.get(key) if value == "batch" else None
                tier = tier or (value if key == "service_tier" else f"{key}={value}")
                since = getattr(variant.constraint, "start_date", None)
                at = AFTER_TIERS if since is None else datetime.combine(since, time(12), UTC)
                cost, reason = price_usage(info.id, usage, gprovider.id, service_tier=tier,
                                           at=at, raw_usage=raw)  # fmt: skip
                assert cost is not None, reason
                genai_usage = _genai_usage_of(usage)
                genai_usage.cache_write_1h_tokens = 7_003
                expected = info.calc_price(
                    genai_usage, gprovider, genai_request_timestamp=at,
                    price_context=dict(variant.when),
                ).total_price  # fmt: skip
                assert (cost, str(cost)) == (expected, str(expected)), (info.id, tier)
                checked += 1
    assert checked > 200


def test_every_bundled_price_change_prices_exactly_like_calc_price() -> None:
    """On both sides of every dated price change in the data, price_usage equals calc_price."""
    from llmctx import _pricing

    usage = Usage(input_tokens=150_001, output_tokens=4_321, cache_read_tokens=100_007,
                  cache_write_tokens=20_011)  # fmt: skip
    checked = 0
    for gprovider in _pricing._snapshot().providers:
        for info in gprovider.models:
            if not isinstance(info.prices, list) or lookup_price(info.id, gprovider.id) is None:
                continue
            for conditional in info.prices:
                since = getattr(conditional.constraint, "start_date", None)
                if since is None:
                    continue
                for at in (datetime.combine(since, time(0), UTC) - timedelta(seconds=1),
                           datetime.combine(since, time(0), UTC)):  # fmt: skip
                    cost, reason = price_usage(info.id, usage, gprovider.id, at=at)
                    assert cost is not None, reason
                    expected = info.calc_price(
                        _genai_usage_of(usage), gprovider, genai_request_timestamp=at
                    ).total_price
                    assert (cost, str(cost)) == (expected, str(expected)), (info.id, at)
                    checked += 1
    assert checked > 200


def _genai_usage_of(usage: Usage) -> genai_prices.Usage:
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.reasoning_tokens:
        counts["output_reasoning_tokens"] = usage.reasoning_tokens
    return genai_prices.Usage(**counts)


def _equivalent_genai_model(
    base: dict[str, str],
    changes: list[tuple[date, dict[str, str]]],
    tiers: dict[str, dict[str, str]],
) -> tuple[gt.Provider, gt.ModelInfo]:
    """The genai-prices model that means the same as an llmctx price with these rates."""
    keys = {"input_per_mtok": "input_mtok", "output_per_mtok": "output_mtok",
            "cache_read_per_mtok": "cache_read_mtok", "cache_write_per_mtok": "cache_write_mtok",
            "cache_write_1h_per_mtok": "cache_write_1h_mtok",
            "reasoning_per_mtok": "output_reasoning_mtok"}  # fmt: skip

    def genai(rates: dict[str, str]) -> gt.ModelPrice:
        return gt.ModelPrice(**{keys[k]: Decimal(v) for k, v in rates.items()})

    info = gt.ModelInfo(
        id="house-model",
        match=gt.ClauseEquals(equals="house-model"),
        prices=[gt.ConditionalPrice(prices=genai(base))]
        + [gt.ConditionalPrice(constraint=gt.StartDateConstraint(start_date=d), prices=genai(r))
           for d, r in changes],
        price_variants=[
            gt.PriceVariant(when={"service_tier": t}, prices=genai(r)) for t, r in tiers.items()
        ],
    )  # fmt: skip
    return gt.Provider(id="house", name="house", api_pattern="", models=[info]), info


HOUSE_BASE = {"input_per_mtok": "0.20", "output_per_mtok": "0.60", "cache_read_per_mtok": "0.02",
              "cache_write_per_mtok": "0.25", "cache_write_1h_per_mtok": "0.40",
              "reasoning_per_mtok": "0.90"}  # fmt: skip
HOUSE_TIERS = {"flex": {"input_per_mtok": "0.10", "output_per_mtok": "0.30"},
               "priority": {"output_per_mtok": "1.20"}}  # fmt: skip


@pytest.mark.parametrize("tier", [None, "flex", "priority"])
def test_a_price_set_in_code_with_tiers_means_what_genai_prices_would(tier: str | None) -> None:
    """set_price's 1-hour, reasoning and service-tier rates cost what calc_price charges for the
    same rates written as genai-prices data."""
    set_price("house-model", **HOUSE_BASE, service_tiers=HOUSE_TIERS)
    gprovider, info = _equivalent_genai_model(HOUSE_BASE, [], HOUSE_TIERS)
    usage = Usage(input_tokens=20_000, output_tokens=3_000, cache_read_tokens=5_000,
                  cache_write_tokens=4_000, reasoning_tokens=1_000)  # fmt: skip
    raw = _anthropic_raw(1_500, 2_500)
    cost, reason = price_usage("house-model", usage, raw_usage=raw, service_tier=tier)
    genai_usage = _genai_usage_of(usage)
    genai_usage.cache_write_1h_tokens = 2_500
    expected = info.calc_price(
        genai_usage, gprovider, price_context={"service_tier": tier} if tier else None
    ).total_price
    assert reason is None
    assert (cost, str(cost)) == (expected, str(expected))
    assert price_usage("house-model", usage, service_tier="batch")[0] is None


@pytest.mark.parametrize(
    ("service_tiers", "match"),
    [
        ({"default": {"input_per_mtok": 1}}, "standard price is the main rates"),
        ({"flex": {}}, "needs a mapping of rates"),
        ({"flex": {"inptu_per_mtok": 1}}, "unknown rate 'inptu_per_mtok'"),
        ({"flex": {"input_per_mtok": -1}}, "input_per_mtok must be a finite number"),
        (["flex"], "must map a tier name to its rates"),
    ],
)
def test_bad_service_tiers_raise_config_error(service_tiers: object, match: str) -> None:
    """A standard tier name, empty or unknown rates, or a non-mapping are a clear ConfigError."""
    with pytest.raises(ConfigError, match=match):
        set_price("m", input_per_mtok=1, output_per_mtok=1, service_tiers=service_tiers)  # type: ignore[arg-type]


def test_estimate_covers_the_tier_the_request_names() -> None:
    """A reservation for a priority call covers its cost; a tier with no rates has no estimate."""
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    cost, _ = price_usage("gpt-5", usage, "openai", service_tier="priority", at=AFTER_TIERS)
    estimate = estimate_cost("gpt-5", 10_000, 2_000, "openai", service_tier="priority",
                             at=AFTER_TIERS)  # fmt: skip
    standard = estimate_cost("gpt-5", 10_000, 2_000, "openai", at=AFTER_TIERS)
    assert cost is not None and estimate is not None and standard is not None
    assert estimate >= cost > standard
    assert estimate_cost("gpt-5", 10, 10, "openai", service_tier="scale") is None


# --------------------------------------------------------------------------------------------
# llmctx prices MODEL --tier / --at, as a real process.


def _llmctx(*args: str, code: int = 0) -> str:
    """Run `python -m llmctx ARGS` as its own process; its stdout (stderr when it fails)."""
    env = {**os.environ, "COLUMNS": "200", "LLMCTX_PRICES": os.devnull + ".missing.toml"}
    done = subprocess.run(
        [sys.executable, "-m", "llmctx", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    return done.stdout if code == 0 else done.stderr


def _genai_info(model: str, provider: str) -> gt.ModelInfo:
    from llmctx import _pricing

    found = _pricing._genai_find(model, provider)
    assert found is not None
    return found[1]


def test_cli_at_date_shows_the_price_then_and_the_history() -> None:
    """`llmctx prices o3 --at DAY --json` gives that day's rates (the data's) and the history."""
    info = _genai_info("o3", "openai")
    assert isinstance(info.prices, list)
    first, second = info.prices[0].prices, info.prices[1].prices
    change = info.prices[1].constraint.start_date  # type: ignore[union-attr]
    day_before = (change - timedelta(days=1)).isoformat()
    data = json.loads(_llmctx("prices", "o3", "--provider", "openai", "--at", day_before,
                              "--json"))  # fmt: skip
    assert Decimal(data["per_mtok_usd"]["input"]) == first.input_mtok
    assert Decimal(data["per_mtok_usd"]["output"]) == first.output_mtok
    assert data["valid_until"] == change.isoformat()
    assert [h["since"] for h in data["history"]] == [None, change.isoformat()]
    assert Decimal(data["history"][1]["per_mtok_usd"]["input"]) == second.input_mtok
    text = _llmctx("prices", "o3", "--provider", "openai", "--at", day_before)
    assert f"In force on {day_before}: until {change}" in text
    history = [line.strip() for line in text.splitlines() if line.strip().startswith("until ")]
    assert history == [f"until {change}: " + history[0].split(": ", 1)[1]]
    assert history[0].endswith("<- in force")


def test_cli_tier_shows_that_tiers_rates_and_the_others() -> None:
    """`--tier flex` shows the data's flex rates; the service-tier table lists the other tiers."""
    info = _genai_info("gpt-5", "openai")
    flex = next(v for v in info.price_variants or () if v.when == {"service_tier": "flex"})
    data = json.loads(_llmctx("prices", "gpt-5", "--provider", "openai", "--tier", "flex",
                              "--at", AFTER_TIERS.date().isoformat(), "--json"))  # fmt: skip
    assert data["service_tier"] == "flex"
    assert Decimal(data["per_mtok_usd"]["input"]) == flex.prices.input_mtok
    assert Decimal(data["per_mtok_usd"]["output"]) == flex.prices.output_mtok
    assert {t["tier"] for t in data["service_tiers"]} >= {"priority", "batch"}
    text = _llmctx("prices", "gpt-5", "--provider", "openai")
    assert "Service tiers" in text
    assert "flex" in text and "priority" in text and "batch" in text


def test_cli_shows_one_hour_cache_write_and_reasoning_rates() -> None:
    """Anthropic's 5-minute and 1-hour write rates and the reasoning rate are shown."""
    price = lookup_price("claude-sonnet-4-5", "anthropic")
    assert price is not None and price.cache_write_1h_per_mtok is not None
    text = _llmctx("prices", "claude-sonnet-4-5", "--provider", "anthropic")
    assert "Cache write, 5 minutes" in text
    assert "Cache write, 1 hour" in text
    assert f"${price.cache_write_1h_per_mtok:.2f}" in text
    assert "Reasoning" in text and "output rate" in text


def test_cli_refuses_an_unknown_tier_and_a_bad_date() -> None:
    """A tier the data has no rates for exits 1 saying so; a bad --at exits 2."""
    err = _llmctx("prices", "gpt-5", "--provider", "openai", "--tier", "scale", code=1)
    assert "no 'scale' service-tier price" in " ".join(err.split())
    err = _llmctx("prices", "gpt-5", "--at", "last tuesday", code=2)
    assert "is not a date" in " ".join(err.split())


# --------------------------------------------------------------------------------------------
# Through the charge path: the real SDKs over a fake transport (no provider is reachable from
# a test, and the point is what the SDK's response makes llmctx charge).


def _anthropic_client(body: dict[str, Any]) -> Any:
    anthropic = pytest.importorskip("anthropic")
    httpx2 = pytest.importorskip("httpx2")

    def handler(request: Any) -> Any:
        return httpx2.Response(200, json=body)

    client = anthropic.Anthropic(
        api_key="sk-ant-test-not-a-real-key-0000",
        base_url="https://llm.example.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return llmctx.instrument(client)


def _openai_client(handler: Any) -> Any:
    """An instrumented openai client whose requests ``handler(request)`` answers."""
    openai = pytest.importorskip("openai")
    httpx2 = pytest.importorskip("httpx2")
    client = openai.OpenAI(
        api_key="sk-test-not-a-real-key-000000",
        base_url="https://llm.example.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return llmctx.instrument(client)


def _anthropic_message(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_prices",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


@pytest.mark.parametrize("service_tier", ["standard", "batch"])
def test_an_anthropic_call_is_charged_its_one_hour_writes_and_tier(service_tier: str) -> None:
    """A Claude call whose usage reports 1-hour cache writes (and the batch tier) is charged
    what calc_price charges for them, through the real anthropic SDK and the charge path."""
    model = "claude-opus-4-6"
    raw = {"input_tokens": 10_045, "output_tokens": 678, "cache_read_input_tokens": 2_000,
           "cache_creation_input_tokens": 300, "service_tier": service_tier,
           "cache_creation": {"ephemeral_5m_input_tokens": 100,
                              "ephemeral_1h_input_tokens": 200}}  # fmt: skip
    client = _anthropic_client(_anthropic_message(model, raw))
    with llmctx.session("anthropic-1h", store="memory:") as s:
        client.messages.create(
            model=model, max_tokens=1_000, messages=[{"role": "user", "content": "hi"}]
        )
    (call,) = s.calls
    context = {"processing": "batch"} if service_tier == "batch" else None
    expected = _genai(model, call.usage, "anthropic", cache_write_1h=200, context=context,
                      at=call.started_at)  # fmt: skip
    assert call.usage.cache_write_tokens == 300
    assert (call.cost, str(call.cost)) == (expected, str(expected))
    assert call.cost != _genai(model, call.usage, "anthropic", context=context, at=call.started_at)


def test_an_openai_flex_request_is_charged_the_flex_rate() -> None:
    """A chat call asking for service_tier="flex" is charged genai-prices' flex rate."""
    httpx2 = pytest.importorskip("httpx2")
    body = {
        "id": "chatcmpl-flex", "object": "chat.completion", "created": 1, "model": "gpt-5",
        "service_tier": "flex",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12_000, "completion_tokens": 900, "total_tokens": 12_900,
                  "completion_tokens_details": {"reasoning_tokens": 500}},
    }  # fmt: skip
    client = _openai_client(lambda request: httpx2.Response(200, json=body))
    with llmctx.session("openai-flex", store="memory:") as s:
        client.chat.completions.create(
            model="gpt-5", service_tier="flex", messages=[{"role": "user", "content": "hi"}]
        )
    (call,) = s.calls
    assert call.usage.reasoning_tokens == 500
    expected = _genai("gpt-5", call.usage, "openai", context={"service_tier": "flex"},
                      at=call.started_at)  # fmt: skip
    assert (call.cost, str(call.cost)) == (expected, str(expected))


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_call_is_charged_the_tier_it_was_served_at(stream: bool) -> None:
    """A chat call asking for service_tier="auto" and served at "priority" (the response says
    so) is charged the priority rate, whole or streamed, and its record names the tier."""
    httpx2 = pytest.importorskip("httpx2")
    usage = {"prompt_tokens": 12_000, "completion_tokens": 900, "total_tokens": 12_900}
    head = {"id": "chatcmpl-tier", "created": 1, "model": "gpt-5", "service_tier": "priority"}
    if stream:
        chunks = [
            {**head, "object": "chat.completion.chunk", "usage": None,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                          "finish_reason": "stop"}]},
            {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage},
        ]  # fmt: skip
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        reply = httpx2.Response(
            200, content=text.encode(), headers={"content-type": "text/event-stream"}
        )
    else:
        reply = httpx2.Response(200, json={
            **head, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
        })  # fmt: skip
    client = _openai_client(lambda request: reply)
    with llmctx.session("openai-tier", store="memory:") as s:
        asked = {
            "model": "gpt-5",
            "service_tier": "auto",
            "messages": [{"role": "user", "content": "hi"}],
        }
        if stream:
            for _ in client.chat.completions.create(
                **asked, stream=True, stream_options={"include_usage": True}
            ):
                pass
        else:
            client.chat.completions.create(**asked)
    (call,) = s.calls
    assert call.metadata["service_tier"] == "priority"
    expected = _genai("gpt-5", call.usage, "openai", context={"service_tier": "priority"},
                      at=call.started_at)  # fmt: skip
    assert (call.cost, str(call.cost)) == (expected, str(expected))
    assert call.cost != _genai("gpt-5", call.usage, "openai", at=call.started_at)


def test_a_request_for_a_dearer_tier_reserves_that_tiers_price() -> None:
    """A budgeted request asking for service_tier="priority" reserves the priority worst case
    (refused where the standard one would fit, nothing sent), and one asking for a tier the
    model has no price at is refused as unpriced, naming the tier."""
    httpx2 = pytest.importorskip("httpx2")
    sent: list[Any] = []

    def reply(request: Any) -> Any:
        sent.append(request)
        return httpx2.Response(200, json={
            "id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": "gpt-5",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
        })  # fmt: skip

    client = _openai_client(reply)
    messages = [{"role": "user", "content": "hi"}]
    standard = estimate_cost("gpt-5", 100, 1_000, "openai")
    priority = estimate_cost("gpt-5", 100, 1_000, "openai", service_tier="priority")
    assert standard is not None and priority is not None and priority > standard
    for same in ("auto", "default", "standard", "standard_only"):  # OpenAI's and Anthropic's
        assert estimate_cost("gpt-5", 100, 1_000, "openai", service_tier=same) == standard
    budget = llmctx.Budget(usd=str(standard * 3 / 2))  # fits standard, not priority
    with llmctx.session("tiers", budget=budget, store="memory:"):
        with pytest.raises(llmctx.BudgetExceeded) as refused:
            client.chat.completions.create(
                model="gpt-5", service_tier="priority", max_completion_tokens=1_000,
                messages=messages,
            )  # fmt: skip
        assert refused.value.requested > refused.value.limit and not sent
        client.chat.completions.create(
            model="gpt-5", service_tier="auto", max_completion_tokens=1_000, messages=messages
        )
        assert len(sent) == 1
        with pytest.raises(llmctx.UnknownPrice, match="no 'flex' service-tier price") as unpriced:
            client.chat.completions.create(
                model="gpt-4o", service_tier="flex", max_completion_tokens=10, messages=messages
            )
        assert unpriced.value.service_tier == "flex" and len(sent) == 1


def test_cli_at_a_time_prices_the_example_at_that_hour() -> None:
    """For an hour-dependent price (deepseek), `--at TIME` prices the example at that hour."""
    for moment in ("2026-01-01T03:00:00+00:00", "2026-01-01T18:00:00+00:00"):
        data = json.loads(_llmctx("prices", "deepseek-chat", "--at", moment, "--json"))
        expected = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1_000, output_tokens=1_000),
            "deepseek-chat",
            genai_request_timestamp=datetime.fromisoformat(moment),
        ).total_price
        assert Decimal(data["example"]["cost_usd"]) == expected
        assert data["at"] == moment
