"""``llmctx budgets ls|show`` on a real Redis: spend, reserved and limit per key and window."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctx._budget import Amount, Budget
from llmctx._cli.budgets import budgets_app

pytest.importorskip("redis")

pytestmark = pytest.mark.redis

runner = CliRunner()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone."""
    return f"llmctx-cli-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spent(redis_url: str, prefix: str) -> Iterator[Any]:
    """Two keys on a ledger 'chat': user:1 spent $0.25 and holds 100 tokens, user:2 spent 5."""
    from llmctx._redis import RedisLedger

    ledger = RedisLedger(redis_url, "chat", prefix=prefix, renew_every=0)
    one = Budget(usd="1", tokens=1_000, key="user:1", window="1d", ledger=ledger)
    two = Budget(tokens=50, key="user:2", ledger=ledger)
    token = ledger.reserve(Amount(Decimal("0.5"), 400), one)
    ledger.settle(token, Amount(Decimal("0.25"), 300))
    ledger.reserve(Amount(tokens=100), one)
    ledger.settle(ledger.reserve(Amount(tokens=5), two), Amount(tokens=5))
    yield ledger
    ledger.reset()
    ledger.close()


def invoke(*args: str) -> Any:
    """Run ``llmctx budgets ARGS`` on a wide terminal."""
    return runner.invoke(budgets_app, list(args), env={"COLUMNS": "160"})


def test_ls_json_shows_every_key_in_its_window(spent: Any, redis_url: str, prefix: str) -> None:
    """ls --json: each key's spent, reserved, limit and what is left, in its current window."""
    result = invoke("ls", "--redis", redis_url, "--prefix", prefix, "--json")
    assert result.exit_code == 0, result.output
    accounts = {a["key"]: a for a in json.loads(result.output)["accounts"]}
    assert set(accounts) == {"user:1", "user:2"}
    one = accounts["user:1"]
    assert (one["name"], one["window"], one["reservations"]) == ("chat", "86400s", 1)
    assert one["window_start"].endswith("T00:00:00+00:00")
    assert one["dimensions"]["usd"] == {
        "spent": "0.25",
        "reserved": "0",
        "expired": "0",
        "limit": "1",
        "left": "0.75",
    }
    assert one["dimensions"]["tokens"]["reserved"] == 100
    assert one["dimensions"]["tokens"]["left"] == 600
    two = accounts["user:2"]
    assert two["window"] is None and two["window_start"] is None
    assert two["dimensions"] == {
        "tokens": {"spent": 5, "reserved": 0, "expired": 0, "limit": 50, "left": 45}
    }


def test_show_prints_one_key_as_a_table(spent: Any, redis_url: str, prefix: str) -> None:
    """show KEY prints that key's dimensions with spent, limit and left, and no other key."""
    result = invoke("show", "user:1", "--redis", redis_url, "--prefix", prefix)
    assert result.exit_code == 0, result.output
    assert "user:1" in result.output and "user:2" not in result.output
    line = next(row for row in result.output.splitlines() if " usd " in row)
    assert "$0.25" in line and "$1.00" in line and "$0.75" in line


def test_show_unknown_key_and_unreachable_redis_are_clear_errors(
    spent: Any, redis_url: str, prefix: str
) -> None:
    """An unknown key exits 1 naming ls; an unreachable Redis exits 1 without the password."""
    result = invoke("show", "user:404", "--redis", redis_url, "--prefix", prefix)
    assert result.exit_code == 1
    assert "no budget with key 'user:404'" in result.output
    assert "llmctx budgets ls" in result.output
    result = invoke("ls", "--redis", "redis://:hunter2-pw@127.0.0.1:1/0")
    assert result.exit_code == 1
    assert "could not reach Redis" in result.output and "hunter2-pw" not in result.output
