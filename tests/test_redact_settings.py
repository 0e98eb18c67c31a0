from __future__ import annotations

import logging

import pytest

from errors import ConfigError
from etl.redact import RedactingFormatter, Redactor, redact_url
from settings import Settings


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
        {"DATABASE_URL": "sqlite:///x.db", "RETRY_MAX_ATTEMPTS": "2", "ALPHA_VANTAGE_EXTENDED_HOURS": "false", "LOG_LEVEL": ""}
    )
    assert (s.database_url, s.retry_max_attempts, s.alpha_vantage_extended_hours, s.log_level) == (
        "sqlite:///x.db",
        2,
        False,
        "INFO",
    )
    assert s.retry_policy.max_attempts == 2


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RETRY_MAX_ATTEMPTS", "many"),
        ("HTTP_READ_TIMEOUT_SECONDS", "-1"),
        ("ALPHA_VANTAGE_DATATYPE", "xml"),
        ("ALPHA_VANTAGE_MONTH", "2024-13"),
        ("ALPHA_VANTAGE_EXTENDED_HOURS", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(var, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert info.value.name == var and value in str(info.value)


def test_api_key_never_in_repr():
    assert "K3Y-VERY-SECRET" not in repr(Settings.from_env({"ALPHA_VANTAGE_API_KEY": "K3Y-VERY-SECRET"}))
