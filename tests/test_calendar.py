"""Market sessions at the instants that matter, from pandas_market_calendars plus our session rules."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest

from errors import ConfigError, SchedulingError
from scheduler.calendar import CalendarOverrides, Calendars, MarketCalendar, Session


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture(scope="module")
def xnys():
    return MarketCalendar("XNYS")


@pytest.mark.parametrize(
    ("at", "session"),
    [
        ("2024-03-08T14:29:00Z", Session.PRE),  # Fri 09:29 EST
        ("2024-03-08T14:30:00Z", Session.REGULAR),  # Fri 09:30 EST
        ("2024-03-08T21:00:00Z", Session.POST),  # Fri 16:00 EST
        ("2024-03-09T00:59:00Z", Session.POST),  # Fri 19:59 EST, Saturday in UTC
        ("2024-03-09T01:00:00Z", Session.CLOSED),  # Fri 20:00 EST
        ("2024-03-09T15:00:00Z", Session.CLOSED),  # Saturday
        ("2024-03-10T15:00:00Z", Session.CLOSED),  # Sunday, the spring switch
        ("2024-03-11T13:29:00Z", Session.PRE),  # Mon 09:29 EDT
        ("2024-03-11T13:30:00Z", Session.REGULAR),  # Mon 09:30 EDT: one hour earlier in UTC
        ("2024-03-11T20:00:00Z", Session.POST),  # Mon 16:00 EDT
        ("2024-03-11T23:59:00Z", Session.POST),  # 19:59 EDT
        ("2024-03-12T00:00:00Z", Session.CLOSED),  # 20:00 EDT = midnight UTC
        ("2024-11-01T13:30:00Z", Session.REGULAR),  # Fri 09:30 EDT
        ("2024-11-04T13:30:00Z", Session.PRE),  # Mon 08:30 EST after the autumn switch
        ("2024-11-04T14:30:00Z", Session.REGULAR),  # Mon 09:30 EST
        ("2024-07-04T15:00:00Z", Session.CLOSED),  # Independence Day
        ("2024-07-03T16:59:00Z", Session.REGULAR),  # early close day, 12:59 EDT
        ("2024-07-03T17:00:00Z", Session.POST),  # 13:00 EDT: regular ends early
        ("2024-07-03T20:59:00Z", Session.POST),  # 16:59 EDT: after-hours ends at 17:00
        ("2024-07-03T21:00:00Z", Session.CLOSED),
        ("2024-11-29T17:59:00Z", Session.REGULAR),  # day after Thanksgiving, 12:59 EST
        ("2024-11-29T18:00:00Z", Session.POST),  # 13:00 EST
        ("2024-11-29T22:00:00Z", Session.CLOSED),  # 17:00 EST
    ],
)
def test_xnys_session_at(xnys, at, session):
    assert xnys.session_at(utc(at)) is session


def test_status_json_across_the_spring_switch(xnys):
    s = xnys.status(utc("2024-03-08T22:00:00Z")).as_dict()  # Friday after-hours
    assert s == {
        "exchange": "XNYS",
        "at": "2024-03-08T22:00:00+00:00",
        "session": "post",
        "is_market_open": False,
        "is_pre_market": False,
        "is_after_hours": True,
        "next_market_open": "2024-03-11T09:30:00-04:00",  # Monday, after the switch
        "next_market_close": "2024-03-11T16:00:00-04:00",
        "next_session_boundary": "2024-03-08T20:00:00-05:00",
        "timezone": "America/New_York",
    }


def test_status_on_the_holiday_and_early_close(xnys):
    july4 = xnys.status(utc("2024-07-04T15:00:00Z"))
    assert july4.next_market_open == utc("2024-07-05T13:30:00Z") and not july4.is_market_open
    july3 = xnys.status(utc("2024-07-03T15:00:00Z"))
    assert july3.next_market_close == utc("2024-07-03T17:00:00Z")  # 13:00 EDT
    day = xnys.trading_day(date(2024, 11, 29))
    assert day.early_close and day.close == utc("2024-11-29T18:00:00Z") and day.post_end == utc("2024-11-29T22:00:00Z")
    assert not xnys.trading_day(date(2024, 11, 27)).early_close


def test_xnas_follows_the_same_sessions():
    xnas = MarketCalendar("XNAS")
    assert xnas.session_at(utc("2024-07-03T17:30:00Z")) is Session.POST
    assert xnas.session_at(utc("2024-07-04T15:00:00Z")) is Session.CLOSED


def test_xwar_eu_dst_switch_on_its_own_date():
    xwar = MarketCalendar("XWAR")
    # 09:00 Warsaw is 08:00Z before 2024-03-31 and 07:00Z after; the US had switched three weeks earlier
    assert xwar.trading_day(date(2024, 3, 28)).open == utc("2024-03-28T08:00:00Z")
    assert xwar.trading_day(date(2024, 3, 29)) is None  # Good Friday
    assert xwar.trading_day(date(2024, 4, 1)) is None  # Easter Monday
    assert xwar.trading_day(date(2024, 4, 2)).open == utc("2024-04-02T07:00:00Z")
    assert xwar.status(utc("2024-03-29T09:00:00Z")).as_dict()["next_market_open"] == "2024-04-02T09:00:00+02:00"


def test_xnse_pre_open_and_regular():
    xnse = MarketCalendar("XNSE")
    assert xnse.session_at(utc("2024-01-25T03:30:00Z")) is Session.PRE  # 09:00 IST
    assert xnse.session_at(utc("2024-01-25T03:45:00Z")) is Session.REGULAR  # 09:15 IST
    assert xnse.session_at(utc("2024-01-25T10:00:00Z")) is Session.CLOSED  # 15:30 IST
    assert xnse.session_at(utc("2024-01-26T05:00:00Z")) is Session.CLOSED  # Republic Day


def test_calendar_past_its_years_warns_once_and_keeps_working(caplog):
    xnse = MarketCalendar("XNSE")
    assert xnse.known_through is not None
    year = xnse.known_through + 1
    caplog.set_level(logging.WARNING)
    assert xnse.session_at(utc(f"{year}-01-26T05:00:00Z")) in (Session.REGULAR, Session.CLOSED)
    xnse.session_at(utc(f"{year}-02-02T05:00:00Z"))
    assert caplog.text.count(f"only through {xnse.known_through}") == 1


def test_24_7_is_always_regular():
    crypto = Calendars().get("crypto")
    for at in ("2024-03-10T07:00:00Z", "2024-12-25T00:00:00Z", "2024-03-31T01:30:00Z"):
        status = crypto.status(utc(at))
        assert status.is_market_open and status.next_market_open is None


def test_user_overrides_add_holidays_and_early_closes(tmp_path):
    f = tmp_path / "calendar.toml"
    f.write_text('[XNYS]\nholidays = ["2024-03-13"]\nearly_closes = { "2024-03-14" = "13:00" }\n')
    cal = MarketCalendar("XNYS", CalendarOverrides.load(f))
    assert MarketCalendar("XNYS").trading_day(date(2024, 3, 13)) is not None  # a normal day in the library
    assert cal.trading_day(date(2024, 3, 13)) is None and cal.session_at(utc("2024-03-13T15:00:00Z")) is Session.CLOSED
    assert cal.session_at(utc("2024-03-14T17:30:00Z")) is Session.POST  # 13:30 EDT, after the added early close
    assert cal.trading_day(date(2024, 3, 14)).post_end == utc("2024-03-14T21:00:00Z")
    assert cal.trading_day(date(2024, 3, 15)).close == utc("2024-03-15T20:00:00Z")  # other days untouched


@pytest.mark.parametrize("content", ['[XNYS]\nholidays = ["tomorrow"]\n', "not toml ["])
def test_bad_overrides_file_is_a_config_error(tmp_path, content):
    f = tmp_path / "calendar.toml"
    f.write_text(content)
    with pytest.raises(ConfigError):
        CalendarOverrides.load(f)


def test_unknown_exchange_is_a_config_error_that_lists_the_valid_codes():
    with pytest.raises(ConfigError) as info:
        MarketCalendar("XNOPE")
    message = str(info.value)
    assert "\n" not in message and "'XNOPE'" in message
    for code in ("XNYS", "XNAS", "XWAR", "XNSE", "24/7", "CRYPTO", "NYSE", "GPW"):  # our codes and aliases
        assert code in message
    assert "get_calendar_names" in message  # where the library's other names are


@pytest.mark.parametrize(
    ("code", "sessions", "message"),
    [
        ("XWAR", {Session.PRE}, "XWAR has no pre-market session"),
        ("XWAR", {Session.POST}, "XWAR has no after-hours session"),
        ("XNSE", {Session.POST}, "XNSE has no after-hours session"),
        ("XLON", {Session.PRE}, "XLON has no pre-market session"),  # any library calendar: regular only
    ],
)
def test_a_missing_extended_session_says_so(code, sessions, message):
    cal = Calendars().get(code)
    with pytest.raises(SchedulingError) as info:
        cal.next_window(utc("2024-03-11T12:00:00Z"), frozenset(sessions))
    assert message in str(info.value)
    # asking for several sessions is fine when one of them exists
    assert cal.next_window(utc("2024-03-11T12:00:00Z"), frozenset(Session))[0] in (Session.PRE, Session.REGULAR)
