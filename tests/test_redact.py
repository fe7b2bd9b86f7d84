"""Redaction: secrets never survive into what llmctx stores, logs or raises."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from llmctx import redact
from llmctx._redact import REDACTED, is_secret_key, redact_text

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
