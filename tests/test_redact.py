"""Redaction: secrets never survive into what llmctx stores, logs or raises."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmctx import redact
from llmctx._redact import (
    REDACTED,
    dsn_secrets,
    is_secret_key,
    redact_dsn,
    redact_headers,
    redact_known,
    redact_text,
    redact_url,
)

KEY_CHARS = string.ascii_letters + string.digits
prose = st.text(alphabet=string.ascii_letters + " .,\n", max_size=200)


@given(prose, st.text(alphabet=KEY_CHARS, min_size=20, max_size=60), prose)
def test_openai_and_anthropic_keys_in_text_are_removed(before: str, body: str, after: str) -> None:
    """An sk-/sk-ant-/sk-proj- key anywhere in free text is replaced."""
    for prefix in ("sk-", "sk-ant-", "sk-proj-"):
        key = prefix + body
        out = redact_text(f"{before} {key} {after}")
        assert key not in out
        assert REDACTED in out


@given(st.text(alphabet=KEY_CHARS + "._-", min_size=12, max_size=80))
def test_bearer_tokens_and_url_passwords_are_removed(token: str) -> None:
    """Bearer/Basic credentials and the password of a URL are replaced; the rest stays readable."""
    out = redact_text(f"Authorization: Bearer {token} and postgresql://app:{token}@db:5432/x")
    assert token not in out
    assert "Bearer [REDACTED]" in out
    assert "postgresql://app:[REDACTED]@db:5432/x" in out


def test_secret_keys_are_redacted_recursively_and_counts_are_kept() -> None:
    """Credential-named keys lose their values at any depth; token counts are not credentials."""
    request = {
        "model": "gpt-4o",
        "max_tokens": 256,
        "max_completion_tokens": 10,
        "api_key": "abc",
        "extra_headers": {"Authorization": "xyz", "X-Api-Key": "k", "x-request-id": "r1"},
        "messages": [{"role": "user", "content": "hello"}],
        "usage": {"prompt_tokens": 3, "total_tokens": 5},
        "client_secret": "s",
        "password": "p",
    }
    out = redact(request)
    assert out["max_tokens"] == 256
    assert out["max_completion_tokens"] == 10
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 5}
    assert out["api_key"] == out["client_secret"] == out["password"] == REDACTED
    assert out["extra_headers"] == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
        "x-request-id": "r1",
    }
    assert out["messages"] == request["messages"]
    assert request["api_key"] == "abc"  # the caller's object is not mutated


def test_key_classification() -> None:
    """The key rule separates credentials from counts and ordinary fields."""
    for key in (
        "api_key",
        "apiKey",
        "Authorization",
        "x-api-key",
        "OPENAI_API_KEY",
        "access_token",
        "github_token",
        "cookie",
        "db_password",
    ):
        assert is_secret_key(key), key
    for key in (
        "max_tokens",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "model",
        "messages",
        "content",
        "tokenizer",
    ):
        assert not is_secret_key(key), key


def test_ordinary_text_is_unchanged() -> None:
    """Prompts without secrets come back identical (no false positives on common words)."""
    text = "Explain the token bucket. Basically, a GitHub_user asks: what is https://example.com?"
    assert redact_text(text) == text


# -- URLs, DSNs, headers: the one policy every caller uses --------------------------------------

URL_CASES = [
    # (url, the secret, what must stay readable)
    ("redis://:hunter2@cache:6379/0", "hunter2", "redis://:[REDACTED]@cache:6379/0"),
    ("rediss://default:p@ss/w0rd@cache.example:6380/1", "p@ss/w0rd", "@cache.example:6380/1"),
    ("postgresql://bob:s3cr:et@db.example:5432/app", "s3cr:et", "postgresql://bob:[REDACTED]@"),
    ("postgresql://bob:pw d@h/db?sslmode=require", "pw d", "?sslmode=require"),
    ("postgresql://bob@h/db?password=hunter2&sslmode=require", "hunter2", "sslmode=require"),
    ("https://h.test/mcp?page=2&api_key=hunter2", "hunter2", "page=2&api_key=[REDACTED]"),
    ("https://h.test/mcp?token=hunter2#frag", "hunter2", "#frag"),
    ("https://h.test/cb#access_token=hunter2&state=s1", "hunter2", "state=s1"),
    ("https://user:pw@h.test/mcp?key=hunter2", "hunter2", "https://user:[REDACTED]@h.test/mcp"),
    ("http://user:hunter2-secret@example.invalid:6379/0", "hunter2", "[REDACTED]@example.invalid"),
]


@pytest.mark.parametrize(("url", "secret", "kept"), URL_CASES)
def test_redact_url_masks_every_url_form(url: str, secret: str, kept: str) -> None:
    """Passwords with @, / and :, empty users, rediss/postgresql and query secrets are masked."""
    out = redact_url(url)
    assert secret not in out
    assert kept in out


# In free text a blank ends a URL, so a password with a blank is only masked by redact_url.
@pytest.mark.parametrize(("url", "secret", "kept"), [c for c in URL_CASES if " " not in c[1]])
def test_urls_quoted_in_text_follow_the_same_policy(url: str, secret: str, kept: str) -> None:
    """A URL inside a message is masked exactly as redact_url masks it alone."""
    out = redact_text(f"could not connect to {url} (timeout)")
    assert secret not in out
    assert out == f"could not connect to {redact_url(url)} (timeout)"


def test_urls_without_secrets_are_unchanged() -> None:
    """Ports, paths with @, lone users and harmless parameters are not mistaken for secrets."""
    for url in (
        "https://host:8080/path/@scope/pkg",
        "https://registry.npmjs.org/@scope/pkg",
        "redis://user@host:6379",
        "postgresql://bob@h/db?email=a@b.example&sslmode=require",
        "https://example.com/docs?page=2",
    ):
        assert redact_url(url) == url
        assert redact_text(f"see {url} now") == f"see {url} now"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=x password=hunter2 user=bob", "hunter2"),
        ("host=x password='hunter2 with space' user=bob", "with space"),
        ("host=x password='it\\'s hunter2' user=bob", "hunter2"),
        ('PGPASSWORD="hunter2" psql', "hunter2"),
        ("postgresql://bob:hunter2@db/app", "hunter2"),
    ],
)
def test_redact_dsn_masks_keyword_and_url_dsns(text: str, secret: str) -> None:
    """libpq keyword DSNs (quoted values included) and URL DSNs lose their passwords."""
    assert secret not in redact_dsn(text, text)
    assert secret not in redact_dsn(text)


def test_redact_dsn_removes_the_dsn_password_wherever_it_is_quoted() -> None:
    """A message that echoes the password on its own (libpq does) is cleaned with the DSN."""
    dsn = "postgresql://bob:p@ss/w0rd@db/app"
    out = redact_dsn('invalid option near "p@ss/w0rd"', dsn)
    assert "p@ss/w0rd" not in out
    assert dsn_secrets("host=db password='a\\'b'") == ["'a\\'b'", "a'b"]


@given(st.text(alphabet=KEY_CHARS + "._-", min_size=12, max_size=60))
def test_credential_headers_are_masked(token: str) -> None:
    """Authorization (any case, any scheme), x-api-key, api-key and cookies lose their values."""
    text = (
        f"authorization: bearer {token}\nx-api-key: {token}\nAPI-KEY={token}\n"
        f"OPENAI_API_KEY={token}\nCookie: session={token}; theme=dark"
    )
    out = redact_text(text)
    assert token not in out
    assert "authorization: bearer [REDACTED]" in out
    headers = {"Authorization": f"Basic {token}", "x-api-key": token, "api-key": token}
    headers |= {"Cookie": token, "X-Request-Id": "r1", "X-Note": f"Bearer {token}"}
    masked = redact_headers(headers)
    assert token not in repr(masked)
    assert masked["X-Request-Id"] == "r1"
    assert masked["X-Note"] == "Bearer [REDACTED]"


def test_redact_known_masks_given_values_longest_first() -> None:
    """Known secret values are removed verbatim; values below min_length are left alone."""
    assert redact_known("pw1 then pw", ["pw", "pw1"]) == "[REDACTED] then [REDACTED]"
    assert redact_known("DEBUG=1 token abcd", ["1", "abcd"], min_length=4) == (
        "DEBUG=1 token [REDACTED]"
    )


def test_non_ascii_text_is_still_redacted() -> None:
    """Text whose lower-casing changes its length still has its secrets masked."""
    out = redact_text("İİİ authorization: bearer abcdefghijkl1234")
    assert "abcdefghijkl1234" not in out


def test_mcp_start_failures_are_described_without_secrets() -> None:
    """A server's start error loses its URL secrets, header values and secret env values."""
    from llmctx.mcp.config import load_config
    from llmctx.mcp.server import _describe

    config = load_config(
        {
            "mcpServers": {
                "r": {
                    "type": "http",
                    "url": "https://user:hunter2@h.test/mcp?token=t0k3n-value",
                    "headers": {"X-Custom": "custom-secret-1"},
                    "env": {"DEBUG": "1"},
                }
            }
        }
    ).servers["r"]
    exc = RuntimeError(
        "Client error for url 'https://user:hunter2@h.test/mcp?token=t0k3n-value' "
        "sent custom-secret-1 and hunter2 again, DEBUG=1"
    )
    text = _describe(exc, config)
    for secret in ("hunter2", "t0k3n-value", "custom-secret-1"):
        assert secret not in text
    assert "DEBUG=1" in text and "h.test/mcp" in text


def test_a_request_changed_after_its_call_does_not_change_what_was_recorded() -> None:
    """The record keeps a redacted copy taken when the call ended: mutating the request dict
    afterwards (new text, a key added) changes neither the session's record nor the store's."""
    import llmctx
    from llmctx.stores import MemoryStore

    store = MemoryStore()
    request: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    with llmctx.session("mutate", store=store) as s:
        with llmctx.track_call(provider="acme", model="m", request=request, free=True) as call:
            call.finish(usage=llmctx.Usage(input_tokens=1, output_tokens=1, requests=1))
        request["messages"][0]["content"] = "changed"
        request["api_key"] = "sk-proj-abcdefghijklmnopqrstuvwxyz"
    (kept,) = s.calls
    (stored,) = store.list_calls([s.id])
    for record in (kept, stored):
        assert record.request == {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def test_texts_found_clean_are_remembered_but_secrets_never_are() -> None:
    """redact_text remembers a secret-free text (the same answer next time) and never a text
    that held a secret, which is masked every time."""
    from llmctx import _redact

    clean = "a perfectly ordinary prompt without secrets"
    secret = "use sk-proj-abcdefghijklmnopqrstuvwxyz for this"
    assert redact_text(clean) == clean and clean in _redact._clean
    for _ in range(2):
        assert "abcdefghijklmnopqrstuvwxyz" not in redact_text(secret)
    assert secret not in _redact._clean


def test_a_chat_history_is_scanned_once_and_a_secret_is_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The messages of a chat's history come back with every call: a long secret-free text is
    scanned for secrets once and then found in the clean cache, while a text holding a secret
    is masked every time and never kept. The cache stays within its character budget."""
    from llmctx import _redact

    scans: list[int] = []
    real = _redact._redact_shapes

    def counting(text: str) -> str:
        scans.append(len(text))
        return real(text)

    monkeypatch.setattr(_redact, "_redact_shapes", counting)
    history = [
        {"role": "user", "content": f"turn {i}: " + "the fox ran to the river bank. " * 60}
        for i in range(5)
    ]
    secret = "my key is sk-proj-" + "A1b2C3d4E5f6G7h8" * 3 + " " + "pad " * 400
    request = {"model": "m", "messages": [*history, {"role": "user", "content": secret}]}
    first = redact(request)
    scanned = len(scans)
    second = redact(request)
    assert first == second
    assert "sk-proj-" not in str(second)
    assert len(scans) - scanned == 1  # only the text with the secret, scanned again
    assert secret not in _redact._clean
    for i in range(600):
        _redact.redact_text(f"{i:05d} " + "long clean text " * 200)
    assert sum(map(len, _redact._clean)) <= _redact._CLEAN_BUDGET
