"""The secret corpus: every rule of detect-secrets (Yelp's maintained set) that has a fixed
shape, plus the LLM providers' key formats, is masked by redact_text and never reaches a
store, an export, the CLI, a log line or an exception string."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import llmctx
from llmctx._redact import redact_text

pytest.importorskip("detect_secrets")
from detect_secrets.core.scan import scan_line
from detect_secrets.settings import default_settings

#: (detect-secrets secret type, a line it flags). Made-up values in each service's format.
CORPUS: list[tuple[str, str]] = [
    ("AWS Access Key", "my key AKIAIOSFODNN7EXAMPLQ ok"),
    (
        "Azure Storage Account access key",
        "AccountKey=lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnIYVT"
        "kLWntUO1F8j8rQ==",
    ),
    ("Basic Auth Credentials", "https://admin:s3cr3tP4ss@example.com/x"),
    ("Discord Bot Token", "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs"),
    ("GitHub Token", "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"),
    ("GitLab Token", "glpat-xxxxxxxxxxxxxxxxxx1a"),
    (
        "JSON Web Token",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9l"
        "IiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    ),
    ("Mailchimp Access Key", "key 0123456789abcdef0123456789abcdef-us12"),
    ("NPM tokens", "//registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("OpenAI Token", "sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst"),
    (
        "Private Key",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ),
    (
        "PyPI Token",
        "pypi-AgEIcHlwaS5vcmcCJDNhZjE4ZWQ4LTIyMWEtNDc2ZS04YmRlLWQ2ZmQ4YWM3YjA3MgACKlszLCJjYWI2"
        "MTMxMy0xZjBiLTRlYWQtOWRjNC1mZTE3NzQxZjE1OWIiXQAABiAnPZC3Zi0y",
    ),
    ("SendGrid API Key", "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"),
    ("Slack Token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    (
        "Slack Token",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ),
    ("Square OAuth Secret", "sq0csp-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg"),
    ("Stripe Access Key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("Telegram Bot Token", "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"),
    ("Twilio API Key", "SK0123456789abcdef0123456789abcdef"),
    (
        "Artifactory Credentials",
        "AKCp8jQ8i8dMfZD3JGf8b7bk5o1d5b7h9g8f7e6d5c4b3a2z1y0x9w8v7u6t5s4r3q2p1o0n9m8l7k6",
    ),
    ("Secret Keyword", 'password = "hunter2-Secret!"'),
]

#: Formats detect-secrets has no rule for: (a label, the line, the secret in it).
EXTRA: list[tuple[str, str, str]] = [
    (
        "AWS secret access key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYQ",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYQ",
    ),
    (
        "GitHub fine-grained PAT",
        "token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW0123",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW0123",
    ),
    (
        "Cloudant URL",
        "https://user:abcdefghijklmnopqrstuvwxyz0123456789abcd@user.cloudant.com",
        "abcdefghijklmnopqrstuvwxyz0123456789abcd",
    ),
    (
        "Anthropic",
        "x-api-key: sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH-abcdefgh_0123AA",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH-abcdefgh_0123AA",
    ),
    (
        "Google",
        "key=AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
    ),
    (
        "Hugging Face",
        "HF token hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    ),
    (
        "lower-case bearer",
        "authorization: bearer abcdef0123456789abcdef01",
        "abcdef0123456789abcdef01",
    ),
    ("Redis URL, empty user", "redis://:rEd1sPassw0rd@cache:6379/0", "rEd1sPassw0rd"),
    ("password with @ and /", "postgresql://app:p@ss/w0rd!x@db:5432/app", "p@ss/w0rd!x"),
    ("libpq keyword DSN", "host=db user=app password='s3cr3t pass' dbname=x", "s3cr3t pass"),
]


def _found(line: str, kind: str) -> list[str]:
    with default_settings():
        return [s.secret_value or "" for s in scan_line(line) if s.type == kind]


def _secrets() -> list[str]:
    """Every secret value of the corpus, as the maintained rules (or EXTRA) name it."""
    out = [v for kind, line in CORPUS for v in _found(line, kind) if len(v) >= 8]
    return out + [secret for _, _, secret in EXTRA]


@pytest.mark.parametrize(
    ("kind", "line"), CORPUS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CORPUS)]
)
def test_every_maintained_rule_is_masked(kind: str, line: str) -> None:
    """detect-secrets flags the sample (it is a real instance of the rule); after redact_text
    the rule flags nothing and the secret value is gone."""
    values = _found(line, kind)
    assert values, f"detect-secrets no longer flags this {kind} sample"
    masked = redact_text(line)
    assert _found(masked, kind) == [] or all(v not in masked for v in values), masked
    for value in values:
        if len(value) >= 8:
            assert value not in masked, masked


@pytest.mark.parametrize(("label", "line", "secret"), EXTRA, ids=[e[0] for e in EXTRA])
def test_provider_keys_and_url_forms_are_masked(label: str, line: str, secret: str) -> None:
    """Keys of LLM providers and every URL/DSN form of a password are masked."""
    masked = redact_text(line)
    assert secret not in masked, masked
    assert "[REDACTED]" in masked


def test_ordinary_text_is_left_alone() -> None:
    """Prose, code and usage counts that merely mention tokens or keys are not mangled."""
    for text in (
        "Each token: roughly four characters of English text.",
        '{"usage": {"prompt_tokens": 12345678, "total_tokens": 12345690}}',
        "Set max_tokens=256 and the access_key_id column to NULL.",
        "def token_count(text: str) -> int: return len(text) // 4",
    ):
        assert redact_text(text) == text


def test_no_corpus_secret_reaches_a_store_export_cli_log_or_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session whose name, tags, request, reply, metadata and error quote every corpus
    secret leaves none of them in the database file, an export, `sessions show`, the llmctx
    log or a BudgetExceeded message."""
    from typer.testing import CliRunner

    from llmctx._cli.app import app
    from llmctx.stores import SQLiteStore

    secrets = _secrets()
    blob = " | ".join([line for _, line in CORPUS] + [line for _, line, _ in EXTRA])
    db = tmp_path / "corpus.db"
    store = SQLiteStore(db)
    errors: list[str] = []
    with (
        caplog.at_level(logging.DEBUG, logger="llmctx"),
        llmctx.price_override("corpus-model", input_per_mtok="1", output_per_mtok="1"),
    ):
        with llmctx.session(
            f"run {blob}", tags={"note": blob}, budget=llmctx.Budget(tokens=50), store=store
        ) as s:
            with llmctx.track_call(
                provider="acme",
                model="corpus-model",
                request={"messages": [{"role": "user", "content": blob}]},
                max_output_tokens=0,
                metadata={"trace": blob},
            ) as call:
                call.finish(usage=llmctx.Usage(input_tokens=1, requests=1), response=blob)
            with (
                pytest.raises(RuntimeError),
                llmctx.track_call(provider="acme", model="corpus-model", max_output_tokens=0),
            ):
                raise RuntimeError(blob)
            try:
                with llmctx.track_call(provider="acme", model="corpus-model", input_tokens=100):
                    pass
            except llmctx.BudgetExceeded as exc:
                errors.append(str(exc))
    store.close()
    runner = CliRunner()
    show = runner.invoke(app, ["sessions", "show", s.id, "--db", str(db)], env={"COLUMNS": "400"})
    export = runner.invoke(app, ["sessions", "export", s.id, "--db", str(db)])
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("corpus.db*")).decode("utf-8", "replace")
    assert errors, "the budget should have refused the last call"
    sinks = {
        "database file": raw,
        "sessions show": show.stdout,
        "sessions export": export.stdout,
        "llmctx log": caplog.text,
        "BudgetExceeded": " ".join(errors),
    }
    assert show.exit_code == 0 and export.exit_code == 0
    leaks = [
        (where, secret) for where, text in sinks.items() for secret in secrets if secret in text
    ]
    assert leaks == []
