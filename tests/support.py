"""Plain helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.loopback import Reply

ROOT = Path(__file__).resolve().parent.parent
#: Our own payloads in each provider's wire format (tests/fixtures/<provider>/), enough for every
#: unit and end-to-end test on a fresh clone.
FIXTURES = ROOT / "tests" / "fixtures"
#: Real recorded API responses, read in place (see shared/data/real/PROVENANCE.md); CI has them,
#: a fresh clone does not.
REAL = ROOT.parent / "shared" / "data" / "real"


def fixture(name: str) -> bytes:
    """The bytes of ``tests/fixtures/<name>`` (e.g. ``"alphavantage/intraday_1min_MSFT.json"``)."""
    return (FIXTURES / name).read_bytes()


def real(name: str) -> bytes:
    """A real recording from ``../shared/data/real``; the calling test is skipped, with that reason, without it."""
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real recording {name} needs ../shared/data/real beside the checkout (CI has it)")
    return path.read_bytes()


def ok(body: bytes, content_type: str = "application/json") -> Reply:
    return 200, {"Content-Type": content_type}, body
