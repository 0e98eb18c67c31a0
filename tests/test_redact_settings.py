from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from errors import ConfigError
from etl.providers.alphavantage import AlphaVantageProvider
from etl.providers.base import provider_config
from etl.providers.demo import DemoProvider
from etl.ratelimit import parse_rates
from etl.redact import RedactingFormatter, Redactor, redact_url
from settings import Settings, absolute_sqlite_url


def test_redact_url_masks_credential_parameters_only():
    url = "https://www.alphavantage.co/query?function=TIME_SERIES_INTRADAY&symbol=IBM&apikey=K3Y&token=t"
    assert redact_url(url) == "https://www.alphavantage.co/query?function=TIME_SERIES_INTRADAY&symbol=IBM&apikey=***&token=***"
    assert redact_url("http://h/q") == "http://h/q"


def test_redacting_formatter_cleans_messages_and_tracebacks():
    redactor = Redactor(["SUPERSECRET"])
    fmt = RedactingFormatter("%(message)s", redactor)
    try:
        raise RuntimeError("GET /query?apikey=SUPERSECRET failed")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key %s", ("SUPERSECRET",), sys.exc_info())
    out = fmt.format(record)
    assert "SUPERSECRET" not in out and out.count("***") >= 2 and "RuntimeError" in out


def test_short_placeholder_keys_are_not_treated_as_secrets():
    assert Redactor(["demo"])("demo provider") == "demo provider"


def test_settings_from_env_and_defaults():
    s = Settings.from_env(
        {"DATABASE_URL": "sqlite:///x.db", "RETRY_MAX_ATTEMPTS": "2", "ALPHA_VANTAGE_EXTENDED_HOURS": "false", "LOG_LEVEL": ""},
        cwd=Path("/srv/marketpoll"),
    )
    av = provider_config(AlphaVantageProvider, replace(s, env={**s.env, "ALPHA_VANTAGE_API_KEY": "K"}))
    assert (s.database_url, s.retry_max_attempts, av.extended_hours, s.log_level) == (
        "sqlite:////srv/marketpoll/x.db",  # made absolute at start: the path every log line names
        2,
        False,
        "INFO",
    )
    assert s.retry_policy.max_attempts == 2


def test_relative_sqlite_paths_become_absolute_and_other_urls_stay():
    cwd = Path("/home/u/work")
    assert Settings.from_env({}, cwd=cwd).database_url == "sqlite:////home/u/work/marketpoll.db"  # the default too
    assert Settings.from_env({}, cwd=cwd, database_url="sqlite:///../db/m.db").database_url == "sqlite:////home/u/db/m.db"
    for url in ("sqlite:////var/lib/m.db", "sqlite://", "sqlite:///:memory:", "postgresql://u:pw@h:5432/d"):
        assert absolute_sqlite_url(url, cwd) == url


def _rate(cls, env):
    return cls(provider_config(cls, Settings.from_env({"ALPHA_VANTAGE_API_KEY": "K", **env}))).rate_limit()


def test_each_provider_gets_its_default_rate_budget():
    # the provider declares its default; the variable (ALPHA_VANTAGE_RATE_LIMIT) overrides it
    assert parse_rates(_rate(AlphaVantageProvider, {})) == parse_rates("1/second 25/day")
    env = {"ALPHA_VANTAGE_RATE_LIMIT": "75/minute", "DEMO_RATE_LIMIT": "5/second"}
    assert (_rate(AlphaVantageProvider, env), _rate(DemoProvider, env)) == ("75/minute", "5/second")
    assert _rate(DemoProvider, {}) is None  # the demo has none unless set


def test_stream_state_lives_in_the_per_user_state_directory():
    assert Settings.from_env({"XDG_STATE_HOME": "/xdg"}).stream_state_file == "/xdg/marketpoll/stream.json"
    assert Settings.from_env({"HOME": "/home/u"}).stream_state_file == "/home/u/.local/state/marketpoll/stream.json"
    # a relative XDG_STATE_HOME is invalid per the XDG spec and ignored
    relative = Settings.from_env({"XDG_STATE_HOME": "rel", "HOME": "/h"})
    assert relative.stream_state_file == "/h/.local/state/marketpoll/stream.json"
    s = Settings.from_env({"STREAM_STATE_FILE": "s.json", "XDG_STATE_HOME": "/xdg"}, cwd=Path("/w"))
    assert s.stream_state_file == "/w/s.json"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ALPHA_VANTAGE_DATATYPE", "xml"),
        ("ALPHA_VANTAGE_MONTH", "2024-13"),
        ("ALPHA_VANTAGE_EXTENDED_HOURS", "maybe"),
        ("ALPHA_VANTAGE_RATE_LIMIT", "0/second"),
    ],
)
def test_bad_provider_settings_name_the_variable(var, value):
    settings = Settings.from_env({"ALPHA_VANTAGE_API_KEY": "K", var: value})
    with pytest.raises(ConfigError) as info:
        provider_config(AlphaVantageProvider, settings)
    assert info.value.name == var and value in str(info.value)


def test_a_cli_option_the_provider_lacks_is_refused():
    settings = Settings.from_env({}, provider_options={"outputsize": "full", "nosuch": "x"})
    with pytest.raises(ConfigError, match="provider demo has no option --nosuch"):
        provider_config(DemoProvider, settings)
    assert provider_config(DemoProvider, Settings.from_env({}, provider_options={"outputsize": "full"})).outputsize == "full"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RETRY_MAX_ATTEMPTS", "many"),
        ("HTTP_READ_TIMEOUT_SECONDS", "-1"),
        ("HTTP_READ_TIMEOUT_SECONDS", "nan"),
        ("RETRY_INITIAL_DELAY_SECONDS", "inf"),
        ("HTTP_TOTAL_TIMEOUT_SECONDS", "NaN"),
        ("RETRY_MAX_DELAY_SECONDS", "1e300"),
    ],
)
def test_bad_settings_name_the_variable(var, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert info.value.name == var and value in str(info.value)


def test_api_key_never_in_repr():
    s = Settings.from_env({"ALPHA_VANTAGE_API_KEY": "K3Y-VERY-SECRET", "POLYGON_API_KEY": "P0LY-SECRET"})
    assert "K3Y-VERY-SECRET" not in repr(s) and "K3Y-VERY-SECRET" not in repr(provider_config(AlphaVantageProvider, s))
    assert {"K3Y-VERY-SECRET", "P0LY-SECRET"} <= set(s.secrets())  # every *_API_KEY is redacted from the start
