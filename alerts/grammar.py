"""The condition language of alert rules: ``SYMBOL FIELD OP NUMBER``, parsed by hand (never ``eval``).

::

    condition := SYMBOL FIELD OP NUMBER          four tokens separated by blanks
    SYMBOL    := a ticker as models.bar.SYMBOL_RE accepts it (upper-cased): TSLA, BRK.B, BTC-USD
    FIELD     := open | high | low | close | volume | change_percent
    OP        := > | >= | < | <= | crosses_above | crosses_below
    NUMBER    := [+-] digits [. digits] [e|E [+-] digits]   finite, at most 40 significant digits,
                 its exponent (of the leading digit) between -100 and 100

Every token is ASCII: case is folded only after that check, so ``tſla`` or ``ıbm`` (which Unicode
upper-cases to TSLA and IBM) are refused, not read as another ticker.

Examples: ``TSLA close > 800``, ``BTC-USD change_percent <= -5``, ``IBM volume crosses_above 1e6``.
Fields and operators may be written in any case; :func:`format_condition` writes the canonical form,
and ``parse_condition(format_condition(c)) == c`` for every condition: the number's bounds are on its
value (digits and exponent), which the canonical text keeps, not on how long it was written
(``18941513439216871.1894151343921687140e55`` is canonically ``1.89415134392168711894151343921687140E+71``).
A :class:`Condition` built directly is held to the same bounds.

What a field means (its value is taken from the newest bar of a series that a load changed):

- ``open``/``high``/``low``/``close``/``volume``: the bar's own value (a bar without volume, an index,
  is not evaluated for ``volume``);
- ``change_percent``: ``(close - reference) / reference * 100`` where ``reference`` is, for intraday
  bars, the close of the same series' newest bar at least 24 hours older (UTC) than the bar; for daily
  bars, the close of the previous bar (the previous session's close). No reference bar: not evaluated.

Errors: :class:`~errors.ConfigError` (exit 2 on the command line), one line naming the bad token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from errors import ConfigError
from models.bar import SYMBOL_RE

__all__ = ["Condition", "FIELDS", "OPERATORS", "CROSSING", "parse_condition", "format_condition", "MAX_CONDITION_LENGTH",
           "MAX_THRESHOLD_DIGITS", "MAX_THRESHOLD_EXPONENT"]  # fmt: skip

FIELDS = ("open", "high", "low", "close", "volume", "change_percent")
OPERATORS = (">", ">=", "<", "<=", "crosses_above", "crosses_below")
#: Operators that compare a value with the previous value of the same series.
CROSSING = frozenset({"crosses_above", "crosses_below"})
#: Longest condition text accepted, in characters (a rule is one short line).
MAX_CONDITION_LENGTH = 200
#: Most significant digits of a threshold, and the largest magnitude of its exponent (``Decimal.adjusted``).
MAX_THRESHOLD_DIGITS = 40
MAX_THRESHOLD_EXPONENT = 100
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_BLANKS = re.compile(r"[ \t]+")


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: ``symbol`` (upper case), ``field`` (one of :data:`FIELDS`), ``op`` (one of
    :data:`OPERATORS`) and ``threshold``, an exact finite :class:`~decimal.Decimal` in the field's unit
    (price, shares, or percent for ``change_percent``)."""

    symbol: str
    field: str
    op: str
    threshold: Decimal

    def __post_init__(self) -> None:
        if not SYMBOL_RE.fullmatch(self.symbol):
            raise ConfigError(f"malformed symbol {self.symbol!r}", name="condition", value=self.symbol)
        if self.field not in FIELDS:
            raise ConfigError(f"unknown field {self.field!r}", name="condition", value=self.field)
        if self.op not in OPERATORS:
            raise ConfigError(f"unknown operator {self.op!r}", name="condition", value=self.op)
        if not isinstance(self.threshold, Decimal) or not self.threshold.is_finite():
            raise ConfigError(f"threshold must be a finite decimal, got {self.threshold!r}", name="condition")
        if problem := _threshold_problem(self.threshold):
            raise ConfigError(f"threshold {self.threshold}: {problem}", name="condition", value=str(self.threshold))

    @property
    def crossing(self) -> bool:
        return self.op in CROSSING

    def __str__(self) -> str:
        return format_condition(self)


def _threshold_problem(threshold: Decimal) -> str | None:
    """Why a finite ``threshold`` is out of bounds (module docstring), or None."""
    if len(threshold.as_tuple().digits) > MAX_THRESHOLD_DIGITS:
        return f"more than {MAX_THRESHOLD_DIGITS} significant digits"
    if abs(threshold.adjusted()) > MAX_THRESHOLD_EXPONENT:
        return f"out of range (|exponent| at most {MAX_THRESHOLD_EXPONENT})"
    return None


def _non_ascii(token: str) -> str:
    """The first non-ASCII character of ``token``, shown with its code point."""
    ch = next(c for c in token if not c.isascii())
    return f"{ch!r} (U+{ord(ch):04X})"


def format_condition(condition: Condition) -> str:
    """The canonical text of ``condition``: ``"TSLA close > 800"``."""
    return f"{condition.symbol} {condition.field} {condition.op} {condition.threshold}"


def _fail(text: str, message: str, value: object = None) -> ConfigError:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return ConfigError(f"bad condition {shown!r}: {message}", name="condition", value=value)


def parse_condition(text: str) -> Condition:
    """Parse ``"SYMBOL FIELD OP NUMBER"`` (see the module docstring) into a :class:`Condition`.

    Raises :class:`~errors.ConfigError` naming the first bad token and what was expected there;
    never anything else, whatever ``text`` holds.
    """
    if not isinstance(text, str):
        raise _fail(repr(text), "a condition is text")
    if len(text) > MAX_CONDITION_LENGTH:
        raise _fail(text, f"longer than {MAX_CONDITION_LENGTH} characters")
    stripped = text.strip(" \t")
    tokens = _BLANKS.split(stripped) if stripped else []
    expected = "SYMBOL FIELD OP NUMBER, e.g. 'TSLA close > 800'"
    if len(tokens) < 4:
        raise _fail(text, f"{len(tokens)} token(s), expected 4: {expected}")
    if len(tokens) > 4:
        raise _fail(text, f"unexpected token {tokens[4]!r} after the number (expected 4 tokens: {expected})", tokens[4])
    raw_symbol, raw_field, raw_op, raw_number = tokens
    for n, (raw, what) in enumerate(((raw_symbol, "symbol"), (raw_field, "field"), (raw_op, "operator")), 1):
        if not raw.isascii():  # before any case folding: Unicode would turn 'tſla' into TSLA
            raise _fail(text, f"bad {what} {raw!r} (token {n}): non-ASCII character {_non_ascii(raw)}", raw)
    symbol = raw_symbol.upper()
    if not SYMBOL_RE.fullmatch(symbol):
        raise _fail(text, f"bad symbol {raw_symbol!r} (token 1: letters, digits and . - : ^ = / _)", raw_symbol)
    field = raw_field.lower()
    if field not in FIELDS:
        raise _fail(text, f"unknown field {raw_field!r} (token 2: one of {', '.join(FIELDS)})", raw_field)
    op = raw_op.lower()
    if op not in OPERATORS:
        raise _fail(text, f"unknown operator {raw_op!r} (token 3: one of {' '.join(OPERATORS)})", raw_op)
    if not _NUMBER_RE.fullmatch(raw_number):
        raise _fail(text, f"not a number: {raw_number!r} (token 4, e.g. 800, -2.5, 1e6)", raw_number)
    try:
        threshold = Decimal(raw_number)
    except InvalidOperation:  # the pattern admits only valid literals: an exponent past what decimal holds
        raise _fail(text, f"number out of range: {raw_number!r} (token 4)", raw_number) from None
    if not threshold.is_finite():
        raise _fail(text, f"number out of range: {raw_number!r} (token 4)", raw_number)
    if problem := _threshold_problem(threshold):
        raise _fail(text, f"number {raw_number!r} (token 4): {problem}", raw_number)
    return Condition(symbol, field, op, threshold)
