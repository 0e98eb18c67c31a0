"""Every environment variable marketpoll reads is documented in .env.example, and .env is read from
the working directory only (never a parent directory's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from pathlib import Path

import pytest

from errors import ConfigError
from etl.providers import get_provider_class, provider_names
from etl.providers.base import provider_config
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"

#: Read by the code but set by the system, not by the user: systemd's notification socket and
#: watchdog (for the unit) and the home directory (the default stream state file).
NOT_SETTINGS = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "HOME"}


class RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key, default=None):
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def assigned(text: str) -> set[str]:
    """Names given a value in .env.example, on a live line (``NAME=...``) or commented out (``# NAME=...``)."""
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def mentioned(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9_])", text) is not None


def settings_variables() -> set[str]:
    return {f.name.upper() for f in fields(Settings) if not f.name.startswith("_") and f.name not in ("env", "provider_options")}


def shipped_providers() -> list[str]:
    """The providers marketpoll ships (modules of ``etl.providers``), not the made-up ones other tests register."""
    return [n for n in provider_names() if get_provider_class(n).__module__.startswith("etl.providers.")]


def provider_variables() -> dict[str, set[str]]:
    """What each registered provider reads from the environment, found by building its config from a recording env."""
    found = {}
    for name in shipped_providers():
        env = RecordingEnv()
        try:
            provider_config(get_provider_class(name), replace(Settings(), env=env))
        except ConfigError:  # a required key is missing: every variable was asked for before that
            pass
        found[name] = set(env.asked)
    return found


def variables_read_in_code() -> set[str]:
    """``env.get("NAME")``, ``environ.get("NAME")``, ``environ["NAME"]`` in marketpoll's own modules."""
    pattern = re.compile(r"""(?:env|environ)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
    names: set[str] = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0] in ("tests", "benchmarks", "docs") or any(p.startswith(".") or p in ("venv", ".venv") for p in rel):
            continue
        names.update(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def test_the_discovery_finds_what_it_must():
    # the lists below are not empty by accident: known variables of each source are found
    assert {"DATABASE_URL", "LOG_FORMAT", "MARKETPOLL_API_TOKEN", "HTTP_TOTAL_TIMEOUT_SECONDS"} <= settings_variables()
    providers = provider_variables()
    assert {"alphavantage", "demo", "polygon", "binance", "coinbase", "yahoo", "stooq"} <= providers.keys()
    assert {"ALPHA_VANTAGE_API_KEY", "ALPHA_VANTAGE_BASE_URL", "ALPHA_VANTAGE_RATE_LIMIT", "ALPHA_VANTAGE_ADJUSTED"} <= providers[
        "alphavantage"
    ]
    assert {"POLYGON_LIMIT", "POLYGON_LOOKBACK_DAYS", "POLYGON_VERIFY_TICKERS"} <= providers["polygon"]
    assert {"SMTP_URL", "ALERT_EMAIL_FROM", "RATE_LIMIT_REDIS_URL", "NOTIFY_SOCKET"} <= variables_read_in_code()


def test_every_setting_field_has_a_line_in_env_example():
    text = example_text()
    missing = sorted(settings_variables() - assigned(text))
    assert not missing, f".env.example lacks a NAME= (or # NAME=) line for: {missing}"


@pytest.mark.parametrize("provider", shipped_providers())
def test_every_variable_a_provider_reads_is_in_env_example(provider):
    text = example_text()
    missing = sorted(v for v in provider_variables()[provider] if not mentioned(text, v))
    assert not missing, f".env.example does not document {missing} (read by provider {provider})"


def test_every_variable_read_elsewhere_is_in_env_example():
    text = example_text()
    missing = sorted(v for v in variables_read_in_code() - NOT_SETTINGS if not mentioned(text, v))
    assert not missing, f".env.example does not document {missing}"


def test_env_example_names_only_variables_that_are_read():
    known = settings_variables() | set().union(*provider_variables().values()) | variables_read_in_code()
    stale = sorted(assigned(example_text()) - known)
    assert not stale, f".env.example sets variables nothing reads (typo or removed setting): {stale}"


# -- .env: the working directory's only ------------------------------------------------------------------


def _show_jobs(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL", "LOG_"))}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "--show-scheduled-jobs"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_dotenv_in_a_parent_directory_is_not_read(tmp_path):
    parent, cwd = tmp_path / "parent", tmp_path / "parent" / "work"
    cwd.mkdir(parents=True)
    (parent / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from_parent.db'}\n")
    r = _show_jobs(cwd)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "from_parent.db").exists(), r.stderr
    assert (cwd / "marketpoll.db").exists(), r.stderr  # the default: nothing configured it
    assert "from_parent.db" not in r.stderr


def test_a_dotenv_in_the_working_directory_is_read(tmp_path):
    parent, cwd = tmp_path / "parent", tmp_path / "parent" / "work"
    cwd.mkdir(parents=True)
    (parent / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from_parent.db'}\n")
    (cwd / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from_cwd.db'}\n")
    r = _show_jobs(cwd)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from_cwd.db").exists(), r.stderr
    assert not (tmp_path / "from_parent.db").exists() and not (cwd / "marketpoll.db").exists()
