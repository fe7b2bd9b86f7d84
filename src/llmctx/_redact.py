"""Redaction: the one module that decides what a secret looks like and how it is masked.

Everything llmctx stores, logs, exports or puts in an error message goes through here; no other
module keeps a pattern of its own. Every secret becomes :data:`REDACTED`; what surrounds it (a
key name, a URL's user and host, the ``Bearer`` scheme word) stays readable.

* :func:`redact` walks dicts, lists and tuples: a mapping key that names a credential
  (:func:`is_secret_key`: ``api_key``, ``Authorization``, ``x-api-key``, ``password``,
  ``*_secret``, ``access_token``, ...) has its value replaced; every string goes through
  :func:`redact_text`. Keys such as ``max_tokens`` or ``prompt_tokens`` are counts, not
  secrets, and are kept.
* :func:`redact_text` masks, inside free text, the secrets of every URL in it (as
  :func:`redact_url` does) and every shape in ``_SHAPES``: provider keys (``sk-...``,
  ``sk-ant-...``, ``AKIA...``, ``ghp_...``, ``xox?-...``, ``AIza...``), ``Bearer`` (any case),
  ``Basic`` and ``Token`` credentials, credential headers or assignments
  (``Authorization: ...``, ``x-api-key: ...``, ``OPENAI_API_KEY=...``, ``Cookie: a=b``) and
  ``password=...`` (libpq keyword DSNs, quoted values included).
* :func:`redact_url` masks one URL of any scheme: the password of its userinfo (it may contain
  ``@``, ``/`` or ``:``; the user may be empty, as in ``redis://:pw@host``) and the values of
  secret query or fragment parameters (``?password=``, ``&api_key=``, ``&token=``,
  ``#access_token=``, ``?key=``, ``X-Amz-Signature=``).
* :func:`redact_dsn` masks a DSN or a message quoting one, and the DSN's own secrets wherever
  they recur verbatim (libpq quotes malformed fragments back).
* :func:`redact_headers` masks HTTP headers; :func:`redact_known` removes known secret values
  (a configured password, a header's value) from a message.

Cost: text without secrets must stay cheap, because every prompt and response passes here.
Each shape is found through a literal it starts with (``str.find`` scans in C) and is only
matched by its regex where that literal occurs; shapes that need a character the text lacks
(``-``, ``_``, ``=``, ...) are skipped after a one-character check, which is about 25 times
cheaper than looking for a longer literal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "dsn_secrets",
    "is_secret_key",
    "redact",
    "redact_dsn",
    "redact_headers",
    "redact_known",
    "redact_text",
    "redact_url",
]

REDACTED = "[REDACTED]"

# -- keys ------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"""^(?:
        api[-_]?key | x[-_]api[-_]key | apikey | authorization | proxy[-_]authorization
        | password | passwd | pwd | secret | client[-_]secret | token | auth[-_]token
        | access[-_]token | refresh[-_]token | id[-_]token | session[-_]token | bearer
        | cookie | set[-_]cookie | private[-_]key
        | .*[-_](?:api[-_]?key|secret|password|token)
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# Keys that end in "_token"/"_tokens" but are counts or limits, never credentials.
_COUNT_KEY = re.compile(
    r"(?:^|[-_])(?:max|min|num|prompt|completion|total|cached|reasoning)"
    r"(?:[-_]\w+)?[-_]tokens?$|_tokens$",
    re.IGNORECASE,
)
# Query parameters that carry credentials although their names would be too broad as mapping
# keys (a request's {"key": ...} is rarely a secret; a URL's ?key= usually is).
_URL_SECRET_PARAM = re.compile(r"^(?:key|sig|auth|pass|pw|.*signature|.*credentials?)$", re.I)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a mapping key (or a header name) names a credential.

    Args:
        key: a dict key, a header name or a query parameter name.

    Returns:
        Whether its value must not be kept.
    """
    return bool(_SECRET_KEY.match(key)) and not _COUNT_KEY.search(key)


def _secret_param(name: str) -> bool:
    if "%" in name:
        name = unquote(name)
    return _secret_key(name) or bool(_URL_SECRET_PARAM.match(name))


# -- URLs ------------------------------------------------------------------------------------

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
# The user part of a userinfo: no delimiter, no IPv6 bracket (then it is a host), no blank.
_USER = re.compile(r"[^:@/?#\[\]\s]*")
# "host:8080/path/@scope" is a port and a path, not a password.
_PORT_THEN_PATH = re.compile(r"\d+[/?#]")
# Where a URL quoted in free text ends.
_URL_END = re.compile(r"[\s\"'<>`]")
_PARAM = re.compile(r"([^?#&;=]*)=([^?#&;]*)")


def _scheme_start(text: str, sep: int) -> int:
    """Where the scheme before the ``://`` at ``sep`` starts (``sep`` when there is none)."""
    s = sep
    while s > 0 and text[s - 1] in _SCHEME_CHARS:
        s -= 1
    while s < sep and not text[s].isalpha():
        s += 1
    return s


def _first_of(text: str, chars: str, start: int, end: int) -> int:
    """Index of the first of ``chars`` in ``text[start:end]`` (``end`` when there is none)."""
    for c in chars:
        i = text.find(c, start, end)
        if i >= 0:
            end = i
    return end


def _url_secret_spans(text: str, sep: int, end: int) -> list[tuple[int, int]]:
    """Spans of the secrets of the URL that ends at ``end`` and has its ``://`` at ``sep``.

    The password runs from the user's ``:`` to the last ``@`` before the first ``?`` or ``#``
    that follows the first ``@``, so a password may hold ``@``, ``/``, ``:`` and even ``?``.
    Then the query and the fragment: the value of each secret parameter.
    """
    if _scheme_start(text, sep) == sep:
        return []
    spans: list[tuple[int, int]] = []
    user = _USER.match(text, sep + 3, end)
    user_end = user.end() if user else sep + 3
    host = sep + 3
    if user_end < end and text[user_end] == ":":
        first_at = text.find("@", user_end, end)
        if first_at >= 0:
            at = text.rfind("@", first_at, _first_of(text, "?#", first_at, end))
            if at > user_end + 1 and not _PORT_THEN_PATH.match(text, user_end + 1, at):
                spans.append((user_end + 1, at))
                host = at + 1
    elif user_end < end and text[user_end] == "@":
        host = user_end + 1
    query = _first_of(text, "?#", host, end)
    if query < end:
        spans += (
            match.span(2)
            for match in _PARAM.finditer(text, query, end)
            if match.end(2) > match.start(2) and _secret_param(match.group(1))
        )
    return spans


def _masked(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each of the (sorted, disjoint) ``spans`` replaced by :data:`REDACTED`."""
    pieces: list[str] = []
    last = 0
    for a, b in spans:
        pieces += (text[last:a], REDACTED)
        last = b
    pieces.append(text[last:])
    return "".join(pieces)


def _redact_urls(text: str) -> str:
    """``text`` with the secrets of every ``scheme://`` URL quoted in it masked."""
    spans: list[tuple[int, int]] = []
    sep = text.find("://")
    while sep >= 0:
        found = _URL_END.search(text, sep + 3)
        end = found.start() if found else len(text)
        spans += _url_secret_spans(text, sep, end)
        sep = text.find("://", end)
    return _masked(text, spans) if spans else text


def redact_url(url: str) -> str:
    """``url`` with its password and its secret query or fragment parameters masked.

    Any scheme (``redis://``, ``rediss://``, ``postgresql://``, ``https://``, ...). The
    userinfo's password may contain ``@``, ``/``, ``:`` and blanks unencoded, and the user may
    be empty (``redis://:pw@host``); the user, host, port, path and the other parameters stay.
    Provider keys and tokens anywhere else in it (a path, a lone user) are masked too.

    Args:
        url: one URL; a string without ``scheme://`` only has its key-shaped parts masked.

    Returns:
        The URL with every secret replaced by :data:`REDACTED`.
    """
    sep = url.find("://")
    if sep >= 0:
        spans = _url_secret_spans(url, sep, len(url))
        if spans:
            url = _masked(url, spans)
    return _redact_shapes(url)


# -- shapes in free text -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """One shape of secret in free text.

    ``pattern`` is matched only where one of ``anchors`` occurs (each match starts with one);
    group ``secret`` of a match is replaced. ``needs``: groups of characters; every match
    contains one character of each group. They are checked first, because a one-character
    ``in`` is the cheapest scan there is. ``fold``: the anchors are lower-case and looked up in
    the lower-cased text.
    """

    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    secret: int = 0
    needs: tuple[str, ...] = ()
    fold: bool = False
    #: The anchor is inside the secret, not at its start (``...-us12``): once an anchor is
    #: present (or, with no anchors, once ``probe`` finds something), the pattern is searched
    #: through the whole text.
    scan: bool = False
    probe: re.Pattern[str] | None = None


def _shape(
    anchors: str,
    pattern: str,
    *,
    secret: int = 0,
    needs: str = "",
    scan: bool = False,
    probe: str | None = None,
) -> _Shape:
    """A shape; ``anchors`` and ``needs`` are blank-separated, a ``(?i)`` pattern folds case."""
    flags = re.DOTALL if "(?s)" in pattern else 0
    return _Shape(
        tuple(anchors.split()),
        re.compile(pattern.replace("(?s)", ""), flags),
        secret,
        tuple(needs.split()),
        pattern.startswith("(?i)"),
        scan or probe is not None,
        None if probe is None else re.compile(probe),
    )


_CREDENTIAL = r"[A-Za-z0-9._~+/=\-]{8,}"
# A header's or an assignment's value: up to a blank, a quote or a list separator.
_VALUE = r"""["']?\s*[:=]\s*["']?([^\s"',;&]+)"""
# libpq's keyword form and its quoting (also PGPASSWORD=..., DB_PASSWORD="...").
_PASSWORD_ASSIGNMENT = _shape(
    "password",
    r"""(?i)password\s*=\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&'"]+)""",
    secret=1,
    needs="=",
)

# A keyword assignment whose value looks like a credential (12+ characters, a digit among
# them, so prose such as "each token: roughly four characters" is left alone): AWS secret
# keys, npm auth tokens, client secrets, ... (detect-secrets' KeywordDetector, narrowed).
_KEYWORD_ASSIGNMENT = _shape(
    "secret token passwd credential private_key access_key",
    r"""(?i)(?:secret|token|passwd|credential|private_key|access_key)[a-z0-9_\-]*["']?\s*[:=]"""
    r"""\s*["']?((?=[^\s"',;&]*\d)[^\s"',;&]{12,})""",
    secret=1,
    needs=":=",
)

#: Every shape of secret redact_text knows. Add new shapes here (issue corpora included). The
#: test corpus is detect-secrets' rule set (tests/test_redact_corpus.py), plus the LLM
#: providers' key formats.
_SHAPES: tuple[_Shape, ...] = (
    _shape("sk-", r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}", needs="-"),
    _shape("hf_", r"\bhf_[A-Za-z0-9]{30,}", needs="_"),
    _shape("github_pat_", r"\bgithub_pat_[A-Za-z0-9_]{22,}", needs="_"),
    _shape(
        "glpat- gldt- glrt- glptt- glcbt- glimt- glft- glsoat-",
        r"\bgl(?:pat|dt|rt|ptt|cbt|imt|ft|soat)-[A-Za-z0-9_\-]{20,}",
        needs="-",
    ),
    _shape(
        "eyJ",
        r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
        needs=". 0123456789",  # base64 of '{"alg":...}' and its claims always has digits
    ),
    _shape("npm_", r"\bnpm_[A-Za-z0-9]{36}", needs="_"),
    _shape("pypi-", r"\bpypi-Ag[A-Za-z0-9_\-]{50,}", needs="-"),
    _shape("SG.", r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}", needs="."),
    _shape(
        "hooks.slack.com/",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9/_\-]+)",
        secret=1,
        needs="/",
    ),
    _shape("sq0", r"\bsq0(?:csp|atp|idp)-[0-9A-Za-z_\-]{22,}", needs="-"),
    _shape(
        "sk_live_ sk_test_ rk_live_ rk_test_ pk_live_",
        r"\b[rsp]k_(?:live|test)_[0-9A-Za-z]{16,}",
        needs="_",
    ),
    _shape("SK", r"\bSK[0-9a-fA-F]{32}\b", needs="K"),
    _shape("AKC", r"\bAKC[A-Za-z0-9]{10,}", needs="K"),
    _shape("AccountKey=", r"AccountKey=([A-Za-z0-9+/=]{40,})", secret=1, needs="="),
    _shape(
        "-----BEGIN",
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*)",
        needs="-",
    ),
    _shape("-us", r"\b[0-9a-f]{32}-us[0-9]{1,2}\b", needs="-", scan=True),
    _shape(":AA", r"\b[0-9]{8,10}:AA[0-9A-Za-z_\-]{32,33}", needs=":", scan=True),
    _shape(  # Discord bot tokens: no literal part, so a cheap probe for ".xxxxxx." first
        "",
        r"\b[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,}",
        needs=". 0123456789",  # the first part is a base64 user id: digits
        probe=r"\.[A-Za-z0-9_\-]{6}\.",
    ),
    _shape("AKIA", r"\bAKIA[A-Z0-9]{16}\b", needs="K"),
    _shape("ASIA", r"\bASIA[A-Z0-9]{16}\b", needs="S"),
    _shape("gh", r"\bgh[pousr]_[A-Za-z0-9]{20,}", needs="_"),
    _shape("xox", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", needs="-"),
    _shape("AIza", r"\bAIza[0-9A-Za-z_\-]{30,}", needs="z"),
    _shape("bearer", rf"(?i)\bbearer\s+({_CREDENTIAL})", secret=1),
    _shape("Basic", rf"\bBasic\s+({_CREDENTIAL})", secret=1, needs="B"),
    _shape("Token", rf"\bToken\s+({_CREDENTIAL})", secret=1, needs="T"),
    _shape(
        "authorization",
        r"""(?i)\bauthorization["']?\s*[:=]\s*["']?"""
        r"""(?:(?:bearer|basic|token|digest|negotiate)\s+)?([^\s"',;]+)""",
        secret=1,
        needs="zZ :=",
    ),
    _shape("api-key", rf"(?i)api-key{_VALUE}", secret=1, needs="- :="),
    _shape("api_key", rf"(?i)api_key{_VALUE}", secret=1, needs="_ :="),
    _shape(
        "cookie", r"""(?i)\bcookie["']?\s*:\s*["']?([^\r\n"']*=[^\r\n"']*)""", secret=1, needs=": ="
    ),
    _PASSWORD_ASSIGNMENT,
    _KEYWORD_ASSIGNMENT,
)


def _apply(shape: _Shape, text: str, hay: str) -> str:
    """``text`` with every match of ``shape`` masked; ``hay`` is where its anchors are found."""
    if shape.scan:
        return shape.pattern.sub(lambda m: _masked_match(m, shape.secret), text)
    if len(hay) != len(text):  # lower() changed a length (rare non-ASCII): scan the text
        if not any(anchor in hay for anchor in shape.anchors):
            return text
        return shape.pattern.sub(lambda m: _masked_match(m, shape.secret), text)
    spans: list[tuple[int, int]] = []
    for anchor in shape.anchors:
        pos = hay.find(anchor)
        while pos >= 0:
            match = shape.pattern.match(text, pos)
            if match is None:
                pos = hay.find(anchor, pos + 1)
                continue
            spans.append(match.span(shape.secret))
            pos = hay.find(anchor, match.end())
    if not spans:
        return text
    spans.sort()
    return _masked(text, _merged(spans))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [spans[0]]
    for a, b in spans[1:]:
        if a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def _masked_match(match: re.Match[str], group: int) -> str:
    a, b = match.span(group)
    base = match.start()
    whole = match.group(0)
    return whole[: a - base] + REDACTED + whole[b - base :]


# Every character some shape needs, looked up once per text.
_NEEDED = "".join(sorted({c for shape in _SHAPES for group in shape.needs for c in group}))


@functools.lru_cache(maxsize=1024)
def _candidates(present: frozenset[str]) -> tuple[_Shape, ...]:
    """The shapes whose needed characters are all in ``present`` (a few thousand sets at most:
    the subsets of _NEEDED), so a text pays for the shapes it could contain, not for all."""
    return tuple(
        shape for shape in _SHAPES if all(not present.isdisjoint(group) for group in shape.needs)
    )


def _redact_shapes(text: str) -> str:
    candidates = _candidates(frozenset([c for c in _NEEDED if c in text]))
    folded: str | None = None
    i = 0
    while i < len(candidates):
        shape = candidates[i]
        i += 1
        if shape.fold:
            if folded is None:
                folded = text.lower()
            hay = folded
        else:
            hay = text
        if shape.probe is not None:
            if shape.probe.search(text) is None:
                continue
        else:
            for anchor in shape.anchors:
                if anchor in hay:
                    break
            else:
                continue
        masked = _apply(shape, text, hay)
        if masked is not text:
            text = masked
            folded = None
            # Masking can remove needed characters, never add one that matters: the shapes
            # still to come stay a superset of what the new text could contain.
    return text


def redact_text(text: str) -> str:
    """``text`` with every secret it quotes masked: URL secrets, keys, tokens, passwords.

    Args:
        text: free text (a prompt, a reply, an error message, a log line).

    Returns:
        The text with each secret replaced by :data:`REDACTED`; the same object when it held
        none.
    """
    if len(text) < 8:
        return text
    if text in _clean:
        return text
    original = text
    if ("@" in text or "=" in text) and "://" in text:
        text = _redact_urls(text)
    text = _redact_shapes(text)
    if text is original and len(text) <= _CLEAN_MAX_CHARS and type(text) is str:
        global _clean_chars
        if len(_clean) >= _CLEAN_MAX_ENTRIES or _clean_chars + len(text) > _CLEAN_BUDGET:
            _clean.clear()
            _clean_chars = 0
        _clean[text] = None
        _clean_chars += len(text)
    return text


# Texts found to hold no secret, so the next call with the same text (a model name, a system
# prompt, the messages of a chat's history, sent again at every turn) costs one dict lookup
# instead of a scan (a 2,000-character message: 14 us; a 50-turn chat of them, 0.7 ms a call).
# Only secret-free texts are kept (a secret never lingers here), each of at most
# _CLEAN_MAX_CHARS, at most _CLEAN_MAX_ENTRIES of them and _CLEAN_BUDGET characters in all
# (256 KiB of text: a 50-message chat of 2,000-character answers fits in it five times; a
# chat's history is mostly the same string objects its records already hold).
# Cleared wholesale when full (cheaper than an LRU's bookkeeping on every hit). A dict's reads
# and writes are atomic under the GIL; a lost insert only costs a later scan, and a lost
# count only delays the next clear.
_CLEAN_MAX_CHARS = 16_384
_CLEAN_MAX_ENTRIES = 1024
_CLEAN_BUDGET = 262_144
_clean: dict[str, None] = {}
_clean_chars = 0


# -- DSNs, headers, known values ---------------------------------------------------------------

_ESCAPE = re.compile(r"\\(.)")


def dsn_secrets(dsn: str) -> list[str]:
    """The secret values of a DSN: its URL password and secret parameters, ``password=...``.

    Args:
        dsn: ``scheme://user:password@host/db?...`` or a libpq keyword DSN
            (``host=db password='a b'``).

    Returns:
        Each secret as written and, for a quoted keyword value, unquoted.
    """
    secrets: list[str] = []
    sep = dsn.find("://")
    if sep >= 0:
        secrets += (dsn[a:b] for a, b in _url_secret_spans(dsn, sep, len(dsn)))
    for match in _PASSWORD_ASSIGNMENT.pattern.finditer(dsn):
        value = match.group(1)
        secrets.append(value)
        if value[:1] in "'\"" and len(value) >= 2:
            secrets.append(_ESCAPE.sub(r"\1", value[1:-1]))
    return [s for s in secrets if s]


def redact_known(text: str, secrets: Iterable[str], *, min_length: int = 1) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced, longest first.

    Args:
        text: a message that may quote the secrets verbatim.
        secrets: values known to be secret (a password, a configured header's value).
        min_length: values shorter than this are left alone (for values that are not all
            secrets, such as a server's environment, where masking ``"1"`` would mangle the
            message without protecting anything).

    Returns:
        The text with each secret replaced by :data:`REDACTED`.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= min_length}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_dsn(text: str, dsn: str | None = None) -> str:
    """``text`` with every password of a DSN masked.

    Args:
        text: a DSN, or a message that may quote one (``password=...``, ``user:pass@host``).
        dsn: the DSN the message is about; its secrets (:func:`dsn_secrets`) are also removed
            wherever they occur verbatim in ``text``.

    Returns:
        The text with each secret replaced by :data:`REDACTED`.
    """
    if dsn:
        text = redact_known(text, dsn_secrets(dsn))
    return redact_text(text)


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """HTTP headers with credentials masked.

    Args:
        headers: a mapping (``httpx.Headers`` included) or ``(name, value)`` pairs.

    Returns:
        A new dict: the value of every credential header (``Authorization``, ``x-api-key``,
        ``api-key``, ``Cookie``, ``*-token``, ...; any case) replaced, other values passed
        through :func:`redact_text`.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name: REDACTED if _secret_key(name) else redact_text(value) for name, value in items}


# -- structures --------------------------------------------------------------------------------

_SCALARS = (int, float, bool, type(None))
# is_secret_key's answers by key; requests reuse a handful of keys, so this stays tiny, and a
# dict lookup is cheaper than calling the lru_cache wrapper on every key of every request.
_key_verdicts: dict[str, bool] = {}


# The same answers as two sets, for the walk below: `key in set` is one bytecode, cheaper
# than a dict.get() call on every key of every request.
_safe_keys: set[str] = set()
_secret_keys: set[str] = set()


def _secret_key(key: str) -> bool:
    verdict = _key_verdicts.get(key)
    if verdict is None:
        verdict = is_secret_key(key)
        if len(_key_verdicts) < 4096:
            _key_verdicts[key] = verdict
            (_secret_keys if verdict else _safe_keys).add(key)
    return verdict


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings) with every secret replaced.

    Args:
        value: anything; other objects pass through unchanged.

    Returns:
        The copy (tuples become lists); the input is never mutated.
    """
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict:
        return _redact_mapping(value)
    if kind is list or kind is tuple:
        return [
            v if type(v) in _SCALARS else redact_text(v) if type(v) is str else redact(v)
            for v in value
        ]
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, str):  # str subclasses (enums and the like)
        return redact_text(value)
    return value


def _redact_mapping(value: Mapping[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    safe, secret, clean = _safe_keys, _secret_keys, _clean
    # Leaves, lists and nested dicts are handled inline, the key verdicts and the clean texts
    # read from their sets without a call: this runs on every recorded call, and a request is
    # mostly short strings and numbers under a handful of recurring keys, and a list of
    # message dicts (a call per level cost a third of the walk).
    for k, v in value.items():
        if v and type(k) is str and k not in safe and (k in secret or _secret_key(k)):
            out[k] = REDACTED
            continue
        vkind = type(v)
        if vkind is str:
            out[k] = v if len(v) < 8 or v in clean else redact_text(v)
        elif vkind in _SCALARS:
            out[k] = v
        elif vkind is list:
            out[k] = [
                _redact_mapping(x) if type(x) is dict else x if type(x) in _SCALARS else redact(x)
                for x in v
            ]
        elif vkind is dict:
            out[k] = _redact_mapping(v)
        else:
            out[k] = redact(v)
    return out
