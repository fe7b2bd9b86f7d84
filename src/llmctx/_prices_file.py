"""The prices file: model prices in TOML, read by programs and the CLI alike.

Where it is (the first that applies; one file is read, never several):

1. ``$LLMCTX_PRICES``, a path (a missing file there means "no prices yet": ``llmctx prices
   set`` creates it);
2. ``prices.toml`` in the per-user config directory
   (``platformdirs.user_config_dir("llmctx")``), when it exists;
3. ``llmctx.toml`` in the current directory or the nearest parent that has one.

What it holds: one table per model under ``prices``, US dollars per million tokens, the
keyword names of :func:`llmctx.set_price`::

    [prices."my-model"]
    input_per_mtok = 0.20
    output_per_mtok = 0.60
    cache_read_per_mtok = 0.05     # optional; without it cache reads cost the input rate
    cache_write_per_mtok = 0.25    # optional; likewise
    provider = "openai"            # optional; without it the price applies to every provider

An entry may also hold ``cache_write_1h_per_mtok`` (Anthropic's 1-hour cache writes; it needs
``cache_write_per_mtok``), ``reasoning_per_mtok`` (reasoning billed apart), rates per service
tier and dated prices, each a table of its own::

    [prices."my-model".service_tiers.flex]   # calls at service_tier "flex"; "batch": Batch API
    input_per_mtok = 0.10                     # rates left out are the standard ones
    since = 2026-03-01                        # optional: the first UTC day they apply

    [[prices."my-model".changes]]             # a whole price, in force from `since` on
    since = 2026-06-01
    input_per_mtok = 0.30
    output_per_mtok = 0.90

Numbers are read exactly (``0.1`` is ``Decimal("0.1")``); quoted numbers work too. Other
top-level tables are left alone (a project's ``llmctx.toml`` may hold other settings).

Editing (:func:`set_entry`, :func:`set_tier`, :func:`remove_entry`) rewrites only the lines of
the one entry (or tier; removing an entry removes its tier and dated tables), so other entries
and comments stay as they were; the result is parsed back and compared before
it replaces the file atomically (a temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal

from ._exceptions import ConfigError

__all__ = [
    "CHANGE_KEYS",
    "ENV",
    "KEYS",
    "MAX_RATE",
    "PROJECT_FILE",
    "TIER_KEYS",
    "FileChange",
    "FileEntry",
    "FileTier",
    "PricesFile",
    "PricesFileError",
    "locate",
    "parse",
    "rates_problem",
    "read",
    "remove_entry",
    "set_entry",
    "set_tier",
    "user_prices_path",
]

ENV: Final = "LLMCTX_PRICES"
PROJECT_FILE: Final = "llmctx.toml"
USER_FILE: Final = "prices.toml"
RATE_KEYS: Final = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "reasoning_per_mtok",
)
KEYS: Final = (*RATE_KEYS, "provider", "service_tiers", "changes")
TIER_KEYS: Final = (*RATE_KEYS, "since")
CHANGE_KEYS: Final = ("since", *RATE_KEYS)
#: Tier names that mean the standard price, so they cannot have rates of their own.
STANDARD_TIERS: Final = frozenset({"default", "auto", "standard"})
_REQUIRED: Final = ("input_per_mtok", "output_per_mtok")
#: The largest rate accepted, US dollars per million tokens: far above any real price, and
#: small enough that a typo such as 1e999999999 cannot make a number of a billion digits.
MAX_RATE: Final = Decimal(10) ** 9
_MIN_EXPONENT: Final = -30
_EXAMPLE: Final = '[prices."my-model"]\ninput_per_mtok = 0.20\noutput_per_mtok = 0.60'

ChosenBy = Literal["LLMCTX_PRICES", "user config", "project", "given"]


class PricesFileError(ConfigError):
    """The prices file cannot be read or used: the message names the file, the line and the fix.

    Attributes:
        path: the file.
        line: the 1-based line at fault, when known.
    """

    def __init__(self, path: Path, problem: str, *, line: int | None = None, fix: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"prices file {where}: {problem}. {fix}")


@dataclass(frozen=True, slots=True)
class PricesFile:
    """Where the prices file is and why that one.

    Attributes:
        path: the file (it may not exist yet when named by ``$LLMCTX_PRICES``).
        chosen_by: ``"LLMCTX_PRICES"``, ``"user config"``, ``"project"``, or ``"given"``
            (named on the command line, not necessarily read by programs).
    """

    path: Path
    chosen_by: ChosenBy

    @property
    def why(self) -> str:
        """How the file was found, for people."""
        return {
            "LLMCTX_PRICES": "named by LLMCTX_PRICES",
            "user config": "the per-user prices file",
            "project": f"the project's {PROJECT_FILE}",
            "given": "given with --file",
        }[self.chosen_by]


@dataclass(frozen=True, slots=True)
class FileTier:
    """The rates of one service tier in an entry (``[prices."m".service_tiers.flex]``).

    Attributes:
        tier: the tier name, lower case: ``"flex"``, ``"priority"``, ``"batch"``, ...
        rates: the rates that differ from the standard ones (at least one).
        since: the first day (UTC) they apply, or ``None``.
        line: the 1-based line of the tier's table header (or key), when found.
    """

    tier: str
    rates: Mapping[str, Decimal]
    since: date | None
    line: int | None


@dataclass(frozen=True, slots=True)
class FileChange:
    """A dated price of an entry (``[[prices."m".changes]]``): in force from ``since`` on.

    Attributes:
        since: the first day (UTC) this price is in force, until the next change.
        rates: a whole price (``input_per_mtok`` and ``output_per_mtok`` at least).
        line: the 1-based line of its ``[[...changes]]`` header, when found.
    """

    since: date
    rates: Mapping[str, Decimal]
    line: int | None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One model's price as the file has it.

    Attributes:
        model: the model name (the table's key, as written).
        provider: the provider the price is restricted to, or ``None``.
        rates: ``input_per_mtok`` ... ``reasoning_per_mtok``; absent optional rates are not
            keys.
        line: the 1-based line of the entry's table header (or its key), when found.
        tiers: rates for service tiers (``[prices."m".service_tiers.NAME]``).
        changes: dated prices, oldest first (``[[prices."m".changes]]``); the entry's own
            rates are in force before the first.
    """

    model: str
    provider: str | None
    rates: Mapping[str, Decimal]
    line: int | None
    tiers: tuple[FileTier, ...] = ()
    changes: tuple[FileChange, ...] = ()


def user_prices_path() -> Path:
    """The per-user prices file: ``platformdirs.user_config_dir("llmctx")/prices.toml``."""
    import platformdirs

    return Path(platformdirs.user_config_dir("llmctx", appauthor=False)) / USER_FILE


def locate(cwd: Path | None = None) -> PricesFile | None:
    """The prices file in force (see the module docstring), or ``None`` when there is none.

    Args:
        cwd: where the search for a project ``llmctx.toml`` starts; the current directory
            by default.
    """
    env = os.environ.get(ENV, "").strip()
    if env:
        return PricesFile(Path(env).expanduser(), "LLMCTX_PRICES")
    user = user_prices_path()
    if user.is_file():
        return PricesFile(user, "user config")
    try:
        start = (cwd or Path.cwd()).resolve()
    except OSError:  # the current directory was removed
        return None
    for directory in (start, *start.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return PricesFile(candidate, "project")
    return None


# --------------------------------------------------------------------------------------------
# Reading.

_TOML_LINE = re.compile(r"at line (\d+)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER = re.compile(r"^\s*\[\s*prices\s*\.\s*(.+?)\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


def _header_key(raw: str) -> str | None:
    """The model name in ``[prices.<raw>]``, or None when ``raw`` is not one plain key."""
    if _BARE_KEY.fullmatch(raw):
        return raw
    try:
        parsed = tomllib.loads(f"k = {raw}")
    except tomllib.TOMLDecodeError:
        return None
    value = parsed.get("k")
    return value if isinstance(value, str) and raw[:1] in "\"'" else None


def _header_lines(lines: list[str]) -> dict[str, int]:
    """Model name (lower case) -> 0-based index of its ``[prices."name"]`` header line."""
    found: dict[str, int] = {}
    for i, text in enumerate(lines):
        m = _HEADER.match(text)
        if m:
            key = _header_key(m.group(1))
            if key is not None:
                found.setdefault(key.lower(), i)
    return found


def _key_line(lines: list[str], start: int, key: str) -> int | None:
    """0-based index of ``key = ...`` in the table whose header is at ``start``."""
    for i in range(start + 1, len(lines)):
        if _ANY_HEADER.match(lines[i]):
            return None
        m = _KEY_LINE.match(lines[i])
        if m and m.group(1).strip("\"'") == key:
            return i
    return None


_ANY_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")


def _table_path(raw: str) -> tuple[str, ...] | None:
    """The keys of a table header's dotted name (``prices."m".service_tiers.flex``)."""
    try:
        node: Any = tomllib.loads(f"{raw} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
    return tuple(path) if node == 0 else None


def _sub_headers(lines: list[str], model_lower: str) -> list[tuple[int, tuple[str, ...], bool]]:
    """``(0-based line, path below the entry, is an array table)`` of an entry's subtables."""
    found: list[tuple[int, tuple[str, ...], bool]] = []
    for i, text in enumerate(lines):
        m = _ANY_TABLE.match(text)
        if not m:
            continue
        path = _table_path(m.group(2))
        if (
            path is not None
            and len(path) > 2
            and path[0] == "prices"
            and path[1].strip().lower() == model_lower
        ):
            found.append((i, path[2:], m.group(1) == "[["))
    return found


def _since(path: Path, what: str, value: Any, line: int | None, fix: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date | str):
        raise PricesFileError(
            path,
            f"since of {what} must be a date such as 2026-01-01 (a UTC day), got {value!r}",
            line=line,
            fix=fix,
        )
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise PricesFileError(
                path,
                f"since of {what} must be a date such as 2026-01-01 (a UTC day), got {value!r}",
                line=line,
                fix=fix,
            ) from None
    return value


def _unknown_key(
    path: Path, key: str, where: str, allowed: tuple[str, ...], line: int | None
) -> PricesFileError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return PricesFileError(
        path,
        f"unknown key {key!r} in {where}{hint}",
        line=line,
        fix=f"Fix the key; its keys are {', '.join(allowed)}",
    )


_TIER_EXAMPLE: Final = (
    '[prices."my-model".service_tiers.flex]\ninput_per_mtok = 0.10\noutput_per_mtok = 0.30'
)
_CHANGE_EXAMPLE: Final = (
    '[[prices."my-model".changes]]\nsince = 2026-01-01\ninput_per_mtok = 0.25\n'
    "output_per_mtok = 0.75"
)


def _parse_tiers(
    path: Path,
    model: str,
    raw: Any,
    lines: list[str],
    subs: list[tuple[int, tuple[str, ...], bool]],
    fallback: int | None,
) -> tuple[FileTier, ...]:
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PricesFileError(
            path,
            f"service_tiers of {model!r} must hold one table of rates per tier, got {raw!r}",
            line=fallback,
            fix=f"Write each tier as a table:\n{_TIER_EXAMPLE}",
        )
    tiers: list[FileTier] = []
    for name, body in raw.items():
        header = next((i for i, p, arr in subs if p == ("service_tiers", name) and not arr), None)

        def line_of(key: str | None = None, header: int | None = header) -> int | None:
            if header is None:
                return fallback
            found = _key_line(lines, header, key) if key else None
            return (found if found is not None else header) + 1

        tier = name.strip().lower()
        what = f"the {tier!r} service tier of {model!r}"
        if not tier or tier in STANDARD_TIERS:
            raise PricesFileError(
                path,
                f"{model!r} has rates for a service tier named {name!r}, which is the "
                "standard price",
                line=line_of(),
                fix="Give the standard rates in the entry itself; tiers are for others, "
                "such as flex, priority or batch",
            )
        for key in body:
            if key not in TIER_KEYS:
                raise _unknown_key(path, key, what, TIER_KEYS, line_of(key))
        rates = {
            key: _rate(path, model, f"service_tiers.{tier}.{key}", body[key], line_of(key))
            for key in RATE_KEYS
            if key in body
        }
        if not rates:
            raise PricesFileError(
                path,
                f"{what} has no rates",
                line=line_of(),
                fix=f"Give the rates that tier charges, e.g.\n{_TIER_EXAMPLE}",
            )
        since = (
            _since(path, what, body["since"], line_of("since"), "Fix the date, e.g. since = "
                   "2026-10-12, or remove the line")
            if "since" in body
            else None
        )  # fmt: skip
        tiers.append(FileTier(tier, rates, since, line_of()))
    return tuple(tiers)


def _parse_changes(
    path: Path,
    model: str,
    raw: Any,
    lines: list[str],
    subs: list[tuple[int, tuple[str, ...], bool]],
    fallback: int | None,
) -> tuple[FileChange, ...]:
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise PricesFileError(
            path,
            f"changes of {model!r} must be an array of tables, one per dated price",
            line=fallback,
            fix=f"Write each dated price as:\n{_CHANGE_EXAMPLE}",
        )
    headers = [i for i, p, arr in subs if p == ("changes",) and arr]
    changes: list[FileChange] = []
    seen: dict[date, int | None] = {}
    for n, body in enumerate(raw):
        header = headers[n] if n < len(headers) else None

        def line_of(key: str | None = None, header: int | None = header) -> int | None:
            if header is None:
                return fallback
            found = _key_line(lines, header, key) if key else None
            return (found if found is not None else header) + 1

        what = f"a dated price of {model!r}"
        for key in body:
            if key not in CHANGE_KEYS:
                raise _unknown_key(path, key, what, CHANGE_KEYS, line_of(key))
        if "since" not in body:
            raise PricesFileError(
                path,
                f"{what} has no since date",
                line=line_of(),
                fix="Add the first day it is in force, e.g. since = 2026-01-01",
            )
        since = _since(path, what, body["since"], line_of("since"), "Fix the date")
        what = f"the price of {model!r} since {since}"
        for key in _REQUIRED:
            if key not in body:
                raise PricesFileError(
                    path,
                    f"{what} has no {key}",
                    line=line_of(),
                    fix=f"A dated price is a whole price: add `{key} = ...`",
                )
        if since in seen:
            raise PricesFileError(
                path,
                f"two prices of {model!r} since {since}",
                line=line_of("since"),
                fix="Keep one of them",
            )
        seen[since] = line_of()
        rates = {
            key: _rate(path, model, f"{key} (since {since})", body[key], line_of(key))
            for key in RATE_KEYS
            if key in body
        }
        problem = rates_problem(rates)
        if problem is not None:
            raise PricesFileError(
                path,
                f"{what} {problem}",
                line=line_of("cache_write_1h_per_mtok"),
                fix="A dated price is a whole price: add its `cache_write_per_mtok = ...`",
            )
        changes.append(FileChange(since, rates, line_of()))
    return tuple(sorted(changes, key=lambda c: c.since))


def _fix_entry(model: str) -> str:
    return (
        f"Fix that line, or rewrite the entry with: llmctx prices set {_shell(model)} "
        "--input USD_PER_MTOK --output USD_PER_MTOK"
    )


def _shell(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./:@+-]+", text) else "'" + text.replace("'", "") + "'"


def rate_problem(rate: Decimal) -> str | None:
    """Why ``rate`` is not a usable price per million tokens, or None when it is."""
    if not rate.is_finite() or rate < 0:
        return "must be a finite number >= 0"
    if rate > MAX_RATE:
        return f"must be at most {MAX_RATE:,} (US dollars per million tokens)"
    if rate != 0 and rate.as_tuple().exponent < _MIN_EXPONENT:  # type: ignore[operator]
        return "has more than 30 decimal places"
    return None


def rates_problem(rates: Mapping[str, Any]) -> str | None:
    """Why a whole price's rates do not make sense together, or None when they do.

    A 1-hour cache-write rate refines the cache-write rate, so it needs one (genai-prices
    refuses a 1-hour rate without it too).
    """
    if "cache_write_1h_per_mtok" in rates and "cache_write_per_mtok" not in rates:
        return (
            "has cache_write_1h_per_mtok but no cache_write_per_mtok: give the 5-minute "
            "cache-write rate too (1-hour writes are a kind of cache write)"
        )
    return None


def _rate(path: Path, model: str, key: str, value: Any, line: int | None) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise PricesFileError(
            path,
            f"{key} of {model!r} must be a number of US dollars per million tokens, got {value!r}",
            line=line,
            fix=_fix_entry(model),
        )
    try:
        rate = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        rate = Decimal("NaN")
    problem = rate_problem(rate)
    if problem is not None:
        raise PricesFileError(
            path,
            f"{key} of {model!r} {problem} (US dollars per million tokens), got {value!r}",
            line=line,
            fix=_fix_entry(model),
        )
    return rate


def parse(text: str, path: Path) -> dict[str, FileEntry]:
    """The entries of a prices file's text, keyed by lower-case model name.

    Args:
        text: the file's content.
        path: the file, for error messages.

    Raises:
        PricesFileError: the text is not valid TOML, or an entry is not a valid price.
    """
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        raise PricesFileError(
            path,
            f"not valid TOML ({exc})",
            line=int(m.group(1)) if m else None,
            fix=f"Fix that line; an entry looks like:\n{_EXAMPLE}",
        ) from None
    lines = text.splitlines()
    headers = _header_lines(lines)
    for key, value in data.items():
        if key != "prices" and isinstance(value, dict) and set(value) & set(_REQUIRED):
            raise PricesFileError(
                path,
                f"the table [{key}] looks like a price but is not under [prices]",
                line=headers.get(key.lower()),
                fix=f'Name it [prices."{key}"]; an entry looks like:\n{_EXAMPLE}',
            )
    table = data.get("prices", {})
    if not isinstance(table, dict):
        raise PricesFileError(
            path,
            "prices must be a table of models",
            fix=f"Write one table per model; an entry looks like:\n{_EXAMPLE}",
        )
    entries: dict[str, FileEntry] = {}
    for model, body in table.items():
        header = headers.get(model.lower())
        line = header + 1 if header is not None else None
        if not model.strip():
            raise PricesFileError(
                path, "an entry has an empty model name", line=line, fix="Name the model"
            )
        if not isinstance(body, dict):
            raise PricesFileError(
                path,
                f"prices.{model} must be a table of rates, got {body!r}",
                line=line,
                fix=f"Write it as a table; an entry looks like:\n{_EXAMPLE}",
            )

        def key_line(key: str, header: int | None = header) -> int | None:
            if header is None:
                return None
            found = _key_line(lines, header, key)
            return found + 1 if found is not None else header + 1

        for key in body:
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise PricesFileError(
                    path,
                    f"unknown key {key!r} in the entry for {model!r}{hint}",
                    line=key_line(key),
                    fix=f"Fix the key; an entry's keys are {', '.join(KEYS)}",
                )
        for key in _REQUIRED:
            if key not in body:
                raise PricesFileError(
                    path,
                    f"the entry for {model!r} has no {key}",
                    line=line,
                    fix=f"Add a line such as `{key} = 0.20` (US dollars per million tokens) "
                    "to the entry",
                )
        provider = body.get("provider")
        if provider is not None and (not isinstance(provider, str) or not provider.strip()):
            raise PricesFileError(
                path,
                f"provider of {model!r} must be a non-empty provider id, got {provider!r}",
                line=key_line("provider"),
                fix='Write e.g. provider = "openai", or remove the line to price every provider',
            )
        rates = {
            key: _rate(path, model, key, body[key], key_line(key))
            for key in RATE_KEYS
            if key in body
        }
        problem = rates_problem(rates)
        if problem is not None:
            raise PricesFileError(
                path,
                f"the entry for {model!r} {problem}",
                line=key_line("cache_write_1h_per_mtok"),
                fix="Add a line such as `cache_write_per_mtok = 0.25`",
            )
        lower = model.strip().lower()
        subs = _sub_headers(lines, model.lower())
        tiers = (
            _parse_tiers(path, model, body["service_tiers"], lines, subs,
                         key_line("service_tiers"))
            if "service_tiers" in body
            else ()
        )  # fmt: skip
        changes = (
            _parse_changes(path, model, body["changes"], lines, subs, key_line("changes"))
            if "changes" in body
            else ()
        )
        if lower in entries:
            raise PricesFileError(
                path,
                f"two entries for the model {model!r} (names are matched ignoring case)",
                line=line,
                fix="Keep one of them",
            )
        entries[lower] = FileEntry(
            model=model.strip(),
            provider=provider.strip() if isinstance(provider, str) else None,
            rates=rates,
            line=line,
            tiers=tiers,
            changes=changes,
        )
    return entries


def read(path: Path) -> dict[str, FileEntry]:
    """The entries of the file at ``path``; ``{}`` when it does not exist.

    Raises:
        PricesFileError: it cannot be read or is not a valid prices file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise PricesFileError(
            path,
            f"cannot be read ({exc})",
            fix=f"Make it a readable UTF-8 TOML file, or point {ENV} at another one",
        ) from None
    return parse(text, path)


# --------------------------------------------------------------------------------------------
# Editing.


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _number(rate: Decimal) -> str:
    text = format(rate, "f")
    return text if re.fullmatch(r"\d+(\.\d+)?", text) else _toml_string(text)


def _render(model: str, provider: str | None, rates: Mapping[str, Decimal]) -> list[str]:
    out = [f"[prices.{_toml_string(model)}]"]
    out += [f"{key} = {_number(rates[key])}" for key in RATE_KEYS if key in rates]
    if provider:
        out.append(f"provider = {_toml_string(provider)}")
    return out


def _block(lines: list[str], start: int) -> tuple[int, int]:
    """[start, end) of the entry whose header is at ``start``: through its last key line."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        if _ANY_HEADER.match(lines[i]):
            break
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            end = i + 1
    return start, end


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise PricesFileError(
            path, f"cannot be read ({exc})", fix="Make it a readable UTF-8 TOML file"
        ) from None


def _parse_for_edit(text: str, path: Path, model: str) -> dict[str, FileEntry]:
    """The entries before an edit of ``model``'s entry, which may be the broken one."""
    try:
        return parse(text, path)
    except PricesFileError as exc:
        lines = text.splitlines()
        start = _header_lines(lines).get(model.lower())
        if start is None:
            raise
        begin, end = _block(lines, start)
        try:
            # Setting or removing the broken entry is how it gets fixed.
            return parse("\n".join(lines[:begin] + lines[end:]) + "\n", path)
        except PricesFileError:
            raise exc from None


def _cannot_edit(path: Path, model: str, line: int | None) -> PricesFileError:
    return PricesFileError(
        path,
        f'the entry for {model!r} is not written as a [prices."{model}"] table, so llmctx '
        "cannot change it without touching other lines",
        line=line,
        fix=f"Edit it by hand, or rewrite it as a table:\n{_render(model, None, {})[0]}",
    )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Any failure (Ctrl-C included) leaves the old file whole and no temporary behind.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _comparable(entry: FileEntry) -> tuple[Any, ...]:
    """An entry without its line numbers (which move when another entry is edited)."""
    return (
        entry.model,
        entry.provider,
        dict(entry.rates),
        tuple((t.tier, dict(t.rates), t.since) for t in entry.tiers),
        tuple((c.since, dict(c.rates)) for c in entry.changes),
    )


def _check_edit(
    path: Path, before: dict[str, FileEntry], text: str, model: str, want: FileEntry | None
) -> None:
    after = parse(text, path)
    lower = model.lower()
    others_before = {k: _comparable(e) for k, e in before.items() if k != lower}
    others_after = {k: _comparable(e) for k, e in after.items() if k != lower}
    got = after.get(lower)
    ok = others_before == others_after and (
        (want is None and got is None)
        or (want is not None and got is not None and _comparable(got)[1:] == _comparable(want)[1:])
    )
    if not ok:
        raise _cannot_edit(path, model, before[lower].line if lower in before else None)


_NEW_FILE_HEADER: Final = (
    "# llmctx prices: US dollars per million tokens, read by llmctx programs and the CLI.\n"
    "# Written by `llmctx prices set`; edit freely (see docs/prices.md).\n"
)


def set_entry(
    path: Path, model: str, rates: Mapping[str, Decimal], provider: str | None = None
) -> FileEntry:
    """Add or replace the price of ``model`` in the file at ``path`` (created if missing).

    Only the entry's own lines change (a comment inside the old entry goes with it); other
    entries and comments stay. The file is replaced atomically, so a reader sees the old file
    or the new one, never half of one; a failure or Ctrl-C leaves the old file.

    Args:
        path: the prices file.
        model: the model name.
        rates: ``input_per_mtok`` and ``output_per_mtok``, optionally the cache rates.
        provider: restrict the price to this provider id; ``None`` for every provider.

    Returns:
        The entry as written (with its line).

    Raises:
        PricesFileError: the file is not a valid prices file (nothing is written), or the
            entry is written in a form that cannot be changed in place.
    """
    model = model.strip()
    text = _read_text(path)
    before = _parse_for_edit(text, path, model)
    lines = text.splitlines()
    lower = model.lower()
    block = _render(model, provider, rates)
    headers = _header_lines(lines)
    if lower in headers:
        start, end = _block(lines, headers[lower])
        lines[start:end] = block
        line = start + 1
    elif lower in before:
        raise _cannot_edit(path, model, before[lower].line)
    else:
        if not lines:
            lines = _NEW_FILE_HEADER.splitlines()
        if lines and lines[-1].strip():
            lines.append("")
        line = len(lines) + 1
        lines += block
    new_text = "\n".join(lines) + "\n"
    kept = before.get(lower)
    # The entry's service tiers and dated prices are tables of their own: they stay.
    want = FileEntry(
        model,
        provider,
        dict(rates),
        line,
        tiers=kept.tiers if kept else (),
        changes=kept.changes if kept else (),
    )
    _check_edit(path, before, new_text, model, want)
    _write_atomic(path, new_text)
    return want


def _tier_key(tier: str) -> str:
    return tier if _BARE_KEY.fullmatch(tier) else _toml_string(tier)


def set_tier(
    path: Path,
    model: str,
    tier: str,
    rates: Mapping[str, Decimal],
    since: date | None = None,
) -> FileTier:
    """Add or replace the rates of ``model`` at a service tier (``[prices."m".service_tiers.T]``).

    The entry must exist (its standard price comes first). Only the tier's own lines change,
    and the file is replaced atomically, as :func:`set_entry` does.

    Args:
        path: the prices file.
        model: the model name of an existing entry.
        tier: ``"flex"``, ``"priority"``, ``"batch"``, ...
        rates: the rates that differ from the standard ones (at least one).
        since: the first day (UTC) they apply, or ``None``.

    Returns:
        The tier as written (with its line).

    Raises:
        PricesFileError: no such entry, a standard tier name, no rates, or the file cannot be
            edited in place (nothing is written).
    """
    model = model.strip()
    tier = tier.strip().lower()
    lower = model.lower()
    text = _read_text(path)
    before = parse(text, path)
    entry = before.get(lower)
    if entry is None:
        raise PricesFileError(
            path,
            f"there is no entry for {model!r} to add the {tier!r} service tier to",
            fix=f"Give its standard price first: llmctx prices set {_shell(model)} --input "
            "USD_PER_MTOK --output USD_PER_MTOK",
        )
    if not tier or tier in STANDARD_TIERS or not rates:
        raise PricesFileError(
            path,
            f"a service tier needs a name other than {', '.join(sorted(STANDARD_TIERS))} and at "
            f"least one rate (got {tier!r}, {len(rates)} rates)",
            fix="Name a tier such as flex, priority or batch and give --input and/or --output",
        )
    lines = text.splitlines()
    headers = _header_lines(lines)
    if lower not in headers:
        raise _cannot_edit(path, entry.model, entry.line)
    block = [f"[prices.{_toml_string(entry.model)}.service_tiers.{_tier_key(tier)}]"]
    block += [f"{key} = {_number(rates[key])}" for key in RATE_KEYS if key in rates]
    if since is not None:
        block.append(f"since = {since.isoformat()}")
    subs = _sub_headers(lines, lower)
    existing = [i for i, p, arr in subs if p == ("service_tiers", tier) and not arr]
    if existing:
        start, end = _block(lines, existing[0])
        lines[start:end] = block
        line = start + 1
    elif tier in {t.tier for t in entry.tiers}:
        raise _cannot_edit(path, entry.model, entry.line)
    else:
        last = max(_block(lines, i)[1] for i in [headers[lower], *(i for i, _, _ in subs)])
        lines[last:last] = ["", *block]
        line = last + 2
    new_text = "\n".join(lines) + "\n"
    written = FileTier(tier, dict(rates), since, line)
    tiers = [t for t in entry.tiers if t.tier != tier] + [written]
    want = FileEntry(
        entry.model, entry.provider, entry.rates, entry.line, tuple(tiers), entry.changes
    )
    after = parse(new_text, path).get(lower)
    same_tiers = after is not None and sorted(
        (t.tier, dict(t.rates), t.since) for t in after.tiers
    ) == sorted((t.tier, dict(t.rates), t.since) for t in want.tiers)
    if not same_tiers:
        raise _cannot_edit(path, entry.model, entry.line)
    # Compare everything else (tier order may differ, so compare without tiers).
    _check_edit(
        path,
        before,
        new_text,
        entry.model,
        FileEntry(
            entry.model,
            entry.provider,
            entry.rates,
            entry.line,
            after.tiers if after else (),
            entry.changes,
        ),
    )
    _write_atomic(path, new_text)
    return written


def remove_entry(path: Path, model: str) -> FileEntry | None:
    """Remove the price of ``model`` from the file at ``path``.

    Returns:
        The entry removed, or ``None`` when the file has none for ``model`` (nothing written).

    Raises:
        PricesFileError: as :func:`set_entry`.
    """
    text = _read_text(path)
    before = _parse_for_edit(text, path, model.strip())
    lower = model.strip().lower()
    lines = text.splitlines()
    headers = _header_lines(lines)
    entry = before.get(lower)
    if entry is None and lower in headers:  # the broken entry itself
        entry = FileEntry(model.strip(), None, {}, headers[lower] + 1)
    if entry is None:
        return None
    if lower not in headers:
        raise _cannot_edit(path, entry.model, entry.line)
    # The entry's service tiers and dated prices go with it, last first so indexes hold.
    blocks = sorted(
        [
            _block(lines, headers[lower]),
            *(_block(lines, i) for i, _, _ in _sub_headers(lines, lower)),
        ],
        reverse=True,
    )
    for start, end in blocks:
        # The blank line that separated a table from the one before goes with it.
        if (
            start > 0
            and not lines[start - 1].strip()
            and (end >= len(lines) or not lines[end].strip())
        ):
            start -= 1
        del lines[start:end]
    new_text = "\n".join(lines) + "\n" if lines else ""
    _check_edit(path, before, new_text, entry.model, None)
    _write_atomic(path, new_text)
    return entry
