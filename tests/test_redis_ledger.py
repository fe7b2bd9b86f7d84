"""RedisLedger against a real Redis: arithmetic, exact money, atomicity across threads and
processes, expiry that fails closed (a vanished holder's reservation counts as spent), renewal
of a live holder's reservations, Redis outages, script reloads and connection errors."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

import llmctx
from llmctx._budget import Amount, Budget, Holds, Ledger, LedgerSnapshot
from llmctx._exceptions import BudgetExceeded, ConfigError, StoreError
from llmctx._redis import RedisLedger
from test_budget import DIMENSIONS, PRICE, LedgerModel, total  # one model for every ledger

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

PREFIX = "llmctx-test"


@pytest.fixture
def make_ledger(redis_url: str) -> Iterator[Any]:
    """Build RedisLedgers on unique budget names; their keys are deleted after the test."""
    made: list[RedisLedger] = []

    def make(name: str | None = None, **kwargs: Any) -> RedisLedger:
        ledger = RedisLedger(redis_url, name or f"t-{uuid.uuid4().hex}", prefix=PREFIX, **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger._closed = False  # one the test closed still has keys to delete
        ledger.reset()
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Any) -> RedisLedger:
    """A RedisLedger on a fresh budget name."""
    ledger: RedisLedger = make_ledger()
    return ledger


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client on the test server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def replay_audit(ledger: RedisLedger, budget: Budget) -> LedgerSnapshot:
    """Replay the ledger's server-side audit log; assert no state ever exceeded the budget.

    The log is appended inside the scripts, so its order is the order Redis ran them in. A
    sweep ("x") moves a reservation to spent at its reserved amount; a later settle of it
    replaces that amount by the actual one, a later release leaves it spent.
    """
    entries = [e.decode() for e in ledger._client.lrange(ledger._keys[3], 0, -1)]
    assert entries, "auditing was on, so the log must not be empty"
    nano = Decimal("1e-9")
    held: dict[str, Amount] = {}
    swept: dict[str, Amount] = {}
    spent = expired = Amount()

    def amount(parts: list[str]) -> Amount:
        return Amount(Decimal(parts[0]) * nano, *(int(p) for p in parts[1:5]))

    for entry in entries:
        kind, token, *rest = entry.split(" ")
        if kind == "r":
            held[token] = amount(token.split(":")[1:])  # a token carries its amounts
        elif kind == "x":
            swept[token] = held.pop(token)
            spent, expired = spent + swept[token], expired + swept[token]
        elif kind == "s":
            if token in swept:
                spent, expired = spent - swept[token], expired - swept.pop(token)
            else:
                assert held.pop(token, None) is not None
            spent = spent + amount(rest)
        elif kind == "f":
            assert held.pop(token, None) is not None or swept.pop(token, None) is not None
        else:
            raise AssertionError(f"unknown audit entry {entry!r}")
        in_use = spent + total(*held.values())
        for dim in DIMENSIONS:
            limit = budget.limit(dim)
            assert limit is None or in_use.get(dim) <= limit, f"{dim} over limit after {entry!r}"
    return LedgerSnapshot(spent, total(*held.values()), len(held), expired)


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports this llmctx even without an install."""
    src = str(Path(llmctx.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}


# -- Construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"reservation_ttl": 0},
        {"reservation_ttl": -1.0},
        {"reservation_ttl": float("nan")},
        {"reservation_ttl": float("inf")},
        {"reservation_ttl": True},
        {"reservation_ttl": "600"},
        {"renew_every": -1},
        {"renew_every": float("nan")},
        {"renew_every": True},
        {"reservation_ttl": 1, "renew_every": 1},
        {"reservation_ttl": 1, "renew_every": 2.5},
    ],
    ids=repr,
)
def test_rejects_bad_arguments(redis_url: str, kwargs: dict[str, Any]) -> None:
    """An empty name, a ttl that is not a positive number or a bad renew_every: ConfigError."""
    args: dict[str, Any] = {"name": "x", **kwargs}
    with pytest.raises(ConfigError):
        RedisLedger(redis_url, **args)


def test_rejects_non_client() -> None:
    """Something that is neither a URL nor a redis client raises ConfigError."""
    with pytest.raises(ConfigError, match=r"redis\.Redis client or a URL"):
        RedisLedger(42, "x")  # type: ignore[arg-type]


def test_bad_url_hides_password() -> None:
    """A malformed URL raises ConfigError without echoing its password."""
    with pytest.raises(ConfigError) as info:
        RedisLedger("http://user:hunter2-secret@example.invalid:6379/0", "x")
    assert "hunter2-secret" not in str(info.value)
    assert "[REDACTED]@example.invalid" in str(info.value)


def test_is_a_ledger_and_keys_share_one_slot(ledger: RedisLedger, client: Any) -> None:
    """RedisLedger satisfies the Ledger protocol; all its keys hash to one cluster slot."""
    from redis.crc import key_slot

    assert isinstance(ledger, Ledger)
    budget = Budget(tokens=10, ledger=ledger)
    ledger._audit = True
    ledger.settle(ledger.reserve(Amount(tokens=1), budget), Amount(tokens=1))
    ledger.reserve(Amount(tokens=1), budget)
    keys = sorted(k.decode() for k in client.keys(f"{{{PREFIX}:{ledger.name}}}:*"))
    assert [k.rsplit(":", 1)[1] for k in keys] == ["audit", "held", "totals"]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert keys[0].startswith(f"{{{PREFIX}:{ledger.name}}}:")


# -- Arithmetic -------------------------------------------------------------------------------


def test_reserve_settle_release_arithmetic(ledger: RedisLedger) -> None:
    """Reservations add to ``reserved``; settle moves the actual to ``spent``; release drops it."""
    budget = Budget(usd="0.01", tokens=1_000, requests=10, ledger=ledger)
    a = ledger.reserve(Amount(PRICE * 300, 300, 1), budget)
    b = ledger.reserve(Amount(PRICE * 200, 200, 1), budget)
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(PRICE * 500, 500, 2), 2)

    ledger.settle(a, Amount(PRICE * 123, 123, 1))
    snap = ledger.snapshot()
    assert snap == LedgerSnapshot(
        Amount(Decimal("0.0003075"), 123, 1), Amount(PRICE * 200, 200, 1), 1
    )
    assert isinstance(snap.spent.usd, Decimal)

    ledger.release(b)
    assert ledger.snapshot() == LedgerSnapshot(Amount(Decimal("0.0003075"), 123, 1), Amount(), 0)


def test_settle_and_release_are_idempotent(ledger: RedisLedger) -> None:
    """A second settle/release, a settle after release and unknown tokens change nothing."""
    budget = Budget(tokens=100, ledger=ledger)
    a = ledger.reserve(Amount(tokens=40), budget)
    b = ledger.reserve(Amount(tokens=30), budget)
    ledger.settle(a, Amount(tokens=25))
    after_settle = ledger.snapshot()
    ledger.settle(a, Amount(tokens=25))
    ledger.release(a)
    assert ledger.snapshot() == after_settle

    ledger.release(b)
    ledger.release(b)
    ledger.settle(b, Amount(tokens=30))
    ledger.settle("no-such-token", Amount(tokens=1))
    ledger.release("no-such-token")
    assert ledger.snapshot() == LedgerSnapshot(Amount(tokens=25), Amount(), 0)


def test_retried_reserve_script_holds_once(ledger: RedisLedger) -> None:
    """The reserve script run twice with one token (a retry after a lost reply) holds once."""
    budget = Budget(tokens=100, ledger=ledger)
    packed = struct.pack(
        ">20q", 0, 0, 0, 0, ledger._ttl_ms, 0, 60, 1, 0, 0, -1, 100, -1, -1, -1, *[-1] * 5
    )
    token = "same-token:0:60:1:0:0"
    for _ in range(2):
        # Held, outside any window: the reply is the window start, 0.
        assert ledger._run(ledger._reserve_script, packed + token.encode(), None, "reserve") == 0
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=60, requests=1), 1)
    ledger.release(token)
    assert ledger.reserve(Amount(tokens=100), budget)


def test_budget_exceeded_fields_are_decimal(ledger: RedisLedger) -> None:
    """A refusal reports dimension, limit, spent, reserved and requested; money as exact Decimal."""
    budget = Budget(usd="0.50", tokens=1_000, ledger=ledger)
    ledger.settle(
        ledger.reserve(Amount(Decimal("0.20"), 100, 1), budget),
        Amount(Decimal("0.2000001"), 100, 1),
    )
    ledger.reserve(Amount(Decimal("0.25"), 100, 1), budget)
    before = ledger.snapshot()

    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(Decimal("0.06"), 10, 1), budget)
    err = info.value
    assert (err.dimension, err.limit, err.spent, err.reserved, err.requested) == (
        "usd",
        Decimal("0.50"),
        Decimal("0.2000001"),
        Decimal("0.25"),
        Decimal("0.06"),
    )
    assert all(isinstance(v, Decimal) for v in (err.limit, err.spent, err.reserved, err.requested))
    assert "limit $0.50, spent $0.2000001, reserved by calls in flight $0.25" in str(err)
    assert ledger.snapshot() == before

    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(Decimal(0), 801, 1), budget)
    err = info.value
    assert (err.dimension, err.limit, err.spent, err.reserved, err.requested) == (
        "tokens",
        1_000,
        100,
        100,
        801,
    )


def test_limits_travel_with_each_call(make_ledger: Any, redis_url: str) -> None:
    """Two ledger objects on one name share the spend; each call is checked against its budget."""
    name = f"t-{uuid.uuid4().hex}"
    first, second = make_ledger(name), make_ledger(name)
    big, small = Budget(tokens=100, ledger=first), Budget(tokens=50, ledger=second)
    first.reserve(Amount(tokens=40), big)
    second.reserve(Amount(tokens=10), small)
    with pytest.raises(BudgetExceeded) as info:
        second.reserve(Amount(tokens=1), small)
    assert (info.value.limit, info.value.reserved) == (50, 50)
    first.reserve(Amount(tokens=50), big)
    assert first.snapshot() == second.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=100), 3)


# -- Exact money ------------------------------------------------------------------------------

PRICES = [Decimal(p) for p in ("0.0000025", "0.00000015", "0.000075", "0.0000006", "0.00001")]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    price=st.sampled_from(PRICES),
    reserved_tokens=st.integers(0, 200_000),
    used_tokens=st.integers(0, 200_000),
)
def test_decimal_round_trip_is_exact(
    make_ledger: Any, price: Decimal, reserved_tokens: int, used_tokens: int
) -> None:
    """Typical per-token prices times token counts come back from Redis as the exact Decimal."""
    ledger = make_ledger()
    budget = Budget(usd="1000", ledger=ledger)
    token = ledger.reserve(Amount(price * reserved_tokens, reserved_tokens, 1), budget)
    assert ledger.snapshot().reserved.usd == price * reserved_tokens
    ledger.settle(token, Amount(price * used_tokens, used_tokens, 1))
    snap = ledger.snapshot()
    assert snap.spent.usd == price * used_tokens
    assert snap.reserved == Amount()
    ledger.reset()


def test_large_amounts_stay_exact(ledger: RedisLedger) -> None:
    """Totals above $100,000 (beyond Lua's %.14g) and up to $9M add up to the nano-dollar."""
    budget = Budget(usd="9000000", ledger=ledger)
    for usd in ("123456.789012345", "4000000.000000001", "0.000000001"):
        ledger.settle(ledger.reserve(Amount(Decimal(usd)), budget), Amount(Decimal(usd)))
    assert ledger.snapshot().spent.usd == Decimal("4123456.789012347")
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(Decimal("4876543.210987654")), budget)
    assert info.value.spent == Decimal("4123456.789012347")
    ledger.reserve(Amount(Decimal("4876543.210987653")), budget)


def test_rounding_never_under_reserves(ledger: RedisLedger) -> None:
    """Reservations round up, limits down and settled spend half-up, to the nano-dollar."""
    budget = Budget(usd="0.0000000019", ledger=ledger)  # 1.9 nano-dollars: 1 usable
    token = ledger.reserve(Amount(Decimal("0.0000000001")), budget)
    assert ledger.snapshot().reserved.usd == Decimal("0.000000001")
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(Decimal("0.0000000001")), budget)
    ledger.settle(token, Amount(Decimal("0.0000000014")))
    assert ledger.snapshot().spent.usd == Decimal("0.000000001")
    ledger.reset()
    big = Budget(usd=1, ledger=ledger)
    ledger.settle(
        ledger.reserve(Amount(Decimal("0.0000000015")), big), Amount(Decimal("0.0000000015"))
    )
    assert ledger.snapshot().spent.usd == Decimal("0.000000002")


# -- Property-based model ---------------------------------------------------------------------


class RedisLedgerModel(LedgerModel):
    """test_budget's ledger state machine on a RedisLedger, plus expiry and renewal rules.

    Its restore only sets an empty ledger. The machine expires and renews reservations itself
    (no renewal thread), so every run is deterministic.
    """

    url = ""
    restore_overwrites = False

    def make_ledger(self) -> Ledger:
        """A RedisLedger on a fresh budget name, without a renewal thread."""
        self.redis_ledger = RedisLedger(
            self.url, f"t-{uuid.uuid4().hex}", prefix=PREFIX, renew_every=0
        )
        #: Swept reservations the ledger still renews: the next renew() reports them lost.
        self.unreported: set[str] = set()
        return self.redis_ledger

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """A live reservation's holder vanishes: its expiry passes and a sweep counts it spent."""
        token = data.draw(st.sampled_from(sorted(self.held)))
        ledger = self.redis_ledger
        ledger._client.zadd(ledger._keys[1], {token: 0}, xx=True)  # expired long ago
        ledger.snapshot()  # sweeps it now, so the other rules see it swept
        self.expired(token)
        self.unreported.add(token)

    @rule()
    def renew(self) -> None:
        """A renewal changes nothing visible and reports each still-unsettled swept one once."""
        assert self.redis_ledger.renew() == len(self.unreported & set(self.swept))
        self.unreported.clear()

    def teardown(self) -> None:
        """Delete the budget's keys and close the ledger's client."""
        self.redis_ledger.reset()
        self.redis_ledger.close()


def test_matches_sequential_model(redis_url: str) -> None:
    """Hypothesis-driven sequences on Redis, expiries and renewals included, match the model."""
    RedisLedgerModel.url = redis_url
    case = RedisLedgerModel.TestCase
    case.settings = settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    case("runTest").runTest()


# -- Restore, reset, close --------------------------------------------------------------------


def test_restore_only_on_a_new_ledger(ledger: RedisLedger) -> None:
    """restore() sets spent on a new ledger, and leaves a ledger with state alone."""
    budget = Budget(tokens=100, ledger=ledger)
    ledger.restore(Amount(Decimal("0.25"), 40, 2))
    assert ledger.snapshot().spent == Amount(Decimal("0.25"), 40, 2)
    ledger.restore(Amount(Decimal(1), 1, 1))  # Redis already has state: authoritative
    assert ledger.snapshot().spent == Amount(Decimal("0.25"), 40, 2)

    ledger.reset()
    token = ledger.reserve(Amount(tokens=10), budget)
    ledger.restore(Amount(tokens=99))  # a reservation in flight: not new
    assert ledger.snapshot().spent == Amount()
    ledger.release(token)

    ledger.reset()
    ledger.restore(Amount(tokens=99))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(tokens=2), budget)


def test_reset_and_close(redis_url: str, client: Any) -> None:
    """reset() deletes the keys; close() closes an owned client only, twice is harmless."""
    name = f"t-{uuid.uuid4().hex}"
    with RedisLedger(redis_url, name, prefix=PREFIX) as owned:
        budget = Budget(tokens=10, ledger=owned)
        owned.settle(owned.reserve(Amount(tokens=3), budget), Amount(tokens=3))
        owned.reserve(Amount(tokens=3), budget)
        assert client.keys(f"{{{PREFIX}:{name}}}:*")
        owned.reset()
        assert client.keys(f"{{{PREFIX}:{name}}}:*") == []
        assert owned.snapshot() == LedgerSnapshot(Amount(), Amount(), 0)
    with pytest.raises(StoreError, match="is closed"):
        owned.snapshot()
    owned.close()

    shared = RedisLedger(client, name, prefix=PREFIX)
    shared.close()
    assert client.ping()  # the caller's client stays usable


# -- Concurrency ------------------------------------------------------------------------------


def test_threads_never_exceed_budget(ledger: RedisLedger) -> None:
    """Eight threads reserving, settling and releasing never take the budget past its limit."""
    budget = Budget(usd="0.0015", tokens=1_000, requests=100, ledger=ledger)
    ledger._audit = True
    settled: list[Amount] = []
    refused: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        try:
            start.wait()
            held: list[str] = []
            for i in range(40):
                try:
                    held.append(ledger.reserve(Amount(PRICE * 37, 37, 1), budget))
                except BudgetExceeded:
                    refused.append(seed)
                if len(held) >= 2 or (held and i == 39):
                    token = held.pop(0)
                    if (seed + i) % 5 == 0:
                        ledger.release(token)
                    else:
                        used = 20 + (seed * 7 + i) % 18
                        actual = Amount(PRICE * used, used, 1)
                        ledger.settle(token, actual)
                        settled.append(actual)
            for token in held:
                ledger.release(token)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert refused  # the budget really was the constraint
    snap = ledger.snapshot()
    assert snap == LedgerSnapshot(total(*settled), Amount(), 0)
    assert replay_audit(ledger, budget) == snap


WORKER = r"""
import json, random, sys
from decimal import Decimal
from llmctx._budget import Amount, Budget
from llmctx._exceptions import BudgetExceeded
from llmctx._redis import RedisLedger

url, name, prefix, seed = sys.argv[1:5]
ledger = RedisLedger(url, name, prefix=prefix)
ledger._audit = True
budget = Budget(usd="0.12", tokens=40_000, requests=5_000, ledger=ledger)
price = Decimal("0.0000025")
rng = random.Random(int(seed))
spent, tokens, requests = Decimal(0), 0, 0
admitted, refusals, outstanding = [], 0, []

def finish(token, ask):
    global spent, tokens, requests
    if rng.random() < 0.15:
        ledger.release(token)
        return
    used = rng.randint(ask // 2, ask)
    ledger.settle(token, Amount(price * used, used, 1))
    spent, tokens, requests = spent + price * used, tokens + used, requests + 1

print("ready", flush=True)
sys.stdin.readline()
while refusals < 3:
    ask = rng.randint(10, 60)
    try:
        token = ledger.reserve(Amount(price * ask, ask, 1), budget)
    except BudgetExceeded:
        refusals += 1
        if outstanding:
            finish(*outstanding.pop(0))
        continue
    admitted.append(token)
    outstanding.append((token, ask))
    if len(outstanding) >= 3:
        finish(*outstanding.pop(0))
for item in outstanding:
    finish(*item)
ledger.close()
print(json.dumps({"usd": str(spent), "tokens": tokens, "requests": requests,
                  "admitted": admitted}), flush=True)
"""


def test_two_processes_never_exceed_budget_together(ledger: RedisLedger, redis_url: str) -> None:
    """Two processes hammering one budget until refused never overspend it together."""
    budget = Budget(usd="0.12", tokens=40_000, requests=5_000, ledger=ledger)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, ledger.name, PREFIX, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for seed in (1, 2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # both start together, so their scripts interleave on the server
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

    snap = ledger.snapshot()
    reported = total(*(Amount(Decimal(r["usd"]), r["tokens"], r["requests"]) for r in reports))
    assert snap == LedgerSnapshot(reported, Amount(), 0)
    assert snap.spent.usd <= budget.usd  # type: ignore[operator]
    assert snap.spent.tokens <= 40_000
    assert snap.spent.tokens > 30_000  # they really used the budget up
    assert replay_audit(ledger, budget) == snap

    # Both processes were admitted while the other was running, not one after the other.
    owner = {token: i for i, r in enumerate(reports) for token in r["admitted"]}
    log = [e.decode().split(" ") for e in ledger._client.lrange(ledger._keys[3], 0, -1)]
    order = [owner[parts[1]] for parts in log if parts[0] == "r"]
    assert all(reports[i]["admitted"] for i in (0, 1))
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= 2


# -- Expiry fails closed ----------------------------------------------------------------------

HOLDER = r"""
import sys
from llmctx._budget import Amount, Budget
from llmctx._redis import RedisLedger

url, name, prefix = sys.argv[1:4]
ledger = RedisLedger(url, name, prefix=prefix, reservation_ttl=1.0)  # renewed every 1/3 s
budget = Budget(tokens=100, ledger=ledger)
token = ledger.reserve(Amount(tokens=100), budget)
print(token, flush=True)
for line in sys.stdin:  # "settle N": the long call ended having used N tokens
    ledger.renew()  # whatever the renewal thread has not reported yet
    ledger.settle(token, Amount(tokens=int(line.split()[1])))
    print(ledger.lost, flush=True)
"""


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def spawn_holder(redis_url: str, name: str) -> tuple[subprocess.Popen[str], str]:
    """A child process holding 100 tokens of the budget ``name``; returns it and its token."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, name, PREFIX],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    token = proc.stdout.readline().strip()
    assert token, "the holder did not reserve"
    return proc, token


def stop_holder(proc: subprocess.Popen[str]) -> None:
    """Kill the holder if it still runs, and close its pipes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def test_crashed_process_reservation_counts_as_spent(make_ledger: Any, redis_url: str) -> None:
    """A holder's reservation is renewed while it lives; SIGKILLed, it expires and stays spent."""
    ledger: RedisLedger = make_ledger()
    budget = Budget(tokens=100, ledger=ledger)
    proc, dead_token = spawn_holder(redis_url, ledger.name)
    try:
        time.sleep(1.5)  # past the holder's ttl: its renewals keep the reservation live
        assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=100), 1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_holder(proc)

    wait_for(lambda: ledger.snapshot().reservations == 0)
    spent = LedgerSnapshot(Amount(tokens=100), Amount(), 0, expired=Amount(tokens=100))
    assert ledger.snapshot() == spent
    with pytest.raises(BudgetExceeded) as info:  # the dead call may have run: no capacity back
        ledger.reserve(Amount(tokens=1), budget)
    assert (info.value.spent, info.value.reserved) == (100, 0)
    ledger.release(dead_token)  # a late release cannot prove the call did not run
    ledger.settle(dead_token, Amount(tokens=10))  # and it ended the token: a no-op
    assert ledger.snapshot() == spent


def test_stalled_process_reservation_cannot_be_spent_again(
    make_ledger: Any, redis_url: str
) -> None:
    """A holder stopped past its ttl has its hold counted as spent: 100 of 100, never 200."""
    ledger: RedisLedger = make_ledger()
    budget = Budget(tokens=100, ledger=ledger)
    proc, _ = spawn_holder(redis_url, ledger.name)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.send_signal(signal.SIGSTOP)  # its renewal thread stops with it
        wait_for(lambda: ledger.snapshot().reservations == 0)
        assert ledger.snapshot().expired == Amount(tokens=100)
        with pytest.raises(BudgetExceeded):  # before: this process got all 100 tokens again
            ledger.reserve(Amount(tokens=1), budget)

        proc.send_signal(signal.SIGCONT)  # it wakes up and its call ends, having used 60
        proc.stdin.write("settle 60\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "1"  # it found its reservation swept
        assert ledger.snapshot() == LedgerSnapshot(Amount(tokens=60), Amount(), 0)
        mine = ledger.reserve(Amount(tokens=40), budget)
        with pytest.raises(BudgetExceeded):
            ledger.reserve(Amount(tokens=1), budget)
        ledger.settle(mine, Amount(tokens=40))
        assert ledger.snapshot().spent == Amount(tokens=100)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        stop_holder(proc)
    assert ledger.snapshot().spent == Amount(tokens=100)


def test_settle_after_expiry_replaces_the_reserved_amount_once(make_ledger: Any) -> None:
    """A swept reservation is spent at its reserved amount; a late settle replaces it, once."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    budget = Budget(usd="0.01", tokens=100, ledger=ledger)
    reserved = Amount(PRICE * 80, 80, 1)
    token = ledger.reserve(reserved, budget)
    wait_for(lambda: ledger.snapshot().reservations == 0)
    assert ledger.snapshot() == LedgerSnapshot(reserved, Amount(), 0, expired=reserved)
    with pytest.raises(BudgetExceeded):  # its capacity did not come back
        ledger.reserve(Amount(PRICE * 90, 90, 1), budget)
    other = ledger.reserve(Amount(PRICE * 20, 20, 1), budget)

    ledger.settle(token, Amount(PRICE * 70, 70, 1))  # spent += actual - reserved
    ledger.settle(token, Amount(PRICE * 70, 70, 1))  # a retry: no-op
    ledger.release(token)  # no-op too
    assert ledger.snapshot() == LedgerSnapshot(
        Amount(PRICE * 70, 70, 1), Amount(PRICE * 20, 20, 1), 1
    )
    ledger.release(other)


def test_settle_applied_twice_counts_once_across_an_expiry(make_ledger: Any) -> None:
    """A settle retried after the ttl passed, or twice after its sweep, counts once."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    budget = Budget(tokens=1_000, ledger=ledger)
    ledger._audit = True
    settled = ledger.reserve(Amount(tokens=40), budget)
    ledger.settle(settled, Amount(tokens=30))
    swept = ledger.reserve(Amount(tokens=50), budget)
    wait_for(lambda: ledger.snapshot().reservations == 0)  # the ttl passed, a sweep ran
    assert ledger.snapshot() == LedgerSnapshot(
        Amount(tokens=80), Amount(), 0, expired=Amount(tokens=50)
    )
    for _ in range(2):  # the settle's reply was lost, so the caller (or the outbox) retries
        ledger.settle(settled, Amount(tokens=30))
        ledger.settle(swept, Amount(tokens=20))
    snap = ledger.snapshot()
    assert snap == LedgerSnapshot(Amount(tokens=50), Amount(), 0)
    assert replay_audit(ledger, budget) == snap


def test_release_after_expiry_leaves_it_spent(make_ledger: Any) -> None:
    """Releasing a swept reservation keeps its reserved amount spent and shown as expired."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    budget = Budget(tokens=100, ledger=ledger)
    ledger._audit = True
    token = ledger.reserve(Amount(tokens=30), budget)
    wait_for(lambda: ledger.snapshot().reservations == 0)
    ledger.release(token)
    ledger.settle(token, Amount(tokens=5))  # the release ended it
    snap = ledger.snapshot()
    assert snap == LedgerSnapshot(Amount(tokens=30), Amount(), 0, expired=Amount(tokens=30))
    assert replay_audit(ledger, budget) == snap


def test_reserve_sweeps_expired_reservations(make_ledger: Any) -> None:
    """A reserve call itself sweeps expired holds (no snapshot in between) and counts them."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    budget = Budget(tokens=100, ledger=ledger)
    ledger.reserve(Amount(tokens=100), budget)
    expiry_key = ledger._keys[1]

    def expired() -> bool:
        now_s, now_us = ledger._client.time()
        oldest = ledger._client.zrange(expiry_key, 0, 0, withscores=True)
        return bool(oldest) and oldest[0][1] <= now_s * 1000 + now_us // 1000

    wait_for(expired)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(tokens=100), budget)
    assert (info.value.spent, info.value.reserved) == (100, 0)
    assert ledger._client.zcard(expiry_key) == 0


def test_sweep_is_bounded_per_call(make_ledger: Any) -> None:
    """Each call sweeps at most 64 expired reservations; repeated calls clear the rest."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    budget = Budget(tokens=1_000, ledger=ledger)
    for _ in range(150):
        ledger.reserve(Amount(tokens=1), budget)
    expiry_key = ledger._keys[1]

    def all_expired() -> bool:
        now_s, now_us = ledger._client.time()
        newest = ledger._client.zrange(expiry_key, -1, -1, withscores=True)
        return bool(newest) and newest[0][1] <= now_s * 1000 + now_us // 1000

    wait_for(all_expired)
    assert [ledger.snapshot().reservations for _ in range(3)] == [86, 22, 0]
    assert ledger.snapshot() == LedgerSnapshot(
        Amount(tokens=150), Amount(), 0, expired=Amount(tokens=150)
    )


# -- Renewal ----------------------------------------------------------------------------------


def test_renewal_keeps_a_reservation_past_its_ttl_until_close(make_ledger: Any) -> None:
    """A live holder's reservation outlives three ttls; after close() it expires, spent."""
    holder: RedisLedger = make_ledger(reservation_ttl=0.6)  # renewed every 0.2 s
    watcher: RedisLedger = make_ledger(holder.name)  # its snapshots sweep what expired
    holder.reserve(Amount(tokens=50), Budget(tokens=100, ledger=holder))
    live = LedgerSnapshot(Amount(), Amount(tokens=50), 1)
    deadline = time.monotonic() + 3 * 0.6
    while time.monotonic() < deadline:
        assert watcher.snapshot() == live
        time.sleep(0.05)
    assert holder.lost == 0

    holder.close()
    assert not holder._renewal.running
    wait_for(lambda: watcher.snapshot().reservations == 0)
    assert watcher.snapshot() == LedgerSnapshot(
        Amount(tokens=50), Amount(), 0, expired=Amount(tokens=50)
    )


def test_renewal_thread_runs_only_while_something_is_held(make_ledger: Any) -> None:
    """The renewal thread starts with the first reservation and ends once none is held."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.3)
    budget = Budget(tokens=100, ledger=ledger)
    assert not ledger._renewal.running
    first = ledger.reserve(Amount(tokens=10), budget)
    second = ledger.reserve(Amount(tokens=10), budget)
    assert ledger._renewal.running
    names = [t.name for t in threading.enumerate()]
    assert names.count(f"llmctx-ledger-renewal-{ledger.name}") == 1
    ledger.settle(first, Amount(tokens=5))
    ledger.release(second)
    wait_for(lambda: not ledger._renewal.running, timeout=5)
    ledger.release(ledger.reserve(Amount(tokens=10), budget))  # a new one starts again

    manual: RedisLedger = make_ledger(reservation_ttl=0.3, renew_every=0)
    token = manual.reserve(Amount(tokens=10), Budget(tokens=100, ledger=manual))
    assert not manual._renewal.running
    assert manual.renew() == 0  # renewed by hand
    manual.release(token)


def test_reservation_swept_before_renewal_is_reported_lost(
    make_ledger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal that finds its reservation swept logs it once and counts it in ``lost``."""
    ledger: RedisLedger = make_ledger(reservation_ttl=0.2, renew_every=0)
    token = ledger.reserve(Amount(tokens=10), Budget(tokens=100, ledger=ledger))
    wait_for(lambda: ledger.snapshot().reservations == 0)
    with caplog.at_level(logging.WARNING, logger="llmctx.budget"):
        assert ledger.renew() == 1
        assert ledger.renew() == 0
    assert ledger.lost == 1
    (record,) = caplog.records
    assert token in record.getMessage()
    assert "counts as spent at its reserved amount" in record.getMessage()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_renews_only_its_own_reservations(ledger: RedisLedger) -> None:
    """After fork the child holds none of its parent's reservations and renews only its own."""
    budget = Budget(tokens=100, ledger=ledger)
    parent = ledger.reserve(Amount(tokens=10), budget)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            inherited = ledger._renewal.members() == [] and not ledger._renewal.running
            mine = ledger.reserve(Amount(tokens=10), budget)
            own = ledger._renewal.members() == [mine] and ledger._renewal.running
            ledger.release(mine)
            os.write(write, b"ok" if inherited and own else b"no")
        finally:
            os._exit(0)
    os.close(write)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.read(read, 2) == b"ok"
    os.close(read)
    assert ledger._renewal.members() == [parent]
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=10), 1)


# -- Redis outages (a server of the test's own, so pausing it stalls no one else) ------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """URL of a redis-server started for this test alone on a free loopback port."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    probe_client = redis.Redis.from_url(url)
    try:

        def up() -> bool:
            try:
                return bool(probe_client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, timeout=10)
        yield url
    finally:
        probe_client.close()
        proc.terminate()
        proc.wait(timeout=10)


def fragile_client(url: str, timeout: float) -> Any:
    """A client that gives up after ``timeout`` seconds and never retries (a failing network)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def test_redis_paused_between_reserve_and_settle_never_overspends(own_redis: str) -> None:
    """Redis paused between reserve and settle: two ledgers spend <= 1,000 of 1,000, not 1,800."""
    client = fragile_client(own_redis, 0.2)
    admin = redis.Redis.from_url(own_redis)
    try:
        first = RedisLedger(client, "shared", reservation_ttl=1.0)
        second = RedisLedger(own_redis, "shared", reservation_ttl=1.0)
        token = first.reserve(Amount(tokens=1_000), Budget(tokens=1_000, ledger=first))
        admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        with pytest.raises(StoreError, match="counts as spent at its reserved amount"):
            first.settle(token, Amount(tokens=800))  # the call ran; its settle is lost

        # Redis is back; the reservation, no longer renewed, expires and stays spent.
        wait_for(lambda: second.snapshot().reservations == 0)
        assert second.snapshot() == LedgerSnapshot(
            Amount(tokens=1_000), Amount(), 0, expired=Amount(tokens=1_000)
        )
        other = Budget(tokens=1_000, ledger=second)
        with pytest.raises(BudgetExceeded):  # before: all 1,000 again, 1,800 in total
            second.reserve(Amount(tokens=1), other)

        for _ in range(2):  # the lost settle applied once Redis is back, and retried
            first.settle(token, Amount(tokens=800))
        assert second.snapshot() == LedgerSnapshot(Amount(tokens=800), Amount(), 0)
        rest = second.reserve(Amount(tokens=200), other)
        with pytest.raises(BudgetExceeded):
            second.reserve(Amount(tokens=1), other)
        second.settle(rest, Amount(tokens=200))
        assert second.snapshot().spent == Amount(tokens=1_000)
        first.close()
        second.close()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        client.close()


def test_holds_settle_lost_in_an_outage_is_only_logged_and_fails_closed(
    own_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call's Holds.settle that cannot reach Redis is logged; its reservation ends up spent."""
    client = fragile_client(own_redis, 0.2)
    admin = redis.Redis.from_url(own_redis)
    try:
        ledger = RedisLedger(client, "holds", reservation_ttl=0.5)
        budget = Budget(tokens=100, ledger=ledger)
        holds = Holds.reserve([(budget, "session-id", None)], Amount(tokens=100))
        admin.execute_command("CLIENT", "PAUSE", "600", "WRITE")
        with caplog.at_level(logging.ERROR, logger="llmctx"):
            holds.settle(Amount(tokens=70))  # never raises: the call already returned
        assert "could not settle" in caplog.text
        with RedisLedger(own_redis, "holds") as watcher:  # waits out the pause, then sweeps
            wait_for(lambda: watcher.snapshot().reservations == 0)
            assert watcher.snapshot() == LedgerSnapshot(
                Amount(tokens=100), Amount(), 0, expired=Amount(tokens=100)
            )
        ledger.close()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        client.close()


def test_renewal_survives_an_outage_and_logs_it_once(
    own_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals failing through a Redis pause are retried each beat and logged once, not each."""
    client = fragile_client(own_redis, 0.05)
    admin = redis.Redis.from_url(own_redis)
    try:
        ledger = RedisLedger(client, "renew", reservation_ttl=1.0, renew_every=0.05)
        token = ledger.reserve(Amount(tokens=10), Budget(tokens=100, ledger=ledger))
        with caplog.at_level(logging.INFO, logger="llmctx.budget"):
            admin.execute_command("CLIENT", "PAUSE", "500", "WRITE")
            wait_for(lambda: "works again" in caplog.text, timeout=10)
        failures = [r for r in caplog.records if "could not renew" in r.getMessage()]
        assert len(failures) == 1
        assert failures[0].levelno == logging.WARNING
        assert ledger._renewal.running
        assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=10), 1)
        assert ledger.lost == 0
        ledger.release(token)
        ledger.close()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        client.close()


# -- Script cache and connection errors -------------------------------------------------------


def test_reserve_recovers_from_script_flush(ledger: RedisLedger, client: Any) -> None:
    """After SCRIPT FLUSH (e.g. a server restart) the scripts are reloaded and calls work."""
    budget = Budget(tokens=100, ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=10), budget), Amount(tokens=10))
    client.script_flush()
    assert client.script_exists(ledger._reserve_script.sha) == [False]
    token = ledger.reserve(Amount(tokens=20), budget)
    assert client.script_exists(ledger._reserve_script.sha) == [True]
    client.script_flush()
    ledger.settle(token, Amount(tokens=15))
    assert ledger.snapshot() == LedgerSnapshot(Amount(tokens=25), Amount(), 0)


def test_unreachable_redis_raises_store_error() -> None:
    """A reserve that cannot reach Redis raises StoreError naming host:port; nothing is sent."""
    with RedisLedger("redis://127.0.0.1:1/0", "x") as ledger:
        budget = Budget(tokens=10, ledger=ledger)
        with pytest.raises(StoreError) as info:
            ledger.reserve(Amount(tokens=1), budget)
        message = str(info.value)
        assert "127.0.0.1:1" in message
        assert "call was not sent" in message
        for call in (ledger.snapshot, lambda: ledger.settle("t", Amount()), ledger.reset):
            with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
                call()


def test_store_error_never_shows_the_password() -> None:
    """Neither the error, its traceback nor the ledger's repr contains the URL's password."""
    secret = "s3cret-Pa55word"
    with RedisLedger(f"redis://someone:{secret}@127.0.0.1:1/0", "x") as ledger:
        with pytest.raises(StoreError) as info:
            ledger.reserve(Amount(tokens=1), Budget(tokens=10, ledger=ledger))
        assert "127.0.0.1:1" in str(info.value)
        rendered = "".join(traceback.format_exception(info.value))
        assert secret not in rendered
        assert secret not in repr(ledger)
