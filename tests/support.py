"""Plain helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.loopback import Reply

ROOT = Path(__file__).resolve().parent.parent
#: Real recorded API responses, read in place (see shared/data/real/PROVENANCE.md).
REAL = ROOT.parent / "shared" / "data" / "real"


def real(name: str) -> bytes:
    path = REAL / name
    if not path.exists():
        pytest.fail(f"recorded payload {path} is missing: tests expect shared/ beside the repo")
    return path.read_bytes()


def ok(body: bytes, content_type: str = "application/json") -> Reply:
    return 200, {"Content-Type": content_type}, body
