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

_SECRET_TEXT = re.compile(
    r"""
      (?P<bearer>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=\-]{8,}
    | (?P<urlpass>\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+(?=@)
    | \bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}
    | \b(?:AKIA|ASIA)[A-Z0-9]{16}\b
    | \bgh[pousr]_[A-Za-z0-9]{20,}
    | \bxox[abposr]-[A-Za-z0-9\-]{10,}
    | \bAIza[0-9A-Za-z_\-]{30,}
    """,
    re.VERBOSE,
)


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a credential (its value must not be kept)."""
    return bool(_SECRET_KEY.match(key)) and not _COUNT_KEY.search(key)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("urlpass") or ""
    return prefix + REDACTED


def redact_text(text: str) -> str:
    """``text`` with key-shaped substrings, bearer tokens and URL passwords replaced."""
    if not text:
        return text
    return _SECRET_TEXT.sub(_replace, text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings) with every secret replaced.

    Other objects pass through unchanged; the input is never mutated.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
