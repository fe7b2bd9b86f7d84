"""The one way llmctx writes dollars for people (CLI, errors, workshop, warnings).

Exact: no rounding, so a sub-cent cost such as ``$0.0000004`` never shows as ``$0.00``;
no exponent; no trailing zeros past the cents. :func:`decimal_text` is the same amount for
machines (``--json``, exports): a plain decimal string, never ``"4E-7"``.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = ["decimal_text", "format_usd"]


def format_usd(value: object) -> str:
    """``$2.50``, ``$0.075``, ``$0.0000004``, ``$0.00``: exact, at least two decimals.

    Args:
        value: a ``Decimal`` or anything ``Decimal(str(value))`` accepts.
    """
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    text = f"{d:f}"
    if "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(2, "0")
        text = f"{whole}.{frac}"
    else:
        text += ".00"
    if text.startswith("-"):
        return "-$" + text[1:]
    return "$" + text


def decimal_text(value: Decimal) -> str:
    """``value`` as a plain, exact decimal string: ``"0.0000004"``, ``"0.50"``, ``"0"``.

    What ``str(value)`` gives, except that ``str`` switches to an exponent below 1e-6
    (``"4E-7"``), which JSON readers and spreadsheets misread; this never does.
    """
    return f"{value:f}"
