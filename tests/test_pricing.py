"""Prices: genai-prices lookups, the fast path's exactness, overrides, and ``llmctx prices``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import types as gt
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

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
