"""The CLI at 80 and 120 columns and through a pipe: names, statuses and costs stay whole."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmctx
from llmctx._cli.app import app
from llmctx.stores import SQLiteStore
from llmctx.testing import FakeModel

runner = CliRunner()

LONG = "nightly-summarisation-of-customer-support-tickets"
TINY_SERVER = Path(__file__).resolve().parent / "mcp" / "servers" / "tiny_server.py"


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with a budgeted session and child, a partly unpriced one and a failed one."""
    path = tmp_path / "width.db"
    store = SQLiteStore(path)
    priced = FakeModel("width-priced-model", provider="openai")
    unpriced = FakeModel("width-unpriced-model-with-a-long-name", provider="llama-cpp")
    with (
        warnings.catch_warnings(),
        llmctx.price_override("width-priced-model", input_per_mtok="2.50", output_per_mtok="10"),
    ):
        warnings.simplefilter("ignore")
        with llmctx.session(LONG, store=store, budget=llmctx.Budget(usd="0.50")):
            for i in range(3):
                priced.complete(f"summarise ticket number {i} please")
            with llmctx.session("child-step", store=store):
                priced.complete("hello there")
        with llmctx.session("unpriced-run", store=store):
            unpriced.complete("what is this")
            priced.complete("hi")
        with pytest.raises(RuntimeError), llmctx.session("crashy", store=store):
            priced.complete("x y z")
            raise RuntimeError("boom")
    store.close()
    return str(path)


def _run(columns: int | None, *args: str) -> str:
    # No COLUMNS is what a pipe gets: rich falls back to 80.
    env = {"COLUMNS": None if columns is None else str(columns)}
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _widest(out: str) -> int:
    return max(len(line) for line in out.splitlines())


@pytest.mark.parametrize("columns", [80, 120, None])
def test_ls_keeps_statuses_costs_and_short_names_whole(db: str, columns: int | None) -> None:
    """At 80 and 120 columns and in a pipe, ls fits the width and shows names, statuses and
    costs whole; a long name is shortened with an ellipsis, never broken across lines."""
    out = _run(columns, "sessions", "ls", "--db", db)
    assert _widest(out) <= (columns or 80)
    for word in ("crashy", "unpriced-run", "failed", "completed", "$0.0000375", "$0.0002125"):
        assert word in out
    assert "$0.0000125 + 1 unpriced" in out
    assert "+?" not in out
    name_line = next(line for line in out.splitlines() if "nightly" in line)
    assert "…" in name_line or LONG in name_line
    assert not any(line.lstrip("│ ").startswith("ion") for line in out.splitlines())


def test_ls_at_80_columns_names_the_columns_it_left_out(db: str) -> None:
    """At 80 columns ls drops the token columns and says so; at 200 it shows them all."""
    narrow = _run(80, "sessions", "ls", "--db", db)
    assert "tokens in" not in narrow.split("\n")[0]
    assert "not shown at this width" in narrow and "--json" in narrow
    wide = _run(200, "sessions", "ls", "--db", db)
    assert "tokens in" in wide and "not shown" not in wide and LONG in wide


def test_ls_no_trunc_shows_the_whole_name(db: str) -> None:
    """--no-trunc prints full ids and the whole long name."""
    out = _run(200, "sessions", "ls", "--db", db, "--no-trunc")
    assert LONG in out


@pytest.mark.parametrize("columns", [80, 120])
def test_show_keeps_model_names_whole_and_prints_the_budget(db: str, columns: int) -> None:
    """show fits the width, names each call's model whole, says unpriced for a call with no
    price, and prints the budget as limit / spent / reserved / left."""
    ids = json.loads(_run(None, "sessions", "ls", "--db", db, "--json"))
    by_name = {s["name"]: s["id"] for s in ids}
    out = _run(columns, "sessions", "show", by_name["unpriced-run"], "--db", db)
    assert _widest(out) <= columns
    assert "llama-cpp/width-unpriced-model-with-a-long-name" in out
    assert "unpriced" in out and "$0.0000125" in out
    out = _run(columns, "sessions", "show", by_name[LONG], "--db", db)
    assert "$0.50 limit / $0.0002125 spent / $0.00 reserved / $0.4997875 left" in out
    assert '"usd"' not in out  # not raw JSON
    assert "openai/width-priced-model" in out


def test_show_json_has_a_stable_shape(db: str) -> None:
    """show --json returns session, descendants and calls with the documented keys."""
    sid = json.loads(_run(None, "sessions", "ls", "--db", db, "--json", "--limit", "1"))[0]["id"]
    data = json.loads(_run(None, "sessions", "show", sid, "--db", db, "--json"))
    assert set(data) == {"session", "descendants", "calls"}
    assert {"id", "name", "status", "cost", "budget"} <= set(data["session"])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sessions", "ls", "--help"],
        ["sessions", "show", "--help"],
        ["prices", "--help"],
        ["mcp", "tools", "--help"],
        ["budgets", "ls", "--help"],
        ["budgets", "show", "--help"],
    ],
)
def test_help_has_no_type_labels(args: list[str]) -> None:
    """--help lists options without <bool>/<str>/<int range> labels and fits 80 columns."""
    out = _run(80, *args)
    for label in ("<bool>", "<str>", "<int", "<path>"):
        assert label not in out
    assert _widest(out) <= 80


def test_prices_json_and_table_fit_80_columns() -> None:
    """prices renders within 80 columns and --json parses with the documented keys."""
    with llmctx.price_override("width-cli-model", input_per_mtok="2.5", output_per_mtok="10"):
        out = _run(80, "prices", "width-cli-model")
        assert _widest(out) <= 80 and "$2.50" in out and "$10.00" in out
        data = json.loads(_run(None, "prices", "width-cli-model", "--json"))
    assert data["per_mtok_usd"]["input"] == "2.5"
    assert data["example"]["cost_usd"] == "0.0125"


def test_mcp_tools_json_lists_each_tool(tmp_path: Path) -> None:
    """mcp tools --json prints one object per tool with server, names and schema."""
    config = tmp_path / "mcp.json"
    server = {"command": sys.executable, "args": [str(TINY_SERVER)]}
    config.write_text(json.dumps({"mcpServers": {"t": server}}))
    data = json.loads(_run(None, "mcp", "tools", str(config), "--json"))
    echo = next(t for t in data if t["name"] == "echo")
    assert echo["server"] == "t" and echo["qualified"] == "t.echo"
    assert echo["exported"] == "t__echo"
    assert set(echo) == {"server", "name", "qualified", "exported", "description", "input_schema"}
    table = _run(80, "mcp", "tools", str(config))
    assert "t.echo" in table and _widest(table) <= 80
