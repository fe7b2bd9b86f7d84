"""``llmctx budgets``: spend, reserved and limits of the keyed budgets on a Redis ledger.

``llmctx budgets ls --redis URL`` lists every keyed or windowed account that has been reserved
on (under ``--prefix``, default ``llmctx``), each read in its current window; ``llmctx budgets
show KEY --redis URL`` shows the accounts of one key, one line per limited dimension. The
ledger's own (unkeyed, unwindowed) account has no description in Redis and is not listed.

``--json`` shape (money is a decimal string of US dollars; ``null`` where there is no limit or
no window)::

    {"accounts": [{"name", "key", "window", "window_start": ISO time | null, "reservations",
                   "dimensions": {"usd" | "tokens" | "requests" | "calls" | "tool_calls":
                                  {"spent", "reserved", "expired", "limit", "left"}}}]}

``limit`` is the one the account's first reserve in this window carried (processes are
expected to pass the same limits).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import typer
from rich.console import Console

from .._budget import _DIMS, Budget, LedgerSnapshot
from .._exceptions import LLMCtxError
from .._money import format_usd
from ._layout import Column, PlainHelpCommand, PlainHelpGroup, print_fitted

__all__ = ["budgets_app"]

budgets_app = typer.Typer(
    help="Spend, reserved and limit of keyed budgets on a Redis ledger, per key and window.",
    no_args_is_help=True,
    cls=PlainHelpGroup,
)

_REDIS = typer.Option(
    ...,
    "--redis",
    envvar="LLMCTX_REDIS_URL",
    help=(
        "The Redis the ledgers live on: redis://host:port/db, or redis+cluster://host:port for "
        "a Redis Cluster."
    ),
)
_PREFIX = typer.Option("llmctx", "--prefix", help="The ledgers' key prefix.")
_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _accounts(url: str, prefix: str, key: str | None) -> list[dict[str, Any]]:
    """Every described account under ``prefix`` (of ``key`` if given), read in its window."""
    from .._redis import RedisLedger

    ledgers: dict[str, RedisLedger] = {}
    try:
        first = ledgers["\0"] = RedisLedger(url, "llmctx-budgets-cli", prefix=prefix, renew_every=0)
        client = first._client
        pattern = "".join(f"\\{c}" if c in "[]?*\\" else c for c in f"{{{prefix}:")
        found: list[dict[str, Any]] = []
        metas = first._conn.run("read", lambda: sorted(client.scan_iter(f"{pattern}*:meta")))
        for raw in metas:
            stored = first._conn.run("read", client.hgetall, raw)
            meta = {_text(k): _text(v) for k, v in stored.items()}
            desc = json.loads(meta.get("desc", "{}"))
            if key is not None and desc.get("key") != key:
                continue
            found.append(_read(ledgers, url, prefix, desc, meta))
        return found
    finally:
        for ledger in ledgers.values():
            ledger.close()


def _read(
    ledgers: dict[str, Any], url: str, prefix: str, desc: dict[str, Any], meta: dict[str, str]
) -> dict[str, Any]:
    from .._redis import RedisLedger
    from .._redis.ledger import _from_nano

    name = str(desc["name"])
    ledger = ledgers.get(name)
    if ledger is None:
        ledger = ledgers[name] = RedisLedger(url, name, prefix=prefix, renew_every=0)
    spec = desc.get("window")
    window, _, tz = (spec or "").partition("@")
    stored = {dim: int(meta.get(f"limit_{dim}", "-1")) for dim in _DIMS}
    counts = {dim: None if value < 0 else value for dim, value in stored.items()}
    usd = None if stored["usd"] < 0 else _from_nano(stored["usd"])
    budget = Budget(
        usd=usd,
        tokens=counts["tokens"],
        requests=counts["requests"],
        calls=counts["calls"],
        tool_calls=counts["tool_calls"],
        key=desc.get("key"),
        window=window or None,
        tz=tz or "UTC",
        ledger=ledger,
    )
    snap: LedgerSnapshot = budget.snapshot()
    start = None
    if budget.window is not None:
        now_s, now_us = ledger._client.time()
        bound = budget.window.bounds(int(now_s) * 1000 + int(now_us) // 1000)[0]
        start = datetime.fromtimestamp(bound / 1000, UTC).isoformat()
    dims: dict[str, Any] = {}
    for dim in _DIMS:
        limit = budget.limit(dim)
        spent, reserved = snap.spent.get(dim), snap.reserved.get(dim)
        if limit is None and not spent and not reserved:
            continue
        dims[dim] = {
            "spent": spent,
            "reserved": reserved,
            "expired": snap.expired.get(dim),
            "limit": limit,
            "left": None if limit is None else limit - spent - reserved,
        }
    return {
        "name": name,
        "key": desc.get("key"),
        "window": spec,
        "window_start": start,
        "reservations": snap.reservations,
        "dimensions": dims,
    }


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _json_value(value: object) -> object:
    return str(value) if isinstance(value, Decimal) else value


def _emit(accounts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out = [
            {
                **a,
                "dimensions": {
                    d: {k: _json_value(v) for k, v in row.items()}
                    for d, row in a["dimensions"].items()
                },
            }
            for a in accounts
        ]
        typer.echo(json.dumps({"accounts": out}, indent=2))
        return
    console = Console()
    if not accounts:
        console.print("No keyed budgets found.", highlight=False)
        return

    def show(dim: str, value: object) -> str:
        if value is None:
            return "-"
        return format_usd(value) if dim == "usd" else f"{value:,}"

    rows = []
    for a in accounts:
        for dim, row in a["dimensions"].items():
            rows.append(
                [
                    a["name"],
                    a["key"] or "-",
                    a["window"] or "-",
                    (a["window_start"] or "-")[:19].replace("T", " "),
                    dim,
                    show(dim, row["spent"]),
                    show(dim, row["reserved"]),
                    show(dim, row["limit"]),
                    show(dim, row["left"]),
                ]
            )
    columns = [
        Column("budget", free_text=True),
        Column("key", free_text=True),
        Column("window", drop=2),
        Column("from (UTC)", drop=1),
        Column("dimension"),
        Column("spent", justify="right"),
        Column("reserved", justify="right", drop=3),
        Column("limit", justify="right"),
        Column("left", justify="right"),
    ]
    print_fitted(console, columns, rows)


def _run(url: str, prefix: str, key: str | None, as_json: bool) -> None:
    try:
        accounts = _accounts(url, prefix, key)
    except LLMCtxError as exc:
        Console(stderr=True).print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if key is not None and not accounts:
        Console(stderr=True).print(
            f"error: no budget with key {key!r} under prefix {prefix!r} has been reserved on; "
            "llmctx budgets ls --redis URL lists the keys there are",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(1)
    _emit(accounts, as_json)


@budgets_app.command("ls", cls=PlainHelpCommand)
def ls(redis: str = _REDIS, prefix: str = _PREFIX, as_json: bool = _JSON) -> None:
    """List every keyed or windowed budget account: spend in its current window."""
    _run(redis, prefix, None, as_json)


@budgets_app.command("show", cls=PlainHelpCommand)
def show(
    key: str = typer.Argument(..., help="The budget key, e.g. user:42."),
    redis: str = _REDIS,
    prefix: str = _PREFIX,
    as_json: bool = _JSON,
) -> None:
    """Show one key's accounts (every ledger name and window it is used with)."""
    _run(redis, prefix, key, as_json)
