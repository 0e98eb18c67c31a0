"""A corporate action (split or dividend) as reported by a provider."""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

__all__ = ["CorporateAction", "ACTION_KINDS"]

ACTION_KINDS = ("split", "dividend")


class CorporateAction(NamedTuple):
    """One split or dividend of ``symbol`` with ex-date ``ex_date`` (the exchange's local date).

    - ``kind``: ``"split"`` or ``"dividend"``;
    - ``ratio``: for a split, new shares per old share as decimal text (``"4"`` for 4-for-1,
      ``"0.5"`` for a 1-for-2 reverse split); None for a dividend;
    - ``amount``: for a dividend, cash per share as decimal text in the quote currency; None for a split.
    """

    provider: str
    symbol: str
    ex_date: date
    kind: str
    ratio: str | None = None
    amount: str | None = None
