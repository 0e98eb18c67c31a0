"""Pure helpers the providers' parsers share: Unix epoch stamps to UTC datetimes, JSON numbers to
exact decimal text, and compact excerpts of records for :class:`~etl.transform.Rejection`.

Nothing here does I/O. Stamps are UTC by definition (Unix time); decimal text never carries an
exponent, so PostgreSQL's ``numeric`` takes it as it is.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from etl.transform import excerpt

__all__ = ["EPOCH", "utc_from_ms", "utc_from_seconds", "epoch_ms", "whole_number", "number_text", "record_excerpt"]

#: The Unix epoch, UTC.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def utc_from_ms(ms: int) -> datetime:
    """The UTC instant ``ms`` milliseconds after the epoch; raises OverflowError beyond year 9999."""
    return EPOCH + timedelta(milliseconds=ms)


def utc_from_seconds(seconds: int) -> datetime:
    """The UTC instant ``seconds`` after the epoch; raises OverflowError beyond year 9999."""
    return EPOCH + timedelta(seconds=seconds)


def epoch_ms(ts: datetime) -> int:
    """Whole milliseconds from the epoch to the aware ``ts`` (floored)."""
    return (ts - EPOCH) // _MS


def whole_number(value: object) -> int | None:
    """``value`` as an int when it is a JSON integer, or a float or Decimal with an integral value
    (``1584748800.0``); None otherwise (booleans, strings, fractions, non-finite numbers)."""
    kind = type(value)
    if kind is int:
        return value  # type: ignore[return-value]
    if kind is float and math.isfinite(value) and value.is_integer():  # type: ignore[arg-type, union-attr]
        return int(value)  # type: ignore[arg-type]
    if kind is Decimal and value.is_finite() and value == value.to_integral_value():  # type: ignore[union-attr]
        return int(value)  # type: ignore[arg-type]
    return None


def number_text(value: object, *, strings: bool = False) -> str | None:
    """The exact decimal text of one JSON value, or None when it is not a finite number.

    ints keep their digits; Decimals (``json.loads(..., parse_float=Decimal)``: the digits as sent)
    and floats (their shortest round-trip text) are written without exponent (``1.12117471e+08`` ->
    ``112117471``, ``5e-7`` -> ``0.0000005``) and without an all-zero fraction (``642646396.0`` ->
    ``642646396``); other fractional digits are kept as sent (``412.50000000``). A JSON string is
    kept as sent when ``strings`` (APIs that send prices as strings; the value is checked later by
    :func:`etl.transform.validate_bars`), else None. Booleans and nulls are not numbers.
    """
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return value if strings else None  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return None
        value = Decimal(repr(value))
    elif kind is not Decimal or not value.is_finite():  # type: ignore[union-attr]
        return None
    text = format(value, "f")
    whole, dot, frac = text.partition(".")
    if dot and not frac.strip("0"):
        text = whole
    return "0" if text == "-0" else text


def record_excerpt(rec: object) -> str:
    """``rec`` (a parsed JSON record) as compact JSON, cut to the excerpt length (Decimals as strings)."""
    try:
        return excerpt(json.dumps(rec, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return excerpt(repr(rec))
