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

Numbers are read exactly (``0.1`` is ``Decimal("0.1")``); quoted numbers work too. Other
top-level tables are left alone (a project's ``llmctx.toml`` may hold other settings).

Editing (:func:`set_entry`, :func:`remove_entry`) rewrites only the lines of the one entry, so
other entries and comments stay as they were; the result is parsed back and compared before
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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal

from ._exceptions import ConfigError

__all__ = [
    "ENV",
    "MAX_RATE",
    "KEYS",
    "PROJECT_FILE",
    "FileEntry",
    "PricesFile",
    "PricesFileError",
    "locate",
    "parse",
    "read",
    "remove_entry",
    "set_entry",
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
)
KEYS: Final = (*RATE_KEYS, "provider")
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
class FileEntry:
    """One model's price as the file has it.

    Attributes:
        model: the model name (the table's key, as written).
        provider: the provider the price is restricted to, or ``None``.
        rates: ``input_per_mtok`` ... ``cache_write_per_mtok``; absent cache rates are not keys.
        line: the 1-based line of the entry's table header (or its key), when found.
    """

    model: str
    provider: str | None
    rates: Mapping[str, Decimal]
    line: int | None


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
        lower = model.strip().lower()
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


def _check_edit(
    path: Path, before: dict[str, FileEntry], text: str, model: str, want: FileEntry | None
) -> None:
    after = parse(text, path)
    lower = model.lower()
    others_before = {
        k: (e.model, e.provider, dict(e.rates)) for k, e in before.items() if k != lower
    }
    others_after = {k: (e.model, e.provider, dict(e.rates)) for k, e in after.items() if k != lower}
    got = after.get(lower)
    ok = others_before == others_after and (
        (want is None and got is None)
        or (
            want is not None
            and got is not None
            and (got.provider, dict(got.rates)) == (want.provider, dict(want.rates))
        )
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
    want = FileEntry(model, provider, dict(rates), line)
    _check_edit(path, before, new_text, model, want)
    _write_atomic(path, new_text)
    return want


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
    start, end = _block(lines, headers[lower])
    # The blank line that separated the entry from the one before goes with it.
    if start > 0 and not lines[start - 1].strip() and (end >= len(lines) or not lines[end].strip()):
        start -= 1
    del lines[start:end]
    new_text = "\n".join(lines) + "\n" if lines else ""
    _check_edit(path, before, new_text, entry.model, None)
    _write_atomic(path, new_text)
    return entry
