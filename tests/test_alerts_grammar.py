"""The alert condition grammar and the pure evaluation rules (no database, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alerts.evaluate import error_rate, field_value, holds, reference_cutoff, staleness, step
from alerts.grammar import FIELDS, OPERATORS, Condition, format_condition, parse_condition
from errors import ConfigError
from models.bar import Bar

T0 = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("TSLA close > 800", Condition("TSLA", "close", ">", Decimal("800"))),
        ("  btc-usd  change_percent <= -5.5 ", Condition("BTC-USD", "change_percent", "<=", Decimal("-5.5"))),
        ("IBM Volume CROSSES_ABOVE 1e6", Condition("IBM", "volume", "crosses_above", Decimal("1E+6"))),
        ("EURUSD=X low\tcrosses_below .95", Condition("EURUSD=X", "low", "crosses_below", Decimal("0.95"))),
    ],
)
def test_parses_conditions(text, expected):
    assert parse_condition(text) == expected
    assert parse_condition(format_condition(expected)) == expected


@pytest.mark.parametrize(
    "text, token",
    [
        ("TSLA clse > 800", "'clse'"),
        ("TSLA close => 800", "'=>'"),
        ("TSLA close > 8OO", "'8OO'"),
        ("TSLA close > nan", "'nan'"),
        ("TSLA close > 800 USD", "'USD'"),
        ("TS LA close > 800", "'800'"),  # five tokens: the extra one is named
        ("close > 800", "3 token(s)"),
        ("TSLA close > __import__('os')", "__import__"),
        ("TSLA close > ٣", "'٣'"),  # a non-ASCII digit is no number here
        ("", "0 token(s)"),
    ],
)
def test_bad_conditions_name_the_token(text, token):
    with pytest.raises(ConfigError) as err:
        parse_condition(text)
    assert token in str(err.value) and "\n" not in str(err.value)


symbols = st.builds(str.__add__, st.sampled_from("ABZ09^"), st.text(alphabet="ABTZ059.-:^=/_", max_size=31))
thresholds = st.one_of(
    st.integers(-(10**12), 10**12).map(Decimal),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**9), max_value=10**9, places=4),
    st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-999, 999), st.integers(-30, 30)),
)
conditions = st.builds(Condition, symbols, st.sampled_from(FIELDS), st.sampled_from(OPERATORS), thresholds)


@settings(max_examples=100, deadline=None)
@given(conditions)
def test_parse_format_round_trips(condition):
    text = format_condition(condition)
    assert parse_condition(text) == condition
    assert format_condition(parse_condition(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.lists(st.sampled_from([*FIELDS, *OPERATORS, "TSLA", "1e999", "-", "1..2", "\x00", "é", " ", "800"]), max_size=6).map(
            " ".join
        ),
    )
)
def test_junk_raises_only_the_parse_error(text):
    try:
        condition = parse_condition(text)
    except ConfigError as exc:
        assert str(exc).startswith("bad condition") and "\n" not in str(exc)
    else:
        assert parse_condition(format_condition(condition)) == condition


def bar(close, ts=T0, interval="5min", volume="100"):
    return Bar("demo", "TSLA", interval, ts, close, close, close, close, volume)


def test_de_duplication_fires_once_then_again_after_clearing():
    armed, fired = True, []
    for value in [810, 820, 790, 805, 805]:
        s = step(armed, holds(parse_condition("TSLA close > 800"), Decimal(value), None))
        armed = s.armed
        fired.append(s.fire)
    assert fired == [True, False, False, True, False]
    assert step(False, False).clear and not step(True, False).clear


def test_crossings_need_the_previous_value():
    above, below = parse_condition("TSLA close crosses_above 800"), parse_condition("TSLA close crosses_below 800")
    assert holds(above, Decimal(810), Decimal(800)) and holds(above, Decimal(801), Decimal(790))
    assert not holds(above, Decimal(810), Decimal(805)) and not holds(above, Decimal(810), None)
    assert not holds(above, Decimal(800), Decimal(790))  # reaching the threshold is not crossing it
    assert holds(below, Decimal(799), Decimal(800)) and not holds(below, Decimal(799), Decimal(798))


def test_field_values_and_change_percent_reference():
    assert field_value("close", bar("810.50")) == Decimal("810.50")
    assert field_value("volume", bar("1", volume=None)) is None
    assert field_value("change_percent", bar("110"), "100") == Decimal(10)
    assert field_value("change_percent", bar("110"), None) is None and field_value("change_percent", bar("1"), "0") is None
    assert holds(parse_condition("TSLA volume > 1"), None, None) is None
    assert reference_cutoff(bar("1")) == T0 - timedelta(hours=24)
    assert reference_cutoff(bar("1", interval="1day")) == T0 - timedelta(microseconds=1)


def test_staleness_counts_only_inside_the_session():
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=5))
    after = timedelta(minutes=15)
    assert staleness(T0, T0 - timedelta(minutes=20), window, after).holding
    assert not staleness(T0, T0 - timedelta(minutes=10), window, after).holding
    assert staleness(T0, T0 - timedelta(days=3), window, after).age_minutes == 60  # the night does not count
    assert not staleness(T0, None, (T0 - timedelta(minutes=5), T0 + timedelta(hours=1)), after).holding
    closed = staleness(T0, None, (T0 + timedelta(hours=1), T0 + timedelta(hours=2)), after)
    assert not closed.holding and closed.age_minutes is None


def test_error_rate_window():
    assert error_rate(["failed", "succeeded"]) is None  # fewer than 3 cycles: no rate
    assert error_rate(["failed", "partial", "succeeded", "succeeded", "interrupted"]) == 0.5
    assert error_rate(["succeeded"] * 20 + ["failed"] * 10) == 0.0  # only the newest 20 count


@pytest.mark.parametrize(
    "text, named",
    [
        ("tſla close > 800", "'ſ' (U+017F)"),  # Unicode upper-cases it to TSLA
        ("ıbm close > 800", "'ı' (U+0131)"),  # ... to IBM
        ("ﬀ close > 1", "'ﬀ' (U+FB00)"),  # ... to FF
        ("TSLA cloſe > 1", "'ſ' (U+017F)"),
        ("TSLA close ＞ 1", "'＞' (U+FF1E)"),
    ],
)
def test_non_ascii_tokens_are_refused_before_case_folding(text, named):
    with pytest.raises(ConfigError) as err:
        parse_condition(text)
    assert named in str(err.value) and "non-ASCII" in str(err.value)


# every threshold the grammar accepts: up to 40 significant digits, exponent of the leading digit within +-100
accepted_thresholds = st.builds(
    lambda sign, coefficient, adjusted: Decimal((sign, tuple(map(int, str(coefficient))), adjusted - len(str(coefficient)) + 1)),
    st.integers(0, 1),
    st.one_of(st.integers(0, 10**6), st.integers(0, 10**40 - 1)),
    st.integers(-100, 100),
)
number_texts = st.from_regex(r"\A[+-]?(?:[0-9]{1,45}(?:\.[0-9]{0,45})?|\.[0-9]{1,45})(?:[eE][+-]?[0-9]{1,3})?\Z")


@settings(max_examples=100, deadline=None)
@given(st.builds(Condition, symbols, st.sampled_from(FIELDS), st.sampled_from(OPERATORS), accepted_thresholds))
@example(Condition("TSLA", "close", ">", Decimal("18941513439216871.1894151343921687140e55")))
def test_every_condition_round_trips_through_its_canonical_text(condition):
    text = format_condition(condition)
    assert parse_condition(text) == condition and format_condition(parse_condition(text)) == text


@settings(max_examples=100, deadline=None)
@given(number_texts)
@example("18941513439216871.1894151343921687140e55")
def test_every_accepted_number_round_trips(number):
    try:
        condition = parse_condition(f"TSLA close > {number}")
    except ConfigError as exc:
        assert "token 4" in str(exc)
    else:
        assert parse_condition(format_condition(condition)) == condition
