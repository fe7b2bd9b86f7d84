"""Redaction of secrets before anything is stored, logged or put in an error message.

Two rules, applied recursively to dicts, lists and strings:

* a mapping key that names a secret (``api_key``, ``Authorization``, ``x-api-key``,
  ``password``, ``*_secret``, ``access_token``, ...) has its value replaced;
* inside any string, things shaped like provider keys (``sk-...``, ``sk-ant-...``, ``AKIA...``,
  ``ghp_...``, ``xox?-...``), ``Bearer <token>`` / ``Basic <token>`` and the password of a URL
  (``scheme://user:password@host``) are replaced.

Keys such as ``max_tokens`` or ``prompt_tokens`` are counts, not secrets, and are kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text"]

REDACTED = "[REDACTED]"

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

# One pattern per secret shape, each behind a literal that must occur for it to match: `in`
# scans in C, so ordinary prompts (the common case) cost a few substring checks, not a regex
# pass with many alternatives at every position.
_BEARER = re.compile(r"\b((?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=\-]{8,}")
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+(?=@)", re.IGNORECASE)
_SK_KEY = re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_GITHUB_TOKEN = re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}")
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")
_GOOGLE_KEY = re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}")
_KEEP_PREFIX = r"\1" + REDACTED  # keep the "Bearer " / "scheme://user:" part


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a mapping key names a credential (its value must not be kept)."""
    return bool(_SECRET_KEY.match(key)) and not _COUNT_KEY.search(key)


def redact_text(text: str) -> str:
    """``text`` with key-shaped substrings, bearer tokens and URL passwords replaced."""
    if len(text) < 8:
        return text
    if "://" in text:
        text = _URL_PASSWORD.sub(_KEEP_PREFIX, text)
    if "Bearer" in text or "Basic" in text or "Token" in text:
        text = _BEARER.sub(_KEEP_PREFIX, text)
    if "sk-" in text:
        text = _SK_KEY.sub(REDACTED, text)
    if "AKIA" in text or "ASIA" in text:
        text = _AWS_KEY.sub(REDACTED, text)
    if "gh" in text and "_" in text:
        text = _GITHUB_TOKEN.sub(REDACTED, text)
    if "xox" in text:
        text = _SLACK_TOKEN.sub(REDACTED, text)
    if "AIza" in text:
        text = _GOOGLE_KEY.sub(REDACTED, text)
    return text


_SCALARS = (int, float, bool, type(None))
# is_secret_key's answers by key; requests reuse a handful of keys, so this stays tiny, and a
# dict lookup is cheaper than calling the lru_cache wrapper on every key of every request.
_key_verdicts: dict[str, bool] = {}


def _secret_key(key: str) -> bool:
    verdict = _key_verdicts.get(key)
    if verdict is None:
        verdict = is_secret_key(key)
        if len(_key_verdicts) < 4096:
            _key_verdicts[key] = verdict
    return verdict


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings) with every secret replaced.

    Other objects pass through unchanged; the input is never mutated.
    """
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict or isinstance(value, Mapping):
        out = {}
        # Leaves are handled inline: this runs on every recorded call, and most values of a
        # request are short strings and numbers.
        for k, v in value.items():
            vkind = type(v)
            if v and type(k) is str and _secret_key(k):
                out[k] = REDACTED
            elif vkind is str:
                out[k] = v if len(v) < 8 else redact_text(v)
            elif vkind in _SCALARS:
                out[k] = v
            else:
                out[k] = redact(v)
        return out
    if kind is list or kind is tuple:
        return [
            v if type(v) in _SCALARS else redact_text(v) if type(v) is str else redact(v)
            for v in value
        ]
    if isinstance(value, str):  # str subclasses (enums and the like)
        return redact_text(value)
    return value
