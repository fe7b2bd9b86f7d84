"""The overspend test that matters for keyed windowed budgets: 8 OS processes making calls of
random sizes on one team budget and a per-user budget (2 s windows, so the run crosses window
boundaries), replayed from the Redis-side audit log of each account.

Bounded for CI (8 x 150 calls); ``LLMCTX_TEST_OVERSPEND_CALLS=500`` runs 8 x 500.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest

from test_redis_ledger import child_env

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

PREFIX = "llmctx-test"
PROCESSES = 8
CALLS = int(os.environ.get("LLMCTX_TEST_OVERSPEND_CALLS", "150"))
TEAM_TOKENS, USER_TOKENS, USER_CALLS = 30_000, 9_000, 400

CALLER = r"""
import random, sys
from llmctx._budget import Amount, Budget, Holds
from llmctx._exceptions import BudgetExceeded
from llmctx._redis import RedisLedger

url, name, prefix, index, calls, team_tokens, user_tokens, user_calls = sys.argv[1:9]
ledger = RedisLedger(url, name, prefix=prefix)
ledger._audit = True
team = Budget(tokens=int(team_tokens), key="team:a", window="2s", ledger=ledger)
user = Budget(tokens=int(user_tokens), calls=int(user_calls), key="user:" + str(int(index) % 2),
              window="2s", ledger=ledger)
rng = random.Random(int(index))
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # go
held = refused = 0
for _ in range(int(calls)):
    want = rng.randint(20, 600)
    try:
        holds = Holds.reserve([(user, "s-user", None), (team, "s-team", None)],
                              Amount(tokens=want, calls=1))
    except BudgetExceeded:
        refused += 1
        continue
    held += 1
    if rng.random() < 0.1:
        holds.release()  # the call failed before it used anything
    else:
        holds.settle(Amount(tokens=rng.randint(0, want), calls=1))
ledger.close()
print(held, refused)
"""


def replay(entries: list[str], limits: dict[str, int]) -> dict[str, Any]:
    """Replay one account's audit log window by window; assert no window ever went over.

    Returns per window start: spent tokens and calls, and how many reservations were taken.
    Asserts every reservation ended exactly once (settled or released) and none was swept.
    """
    held: dict[str, tuple[int, int]] = {}
    ended: set[str] = set()
    spent: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    reserved: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    taken: dict[str, int] = defaultdict(int)
    for entry in entries:
        kind, member, *rest = entry.split(" ")
        window = member.partition("|")[0]
        _, _, tokens, _, calls, _ = member.partition("|")[2].split(":")
        amount = (int(tokens), int(calls))
        if kind == "r":
            assert member not in held and member not in ended, f"held twice: {entry}"
            held[member] = amount
            taken[window] += 1
            reserved[window][0] += amount[0]
            reserved[window][1] += amount[1]
        elif kind in ("s", "f"):
            assert member in held, f"ended twice or never held: {entry}"
            del held[member]
            ended.add(member)
            reserved[window][0] -= amount[0]
            reserved[window][1] -= amount[1]
            if kind == "s":
                spent[window][0] += int(rest[1])
                spent[window][1] += int(rest[3])
        else:
            raise AssertionError(f"a reservation was swept although its holder lived: {entry}")
        in_use = (spent[window][0] + reserved[window][0], spent[window][1] + reserved[window][1])
        assert in_use[0] <= limits["tokens"], f"tokens over the limit after {entry}"
        assert in_use[1] <= limits.get("calls", 10**18), f"calls over the limit after {entry}"
    assert held == {}, f"{len(held)} reservations never ended"
    return {w: (spent[w], taken[w]) for w in taken}


def test_processes_across_window_boundaries_never_overspend(redis_url: str) -> None:
    """8 processes on a team and a per-user 2 s budget: no window of either over its limit,
    every reservation settled or released exactly once, the spend in Redis equal to the log."""
    client = redis.Redis.from_url(redis_url)
    name = f"t-{uuid.uuid4().hex}"
    limits = [str(n) for n in (CALLS, TEAM_TOKENS, USER_TOKENS, USER_CALLS)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CALLER, redis_url, name, PREFIX, str(i), *limits],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for i in range(PROCESSES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        # Start 1.85 s into a 2 s window (server time), so even a fast run (CI's took under
        # half a second) crosses a boundary early.
        while True:
            seconds, micros = client.time()
            into = (int(seconds) * 1000 + int(micros) // 1000) % 2000
            if 1_850 <= into < 1_900:
                break
            time.sleep(0.02)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs), outputs
    held = sum(int(out.split()[0]) for out in outputs)
    assert held > 0

    try:
        accounts = {
            "team:a": {"tokens": TEAM_TOKENS},
            "user:0": {"tokens": USER_TOKENS, "calls": USER_CALLS},
            "user:1": {"tokens": USER_TOKENS, "calls": USER_CALLS},
        }
        windows: set[str] = set()
        reservations = 0
        for key, limits in accounts.items():
            base = f"{{{PREFIX}:{name}#{key}}}:2s"
            entries = [e.decode() for e in client.lrange(f"{base}:audit", 0, -1)]
            per_window = replay(entries, limits)
            windows |= set(per_window)
            if key == "team:a":
                reservations = sum(taken for _, taken in per_window.values())
            for window, (spent, _) in per_window.items():
                totals = client.hgetall(f"{base}:w:{window}")
                assert int(totals[b"spent_tokens"]) == spent[0]
                assert int(totals[b"spent_calls"]) == spent[1]
                assert int(totals[b"held_tokens"]) == 0
        assert reservations == held  # every call held on both, all or nothing
        assert len(windows) >= 2, "the run crossed no window boundary"
        assert sum(int(out.split()[1]) for out in outputs) > 0, "no budget was ever full"
    finally:
        keys = list(client.scan_iter(f"{{{PREFIX}:{name}*"))
        if keys:
            client.delete(*keys)
        client.close()


KILLED = r"""
import sys
from llmctx._budget import Amount, Budget, Holds
from llmctx._redis import RedisLedger

url, name, prefix = sys.argv[1:4]
ledger = RedisLedger(url, name, prefix=prefix, reservation_ttl=1.0)
ledger._audit = True
team = Budget(tokens=1_000, key="team:a", window="2s", ledger=ledger)
user = Budget(tokens=500, key="user:0", window="2s", ledger=ledger)
Holds.reserve([(user, "s-user", None), (team, "s-team", None)], Amount(tokens=300))
print("held", flush=True)
sys.stdin.readline()  # killed while it waits
"""


def test_killed_holder_expires_into_its_window_once(redis_url: str) -> None:
    """A process SIGKILLed holding 300 tokens on two 2 s keyed budgets: after its ttl the hold
    counts as spent (expired) in the window it was taken in, swept once, on both accounts."""
    import signal

    from llmctx._budget import Amount, Budget
    from llmctx._redis import RedisLedger

    client = redis.Redis.from_url(redis_url)
    name = f"t-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, redis_url, name, PREFIX],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    survivor = RedisLedger(redis_url, name, prefix=PREFIX, renew_every=0)
    survivor._audit = True
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        team = Budget(tokens=1_000, key="team:a", window="2s", ledger=survivor)
        user = Budget(tokens=500, key="user:0", window="2s", ledger=survivor)
        base = f"{{{PREFIX}:{name}#user:0}}:2s"
        (member,) = [m.decode() for m in client.zrange(f"{base}:held", 0, -1)]
        window = member.partition("|")[0]
        deadline = time.monotonic() + 30
        while client.zcard(f"{base}:held"):  # a later window's reserves sweep it when due
            assert time.monotonic() < deadline, "the killed holder's reservation never expired"
            for budget in (user, team):
                survivor.settle(survivor.reserve(Amount(tokens=1), budget), Amount(tokens=1))
            time.sleep(0.05)
        for key, limit in (("user:0", 500), ("team:a", 1_000)):
            base = f"{{{PREFIX}:{name}#{key}}}:2s"
            old = client.hgetall(f"{base}:w:{window}")
            swept = int(old[b"expired_tokens"])
            assert swept == 300 and int(old[b"held_tokens"]) == 0
            entries = [e.decode() for e in client.lrange(f"{base}:audit", 0, -1)]
            assert sum(e.startswith("x ") for e in entries) == 1  # swept once
            assert int(old[b"spent_tokens"]) <= limit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        survivor.close()
        keys = list(client.scan_iter(f"{{{PREFIX}:{name}*"))
        if keys:
            client.delete(*keys)
        client.close()
