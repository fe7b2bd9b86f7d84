"""Cost of pricing one call: llmctx's cached ``price_usage`` against ``genai_prices.calc_price``.

Run from a checkout::

    python benchmarks/bench_pricing.py            # about 10 s
    python benchmarks/bench_pricing.py --quick    # about 2 s, noisier

Prints a Markdown table of microseconds per call (best of several repeats, so the figure is
the cost on an idle core), and checks on the way that both sides agree on every cost. Token
counting (the offline estimate used for reservations) is measured too.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import genai_prices

from llmctx._pricing import estimate_cost, lookup_price, price_usage
from llmctx._tokens import count_tokens
from llmctx._usage import Usage

USAGE = Usage(
    input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000, cache_write_tokens=300
)
CASES = [
    ("gpt-4o", "openai", "flat price"),
    ("claude-sonnet-4-5-20250929", "anthropic", "tiered price"),
    ("gemini-2.5-pro", "google", "tiered price"),
]
PROSE = (
    "Budgets are checked before the request goes out, with a reservation, not after. "
    "A money budget never treats an unknown price as zero dollars. "
) * 7  # ~1 KB


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` microseconds per call of ``fn``."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    number, repeat = (2_000, 3) if args.quick else (20_000, 5)
    slow_number = max(200, number // 20)

    rows: list[tuple[str, str, float]] = []
    genai_usage = genai_prices.Usage(
        input_tokens=USAGE.input_tokens,
        output_tokens=USAGE.output_tokens,
        cache_read_tokens=USAGE.cache_read_tokens,
        cache_write_tokens=USAGE.cache_write_tokens,
    )
    for model, provider, kind in CASES:
        assert lookup_price(model, provider) is not None  # warm the cache (first lookup: ~ms)
        ours, _ = price_usage(model, USAGE, provider)
        theirs = genai_prices.calc_price(genai_usage, model, provider_id=provider).total_price
        assert ours == theirs, (model, ours, theirs)

        def ours_fn(m: str = model, p: str = provider) -> object:
            return price_usage(m, USAGE, p)

        def theirs_fn(m: str = model, p: str = provider) -> object:
            return genai_prices.calc_price(genai_usage, m, provider_id=p)

        def estimate_fn(m: str = model, p: str = provider) -> object:
            return estimate_cost(m, 12_345, 1_024, p)

        rows.append((f"llmctx price_usage ({kind})", model, per_call_us(ours_fn, number, repeat)))
        rows.append(
            (
                f"genai_prices.calc_price ({kind})",
                model,
                per_call_us(theirs_fn, slow_number, repeat),
            )
        )
        rows.append(
            (f"llmctx estimate_cost ({kind})", model, per_call_us(estimate_fn, number, repeat))
        )

    rows.append(
        (
            "llmctx lookup_price (cached)",
            "gpt-4o",
            per_call_us(lambda: lookup_price("gpt-4o", "openai"), number, repeat),
        )
    )
    big = PROSE * 100
    rows.append(
        (
            f"count_tokens estimate, {len(PROSE):,} chars",
            "-",
            per_call_us(lambda: count_tokens(PROSE), number // 4, repeat),
        )
    )
    rows.append(
        (
            f"count_tokens estimate, {len(big):,} chars",
            "-",
            per_call_us(lambda: count_tokens(big), max(20, number // 400), repeat),
        )
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": PROSE}]},
    ]
    rows.append(
        (
            "count_tokens estimate, 2 chat messages",
            "-",
            per_call_us(lambda: count_tokens(messages), number // 4, repeat),
        )
    )

    print("| operation | model | us per call |")
    print("| --- | --- | ---: |")
    for what, model, us in rows:
        print(f"| {what} | {model} | {us:,.2f} |")


if __name__ == "__main__":
    main()
