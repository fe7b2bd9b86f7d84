"""The prices file: where it is found, how `llmctx prices set|rm|ls` edit it, that programs and
the CLI charge the same price from it, its precedence, and what a broken file does (fail
closed under a money budget, a warning without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import llmctx
from llmctx import _prices_file, _pricing
from llmctx._cli.app import app
from llmctx._prices_file import PricesFileError
from llmctx._pricing import (
    LOCAL_MODEL_NAMES,
    clear_prices,
    estimate_cost,
    lookup_price,
    price_usage,
    reload_prices,
    set_price,
)
from llmctx._usage import Usage
from llmctx.testing import FakeModel

runner = CliRunner()
THOUSAND = " ".join(["word"] * 1_000)


@pytest.fixture
def prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """LLMCTX_PRICES names a fresh (not yet existing) file; no price is set in code."""
    path = tmp_path / "conf" / "prices.toml"
    monkeypatch.setenv("LLMCTX_PRICES", str(path))
    clear_prices()
    reload_prices()
    yield path
    clear_prices()


def _cli(*args: str, code: int = 0) -> str:
    """The command's output: JSON as printed, text with its line wrapping undone."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output if "--json" in args else _flat(result.output)


def _flat(out: str) -> str:
    """Output without rich's error box and line breaks, for messages that may wrap."""
    return " ".join(out.replace("│", " ").split())


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    reload_prices()


# --------------------------------------------------------------------------------------------
# Where the file is.


def test_the_file_is_found_env_then_user_config_then_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLMCTX_PRICES wins, else the per-user prices.toml, else the nearest llmctx.toml upwards."""
    monkeypatch.delenv("LLMCTX_PRICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    project = tmp_path / "project"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    (project / "llmctx.toml").write_text('[prices."p"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n')
    monkeypatch.chdir(deep)
    found = _prices_file.locate()
    assert found is not None and found.chosen_by == "project"
    assert found.path == project / "llmctx.toml"

    user = _prices_file.user_prices_path()
    assert user == tmp_path / "config" / "llmctx" / "prices.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    found = _prices_file.locate()
    assert found is not None and (found.chosen_by, found.path) == ("user config", user)

    monkeypatch.setenv("LLMCTX_PRICES", str(tmp_path / "elsewhere.toml"))
    found = _prices_file.locate()
    assert found is not None and found.chosen_by == "LLMCTX_PRICES"
    assert found.path == tmp_path / "elsewhere.toml"


def test_a_project_llmctx_toml_prices_calls_and_keeps_its_other_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project llmctx.toml's [prices] tables price calls; its other tables are left alone."""
    monkeypatch.delenv("LLMCTX_PRICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "llmctx.toml").write_text(
        '[tool]\nname = "x"\n\n[prices."proj-model"]\ninput_per_mtok = 2\noutput_per_mtok = 4\n'
    )
    monkeypatch.chdir(tmp_path)
    reload_prices()
    price = lookup_price("proj-model")
    assert price is not None and price.source == "file"
    assert price.origin == f"{tmp_path / 'llmctx.toml'}, line 4"
    out = _cli("prices", "proj-model")
    assert "the project's llmctx.toml" in out


# --------------------------------------------------------------------------------------------
# Programs and the CLI agree.


def test_prices_set_is_what_a_program_is_charged(prices: Path) -> None:
    """After `llmctx prices set`, another process is charged the price `llmctx prices` shows."""
    _cli("prices", "set", "house-model", "--input", "0.20", "--output", "0.60")
    shown = json.loads(_cli("prices", "house-model", "--json"))
    assert shown["source"] == "file"
    assert shown["per_mtok_usd"]["input"] == "0.2"
    assert shown["origin"] == f"{prices}, line 4"
    program = (
        "import llmctx\n"
        "from llmctx.testing import FakeModel\n"
        "m = FakeModel('house-model', provider='acme', reply=' '.join(['w'] * 1000))\n"
        "with llmctx.session('agree', store='memory:', budget=llmctx.Budget(usd='1')) as s:\n"
        f"    m.complete({THOUSAND!r}, max_tokens=1000)\n"
        "print(s.cost, s.calls[0].cost)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    session_cost, call_cost = done.stdout.split()
    assert Decimal(session_cost) == Decimal(call_cost) == Decimal(shown["example"]["cost_usd"])
    assert Decimal(session_cost) == Decimal("0.0008")  # 1k * 0.20/M + 1k * 0.60/M
    # And this process, which ran the CLI, sees the same price.
    price = lookup_price("house-model")
    assert price is not None and price.input_per_mtok == Decimal("0.20")


def test_precedence_is_code_then_file_then_genai_prices(prices: Path) -> None:
    """Code beats the file, the file beats genai-prices; `prices MODEL` names what it shadows."""
    _cli("prices", "set", "gpt-4o", "--input", "3", "--output", "12")
    price = lookup_price("gpt-4o", "openai")
    assert price is not None and price.source == "file"
    out = _cli("prices", "gpt-4o", "--provider", "openai")
    assert f"Source: prices file {prices}, line 4 (named by LLMCTX_PRICES)" in out
    assert "Shadows: genai-prices 0.2" in out and "$2.50 input, $10.00 output" in out

    with llmctx.price_override("gpt-4o", input_per_mtok="1", output_per_mtok="1"):
        price = lookup_price("gpt-4o", "openai")
        assert price is not None and price.source == "code"
        data = json.loads(_cli("prices", "gpt-4o", "--json"))
        assert data["source"] == "code" and data["origin"] == "llmctx.price_override"
        assert [s["source"] for s in data["shadowed"]] == ["file", "genai-prices"]
    price = lookup_price("gpt-4o", "openai")
    assert price is not None and price.source == "file"  # the block's end restores the file's
    _cli("prices", "rm", "gpt-4o")
    price = lookup_price("gpt-4o", "openai")
    assert price is not None and price.source == "genai-prices"


def test_a_running_program_sees_an_edit_at_its_next_check(prices: Path) -> None:
    """An edit of the file is picked up at the next check (once a second), without a reload."""
    _write(prices, '[prices."live"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n')
    assert price_usage("live", Usage(input_tokens=1_000_000))[0] == Decimal(1)
    prices.write_text('[prices."live"]\ninput_per_mtok = 5\noutput_per_mtok = 1\n# longer\n')
    _pricing._file_next_check = 0.0  # the second has passed
    assert price_usage("live", Usage(input_tokens=1_000_000))[0] == Decimal(5)


# --------------------------------------------------------------------------------------------
# Editing.


def test_set_keeps_other_entries_and_comments(prices: Path) -> None:
    """set rewrites only its entry's lines: comments, other entries and other tables stay."""
    original = (
        "# team prices, reviewed monthly\n"
        "\n"
        "[prices.alpha]  # the old one\n"
        "input_per_mtok = 1.5   # per MTok\n"
        'output_per_mtok = "2.5"\n'
        "\n"
        "# beta is negotiated\n"
        '[prices."beta"]\n'
        "input_per_mtok = 0.1\n"
        "output_per_mtok = 0.2\n"
        "\n"
        "[other]\n"
        "keep = true\n"
    )
    _write(prices, original)
    _cli("prices", "set", "beta", "--input", "0.15", "--output", "0.30", "--cached-input", "0.03")
    _cli("prices", "set", "gamma", "--input", "7", "--output", "9", "--provider", "acme")
    text = prices.read_text()
    assert text.startswith(original.split("# beta")[0])  # the header comment and alpha, whole
    assert "# beta is negotiated\n" in text
    assert "[other]\nkeep = true\n" in text
    assert '[prices."beta"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.30\n' in text
    assert "cache_read_per_mtok = 0.03\n" in text
    assert text.endswith(
        '[prices."gamma"]\ninput_per_mtok = 7\noutput_per_mtok = 9\nprovider = "acme"\n'
    )
    alpha, beta, gamma = (lookup_price(m, "acme") for m in ("alpha", "BETA", "gamma"))
    assert alpha is not None and alpha.output_per_mtok == Decimal("2.5")
    assert beta is not None and beta.cache_read_per_mtok == Decimal("0.03")
    assert gamma is not None and gamma.provider == "acme"
    assert lookup_price("gamma", "other") is None  # restricted to its provider

    _cli("prices", "rm", "beta")
    text = prices.read_text()
    assert "beta" not in text.replace("# beta is negotiated", "")
    assert "[prices.alpha]  # the old one" in text and '[prices."gamma"]' in text
    assert lookup_price("beta") is None


def test_set_creates_the_file_with_exact_numbers(prices: Path) -> None:
    """A first set creates the file (and its directory); numbers are read back exactly."""
    out = _cli("prices", "set", "exact", "--input", "0.123456789012345678901", "--output", "$2")
    assert f"in {prices}, line 4." in out
    assert prices.read_text().startswith("# llmctx prices: US dollars per million tokens")
    price = lookup_price("exact")
    assert price is not None
    assert price.input_per_mtok == Decimal("0.123456789012345678901")
    assert price.output_per_mtok == Decimal(2)
    data = json.loads(_cli("prices", "set", "exact", "--input", "1", "--output", "2", "--json"))
    assert data == {
        "file": str(prices),
        "model": "exact",
        "provider": None,
        "line": 4,
        "per_mtok_usd": {
            "input": "1",
            "output": "2",
            "cache_read": None,
            "cache_write": None,
            "cache_write_1h": None,
            "reasoning": None,
        },
        "in_force": True,
    }


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--input", "abc", "--output", "1"], "--input"),
        (["--input", "1", "--output", "-2"], "--output"),
        (["--input", "1", "--output", "1", "--cached-input", "NaN"], "--cached-input"),
        (["--input", "1", "--output", "1", "--cache-write", "1e999999999"], "--cache-write"),
    ],
)
def test_set_refuses_a_bad_number_and_writes_nothing(
    prices: Path, args: list[str], option: str
) -> None:
    """A rate that is not a number >= 0 exits 2 naming the option; no file is created."""
    result = runner.invoke(app, ["prices", "set", "m", *args])
    assert result.exit_code == 2
    out = _flat(result.output)
    assert f"Invalid value for {option}" in out and "US dollars per million tokens" in out
    assert not prices.exists()


def test_rm_of_a_missing_entry_exits_1(prices: Path) -> None:
    """rm of a model the file does not price exits 1 and says how to list what it has."""
    _cli("prices", "set", "a", "--input", "1", "--output", "1")
    before = prices.read_text()
    out = _cli("prices", "rm", "b", code=1)
    assert "has no price for 'b'" in out and "llmctx prices ls" in out
    assert prices.read_text() == before


def test_an_entry_that_is_not_a_table_is_not_rewritten(prices: Path) -> None:
    """An inline-table entry is left as is: set exits 2 with how to fix it, the file unchanged."""
    original = "[prices]\ninline = { input_per_mtok = 1, output_per_mtok = 2 }\n"
    _write(prices, original)
    out = _cli("prices", "set", "inline", "--input", "3", "--output", "4", code=2)
    assert "cannot change it without touching other lines" in out and "Edit it by hand" in out
    assert prices.read_text() == original
    # Another model can still be added beside it.
    _cli("prices", "set", "other", "--input", "3", "--output", "4")
    assert prices.read_text().startswith(original)
    inline = lookup_price("inline")
    assert inline is not None and inline.output_per_mtok == Decimal(2)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    prices: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the replace fails (a fake os.replace: a full disk cannot be staged), the old file stays."""
    _cli("prices", "set", "a", "--input", "1", "--output", "1")
    before = prices.read_text()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_prices_file.os, "replace", broken_replace)
    out = _cli("prices", "set", "b", "--input", "1", "--output", "1", code=2)
    assert "No space left on device" in out
    assert prices.read_text() == before
    assert sorted(p.name for p in prices.parent.iterdir()) == ["prices.toml"]


def test_ls_lists_the_file_and_its_entries(prices: Path) -> None:
    """ls names the file and why it is the one, then its entries, within 80 columns."""
    assert "does not exist yet" in _cli("prices", "ls")
    _cli("prices", "set", "a-long-model-name-for-the-table", "--input", "1", "--output", "2")
    result = runner.invoke(app, ["prices", "ls"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert f"Prices file: {prices} (named by LLMCTX_PRICES)" in _flat(result.stdout)
    assert "a-long-model-name-for-the-table" in result.stdout and "$2.00" in result.stdout
    data = json.loads(_cli("prices", "ls", "--json"))
    assert data["prices_file"] == {
        "path": str(prices),
        "chosen_by": "LLMCTX_PRICES",
        "exists": True,
    }
    assert data["entries"][0]["per_mtok_usd"]["output"] == "2"


# --------------------------------------------------------------------------------------------
# A broken file.


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('[prices."m"]\ninput_per_mtok = 1\noutput_per_mtok = \n', 3, "not valid TOML"),
        (
            '[prices."m"]\ninput_per_mtok = -1\noutput_per_mtok = 1\n',
            2,
            "must be a finite number >= 0",
        ),
        (
            '\n[prices."m"]\ninput_per_mtok = 1\nouput_per_mtok = 1\n',
            4,
            "did you mean output_per_mtok?",
        ),
        ('[prices."m"]\ninput_per_mtok = 1\n', 1, "has no output_per_mtok"),
        (
            '[prices."m"]\ninput_per_mtok = "cheap"\noutput_per_mtok = 1\n',
            2,
            "must be a finite number",
        ),
        ('["m"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n', None, "is not under [prices]"),
    ],
)
def test_a_bad_file_is_an_error_naming_file_line_and_fix(
    prices: Path, text: str, line: int | None, says: str
) -> None:
    """`llmctx prices` exits 2 with the file, the line and what to do; lookups raise the same."""
    _write(prices, text)
    out = _cli("prices", "gpt-4o", code=2)
    where = f"prices file {prices}, line {line}:" if line else f"prices file {prices}:"
    assert where in out
    assert says in out
    assert "Fix" in out or "Name it" in out or "Add a line" in out
    with pytest.raises(PricesFileError) as caught:
        lookup_price("gpt-4o")
    assert caught.value.path == prices and caught.value.line == line
    assert isinstance(caught.value, llmctx.ConfigError)


def test_a_bad_file_fails_closed_under_a_money_budget(prices: Path) -> None:
    """With a broken file a budgeted call is refused before it is sent; code prices still work."""
    _write(prices, '[prices."gpt-4o"]\ninput_per_mtok = -1\noutput_per_mtok = 1\n')
    model = FakeModel("gpt-4o", provider="openai")
    with llmctx.session("fail-closed", store="memory:", budget=llmctx.Budget(usd="1")) as s:
        with pytest.raises(PricesFileError, match="line 2"):
            model.complete("hello")
        assert model.requests_sent == 0 and s.calls == []
        assert s.remaining()["usd"] == Decimal(1)  # nothing stays reserved
        set_price("gpt-4o", input_per_mtok=1, output_per_mtok=1)
        model.complete("hello")  # code wins over the file: priced, so it is sent
        assert model.requests_sent == 1 and s.cost is not None and s.cost > 0
    with pytest.raises(PricesFileError):
        estimate_cost("claude-haiku-4-5", 10, 10)


def test_a_bad_file_without_a_money_budget_runs_the_call_unpriced_and_warns(
    prices: Path,
) -> None:
    """Without a money budget the call runs, is recorded with no cost, and a warning names the file."""
    _write(prices, '[prices."x"]\ninput_per_mtok = 1\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with llmctx.session("warned", store="memory:", budget=llmctx.Budget(tokens=1000)) as s:
            reply = FakeModel("claude-haiku-4-5", provider="anthropic").complete("hello there")
    assert reply.record.status == "ok" and reply.record.cost is None
    assert s.usage.requests == 1
    messages = [
        str(w.message) for w in caught if issubclass(w.category, llmctx.UnknownPriceWarning)
    ]
    assert any(
        f"prices file {prices}, line 1" in m and "has no output_per_mtok" in m for m in messages
    )
    cost, reason = price_usage("claude-haiku-4-5", Usage(input_tokens=1), "anthropic")
    assert cost is None and reason is not None and str(prices) in reason


def test_set_can_fix_the_broken_entry_itself(prices: Path) -> None:
    """set (or rm) of the entry that breaks the file replaces it, and the file works again."""
    _write(
        prices,
        '[prices."ok"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n\n[prices."bad"]\ninput_per_mtok = -1\n',
    )
    _cli("prices", "set", "bad", "--input", "1", "--output", "3")
    bad = lookup_price("bad")
    assert bad is not None and bad.output_per_mtok == Decimal(3)
    _write(prices, prices.read_text() + '\n[prices."worse"]\ninput_per_mtok = x\n')
    _cli("prices", "gpt-4o", code=2)
    _cli("prices", "rm", "worse")
    assert lookup_price("ok") is not None


# --------------------------------------------------------------------------------------------
# The bundled local model.


@pytest.mark.parametrize(
    "args",
    [
        ["SmolLM2-135M-Instruct"],
        ["llama-cpp/SmolLM2-135M-Instruct"],
        ["smollm2-135m-instruct", "--provider", "llama-cpp"],
        ["SmolLM2-135M-Instruct.Q4_1"],
    ],
)
def test_the_bundled_model_shows_as_free_local_model(prices: Path, args: list[str]) -> None:
    """`llmctx prices` shows the bundled model at $0 with source "local model" and exits 0."""
    out = _cli("prices", *args)
    assert "Source: local model" in out and "$0.00" in out
    data = json.loads(_cli("prices", *args, "--json"))
    assert data["source"] == "local model" and data["example"]["cost_usd"] == "0"
    assert data["model"] == "SmolLM2-135M-Instruct"


def test_the_local_model_names_are_the_bundled_models() -> None:
    """The names priced as the local model are the bundled model's record name and file stem."""
    from llmctx.providers import LOCAL_MODEL_NAME, local_model_path

    assert (LOCAL_MODEL_NAME, local_model_path().name.removesuffix(".gguf")) == LOCAL_MODEL_NAMES


def test_another_llama_cpp_model_shows_as_free_like_its_calls(prices: Path) -> None:
    """An unpriced llama.cpp model shows as $0 (as its calls are charged), not as unknown."""
    out = _cli("prices", "my-finetune.Q8_0", "--provider", "llama-cpp")
    assert "Source: local model: llama.cpp runs it on this machine" in out
    assert lookup_price("my-finetune.Q8_0", "llama-cpp") is None  # not a price: the rule of calls


def test_the_local_model_priced_in_the_file_is_charged_and_a_bad_file_refuses_it(
    prices: Path,
) -> None:
    """The real local model is charged the file's price; a broken file refuses it under a money budget."""
    llm = llmctx.local_model(n_ctx=512)
    messages = [{"role": "user", "content": "Say hi."}]
    _cli("prices", "set", "SmolLM2-135M-Instruct", "--input", "1000", "--output", "2000")
    with llmctx.session("local-priced", store="memory:", budget=llmctx.Budget(usd="5")) as s:
        llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)
    call = s.calls[0]
    expected = (
        Decimal(1000) * call.usage.input_tokens + Decimal(2000) * call.usage.output_tokens
    ) / 1_000_000
    assert call.cost == expected and call.cost > 0

    _write(prices, '[prices."SmolLM2-135M-Instruct"]\ninput_per_mtok = 1000\n')
    with llmctx.session("local-refused", store="memory:", budget=llmctx.Budget(usd="5")) as s:
        with pytest.raises(PricesFileError, match="has no output_per_mtok"):
            llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)
        assert s.calls == [] and s.remaining()["usd"] == Decimal(5)

    prices.unlink()
    reload_prices()
    with llmctx.session("local-free", store="memory:", budget=llmctx.Budget(usd="5")) as s:
        llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)
    assert s.calls[0].cost == 0


def test_prices_output_fits_80_columns_with_words_whole(prices: Path) -> None:
    """show, set and ls wrap at 80 columns (a pipe's width) between words, never inside one."""
    result = runner.invoke(app, ["prices", "SmolLM2-135M-Instruct"], env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "llmctx prices set SmolLM2-135M-Instruct --input USD --output USD" in _flat(
        result.stdout
    )
    for args in (
        ["prices", "set", "gpt-4o", "--input", "3", "--output", "12"],
        ["prices", "gpt-4o"],
        ["prices", "ls"],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.stdout.splitlines()) <= 80
    _cli("prices", "rm", "gpt-4o")
    result = runner.invoke(app, ["prices", "gpt-4o", "-p", "openai"], env={"COLUMNS": "80"})
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "$10.00 per 1K web searches" in _flat(result.stdout)


# --------------------------------------------------------------------------------------------
# Service tiers, dated prices and 1-hour / reasoning rates in the file.

HOUSE_FILE = """\
[prices."house-model"]
input_per_mtok = 0.20
output_per_mtok = 0.60
cache_write_per_mtok = 0.25
cache_write_1h_per_mtok = 0.40
reasoning_per_mtok = 0.90

[prices."house-model".service_tiers.flex]   # OpenAI-style flex calls
input_per_mtok = 0.10
output_per_mtok = 0.30
since = 2026-03-01

[prices."house-model".service_tiers.batch]
output_per_mtok = 0.25

[[prices."house-model".changes]]
since = 2026-06-01
input_per_mtok = 0.30
output_per_mtok = 0.90
cache_write_per_mtok = 0.35
cache_write_1h_per_mtok = 0.50
"""


def _house_genai() -> tuple[Any, Any]:
    """The same prices written as genai-prices data, to price with its own calc_price."""
    from genai_prices import types as gt

    base = gt.ModelPrice(input_mtok=Decimal("0.20"), output_mtok=Decimal("0.60"),
                         cache_write_mtok=Decimal("0.25"), cache_write_1h_mtok=Decimal("0.40"),
                         output_reasoning_mtok=Decimal("0.90"))  # fmt: skip
    changed = gt.ModelPrice(input_mtok=Decimal("0.30"), output_mtok=Decimal("0.90"),
                            cache_write_mtok=Decimal("0.35"),
                            cache_write_1h_mtok=Decimal("0.50"))  # fmt: skip
    info = gt.ModelInfo(
        id="house-model",
        match=gt.ClauseEquals(equals="house-model"),
        prices=[
            gt.ConditionalPrice(prices=base),
            gt.ConditionalPrice(
                constraint=gt.StartDateConstraint(start_date=date(2026, 6, 1)), prices=changed
            ),
        ],
        price_variants=[
            gt.PriceVariant(
                when={"service_tier": "flex"},
                prices=gt.ModelPrice(input_mtok=Decimal("0.10"), output_mtok=Decimal("0.30")),
                constraint=gt.StartDateConstraint(start_date=date(2026, 3, 1)),
            ),
            gt.PriceVariant(
                when={"processing": "batch"}, prices=gt.ModelPrice(output_mtok=Decimal("0.25"))
            ),
        ],
    )
    return gt.Provider(id="house", name="house", api_pattern="", models=[info]), info


@pytest.mark.parametrize(
    ("tier", "context"),
    [(None, None), ("flex", {"service_tier": "flex"}), ("batch", {"processing": "batch"})],
)
@pytest.mark.parametrize("day", [date(2026, 4, 1), date(2026, 6, 1), date(2026, 12, 25)])
def test_file_tiers_changes_and_ttl_rates_cost_what_calc_price_charges(
    prices: Path, tier: str | None, context: dict[str, str] | None, day: date
) -> None:
    """A file entry's tiers, dated changes, 1-hour and reasoning rates cost what genai-prices'
    calc_price charges for the same rates written as its data."""
    import genai_prices

    _write(prices, HOUSE_FILE)
    gprovider, info = _house_genai()
    at = datetime(day.year, day.month, day.day, 9, 30, tzinfo=UTC)
    usage = Usage(input_tokens=20_000, output_tokens=3_000, cache_read_tokens=5_000,
                  cache_write_tokens=4_000, reasoning_tokens=1_000)  # fmt: skip
    raw = {"cache_creation": {"ephemeral_5m_input_tokens": 1_500,
                              "ephemeral_1h_input_tokens": 2_500}}  # fmt: skip
    cost, reason = price_usage("house-model", usage, raw_usage=raw, service_tier=tier, at=at)
    expected = info.calc_price(
        genai_prices.Usage(input_tokens=20_000, output_tokens=3_000, cache_read_tokens=5_000,
                           cache_write_tokens=4_000, cache_write_1h_tokens=2_500,
                           output_reasoning_tokens=1_000),
        gprovider, genai_request_timestamp=at, price_context=context,
    ).total_price  # fmt: skip
    assert reason is None
    assert (cost, str(cost)) == (expected, str(expected))


def test_a_file_tier_before_its_since_date_is_unpriced(prices: Path) -> None:
    """A flex call before the file's flex rates begin has no cost and says how to fix it."""
    _write(prices, HOUSE_FILE)
    cost, reason = price_usage("house-model", Usage(input_tokens=10, output_tokens=10),
                               service_tier="flex", at=datetime(2026, 2, 1, tzinfo=UTC))  # fmt: skip
    assert cost is None
    assert reason is not None
    assert f"the prices file ({prices}, line 1)" in reason
    assert "no 'flex' service-tier price for model 'house-model' on 2026-02-01" in reason
    assert "priority" not in reason
    cost, reason = price_usage("house-model", Usage(input_tokens=10, output_tokens=10),
                               service_tier="priority")  # fmt: skip
    assert cost is None and reason is not None and '"house-model".service_tiers.priority' in reason


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[prices."m".service_tiers.flex]\ninptu_per_mtok = 0.5\n', 5,
         "unknown key 'inptu_per_mtok' in the 'flex' service tier of 'm' (did you mean "
         "input_per_mtok?)"),
        ('[prices."m".service_tiers.default]\ninput_per_mtok = 0.5\n', 4,
         "rates for a service tier named 'default', which is the standard price"),
        ('[prices."m".service_tiers.flex]\nsince = 2026-01-01\n', 4,
         "the 'flex' service tier of 'm' has no rates"),
        ('[prices."m".service_tiers.flex]\ninput_per_mtok = -1\n', 5,
         "service_tiers.flex.input_per_mtok of 'm' must be a finite number >= 0"),
        ("[[prices.\"m\".changes]]\ninput_per_mtok = 1\noutput_per_mtok = 1\n", 4,
         "a dated price of 'm' has no since date"),
        ("[[prices.\"m\".changes]]\nsince = 2026-01-01\ninput_per_mtok = 1\n", 4,
         "the price of 'm' since 2026-01-01 has no output_per_mtok"),
        ("[[prices.\"m\".changes]]\nsince = \"Jan 1\"\ninput_per_mtok = 1\noutput_per_mtok = 1\n",
         5, "since of a dated price of 'm' must be a date such as 2026-01-01"),
        ("[[prices.\"m\".changes]]\nsince = 2026-01-01T10:00:00\ninput_per_mtok = 1\n"
         "output_per_mtok = 1\n", 5, "must be a date such as 2026-01-01 (a UTC day)"),
        ("[[prices.\"m\".changes]]\nsince = 2026-01-01\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
         "[[prices.\"m\".changes]]\nsince = 2026-01-01\ninput_per_mtok = 2\noutput_per_mtok = 2\n",
         9, "two prices of 'm' since 2026-01-01"),
        ("[[prices.\"m\".changes]]\nsince = 2026-01-01\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
         "cache_write_1h_per_mtok = 2\n", 8,
         "has cache_write_1h_per_mtok but no cache_write_per_mtok"),
        ("changes = 3\n", 4, "changes of 'm' must be an array of tables"),
        ("service_tiers = 3\n", 4, "service_tiers of 'm' must hold one table of rates per tier"),
    ],
)  # fmt: skip
def test_bad_tier_and_change_entries_name_the_line_and_the_fix(
    prices: Path, text: str, line: int, message: str
) -> None:
    """Each broken tier or dated price is a PricesFileError naming the file, the line, the
    problem and the fix, and `llmctx prices` exits 2 with it."""
    _write(prices, '[prices."m"]\ninput_per_mtok = 1\noutput_per_mtok = 2\n' + text)
    with pytest.raises(PricesFileError) as caught:
        _prices_file.read(prices)
    assert caught.value.line == line, str(caught.value)
    assert message in str(caught.value)
    assert f"prices file {prices}, line {line}: " in str(caught.value)
    assert message.split(" (")[0] in _cli("prices", "m", code=2)


def test_set_keeps_tiers_and_changes_and_rm_takes_them_along(prices: Path) -> None:
    """`prices set` rewrites the standard rates only; `--tier` writes one tier's table; `rm`
    removes the entry with all its tables, leaving the other entries and comments."""
    _write(prices, "# my prices\n" + HOUSE_FILE + '\n[prices."other"]  # keep\n'
           "input_per_mtok = 1\noutput_per_mtok = 2\n")  # fmt: skip
    # A 1-hour rate needs the 5-minute one: refused, nothing written.
    before = prices.read_text()
    assert "no cache_write_per_mtok" in _cli("prices", "set", "house-model", "--input", "0.21",
                                             "--output", "0.61", "--cache-write-1h", "0.41",
                                             code=2)  # fmt: skip
    assert prices.read_text() == before
    _cli("prices", "set", "house-model", "--input", "0.21", "--output", "0.61",
         "--cache-write", "0.26", "--cache-write-1h", "0.41")  # fmt: skip
    entry = _prices_file.read(prices)["house-model"]
    assert entry.rates == {"input_per_mtok": Decimal("0.21"), "output_per_mtok": Decimal("0.61"),
                           "cache_write_per_mtok": Decimal("0.26"),
                           "cache_write_1h_per_mtok": Decimal("0.41")}  # fmt: skip
    assert [t.tier for t in entry.tiers] == ["flex", "batch"]
    assert [c.since for c in entry.changes] == [date(2026, 6, 1)]
    out = _cli("prices", "set", "house-model", "--tier", "priority", "--output", "1.5", "--json")
    written = json.loads(out)
    assert written["tier"] == "priority" and written["per_mtok_usd"]["output"] == "1.5"
    assert prices.read_text().splitlines()[written["line"] - 1] == (
        '[prices."house-model".service_tiers.priority]'
    )
    _cli("prices", "set", "house-model", "--tier", "flex", "--input", "0.09", "--since",
         "2026-04-01")  # fmt: skip
    tiers = {t.tier: t for t in _prices_file.read(prices)["house-model"].tiers}
    assert tiers["flex"].rates == {"input_per_mtok": Decimal("0.09")}
    assert tiers["flex"].since == date(2026, 4, 1)
    assert set(tiers) == {"flex", "batch", "priority"}
    price = lookup_price("house-model", service_tier="priority")
    assert price is not None and price.output_per_mtok == Decimal("1.5")
    _cli("prices", "rm", "house-model")
    text = prices.read_text()
    assert "house-model" not in text
    assert text.startswith("# my prices\n")
    assert '[prices."other"]  # keep' in text
    assert list(_prices_file.read(prices)) == ["other"]


def test_set_tier_needs_the_entry_and_a_tier_name(prices: Path) -> None:
    """`--tier` on a model with no entry, a standard tier name, or no rate exits 2, writing
    nothing."""
    assert "no entry for 'nope'" in _cli("prices", "set", "nope", "--tier", "flex", "--input",
                                         "1", code=2)  # fmt: skip
    assert not prices.exists()
    _cli("prices", "set", "m", "--input", "1", "--output", "2")
    before = prices.read_text()
    assert "is the standard price" in _cli("prices", "set", "m", "--tier", "default", "--input",
                                           "1", code=2)  # fmt: skip
    assert "at least one rate" in _cli("prices", "set", "m", "--tier", "flex", code=2)
    assert "give --output" in _cli("prices", "set", "m", "--input", "1", code=2)
    assert prices.read_text() == before


def test_cli_set_tier_as_a_real_process(prices: Path) -> None:
    """`llmctx prices set M --tier batch` run as its own process writes the tier that this
    process then charges."""
    _write(prices, '[prices."m"]\ninput_per_mtok = 1\noutput_per_mtok = 2\n')
    done = subprocess.run(
        [sys.executable, "-m", "llmctx", "prices", "set", "m", "--tier", "batch", "--input",
         "0.5", "--output", "1", "--json"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tier"] == "batch"
    reload_prices()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    batch, _ = price_usage("m", usage, service_tier="batch")
    standard, _ = price_usage("m", usage)
    assert standard is not None and batch is not None
    assert batch == standard / 2  # the rates just written are half of the entry's


def test_ls_lists_each_entrys_tiers_and_dated_prices(prices: Path) -> None:
    """`prices ls` shows which tiers and how many dated prices an entry has; --json has them
    all with their lines."""
    _write(prices, HOUSE_FILE)
    result = runner.invoke(app, ["prices", "ls"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "flex, batch; 1 dated" in result.output
    data = json.loads(_cli("prices", "ls", "--json"))
    (entry,) = data["entries"]
    assert [(t["tier"], t["since"], t["line"]) for t in entry["service_tiers"]] == [
        ("flex", "2026-03-01", 8),
        ("batch", None, 13),
    ]
    assert [(c["since"], c["line"]) for c in entry["changes"]] == [("2026-06-01", 16)]
    assert entry["changes"][0]["per_mtok_usd"]["cache_write_1h"] == "0.5"
