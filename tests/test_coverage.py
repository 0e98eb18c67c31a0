"""The completeness ledger: expected bars on real calendar days, then expected vs loaded on both databases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

import db.coverage as coverage_mod
from clock import ManualClock
from db import tables
from db.coverage import CoverageLedger, CoverageRow, expected_bar_starts, render_table, session_dates
from errors import ConfigError
from scheduler.calendar import CalendarOverrides, Calendars, MarketCalendar, Session

REGULAR = frozenset({Session.REGULAR})
EXTENDED = frozenset({Session.PRE, Session.REGULAR, Session.POST})
NY = ZoneInfo("America/New_York")
MIN5 = timedelta(minutes=5)


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).astimezone(UTC)


@pytest.fixture(scope="module")
def calendars() -> Calendars:
    return Calendars()


@pytest.fixture(scope="module")
def xnys(calendars) -> MarketCalendar:
    return calendars.get("XNYS")


# -- expected bars from the calendar -------------------------------------------------------------


def test_full_nyse_day(xnys):
    regular = expected_bar_starts(xnys, date(2024, 3, 12), "5min", REGULAR)
    assert len(regular) == 78
    assert regular[0] == utc("2024-03-12T13:30:00+00:00") and regular[-1] == utc("2024-03-12T19:55:00+00:00")  # EDT
    extended = expected_bar_starts(xnys, date(2024, 3, 12), "5min", EXTENDED)
    assert len(extended) == 192  # 04:00-20:00 New York
    assert extended[0] == utc("2024-03-12T04:00:00-04:00") and extended[-1] == utc("2024-03-12T19:55:00-04:00")
    assert extended == sorted(set(extended))
    assert all(t.tzinfo is UTC for t in extended)


def test_early_close(xnys):
    day = date(2024, 11, 29)  # the day after Thanksgiving: regular ends at 13:00, after-hours at 17:00
    regular = expected_bar_starts(xnys, day, "5min", REGULAR)
    assert len(regular) == 42
    assert regular[-1] == utc("2024-11-29T12:55:00-05:00")
    extended = expected_bar_starts(xnys, day, "5min", EXTENDED)
    assert len(extended) == 66 + 42 + 48
    assert extended[-1] == utc("2024-11-29T16:55:00-05:00")


def test_closed_day(xnys):
    assert expected_bar_starts(xnys, date(2025, 1, 9), "5min", EXTENDED) == []  # National Day of Mourning
    assert expected_bar_starts(xnys, date(2025, 1, 9), "1day", REGULAR) == []
    assert expected_bar_starts(xnys, date(2024, 3, 9), "1min", REGULAR) == []  # Saturday
    assert session_dates(xnys, date(2025, 1, 6), date(2025, 1, 10)) == [date(2025, 1, d) for d in (6, 7, 8, 10)]


def test_us_dst_switch_week(xnys):
    """The open stays 09:30 New York while it moves an hour in UTC, both in spring and autumn."""
    days = session_dates(xnys, date(2024, 3, 4), date(2024, 3, 15))
    assert len(days) == 10
    for day in days:
        starts = expected_bar_starts(xnys, day, "5min", REGULAR)
        assert len(starts) == 78
        assert starts[0].astimezone(NY).time().isoformat() == "09:30:00"
    assert expected_bar_starts(xnys, date(2024, 3, 8), "5min", REGULAR)[0] == utc("2024-03-08T14:30:00+00:00")
    assert expected_bar_starts(xnys, date(2024, 3, 11), "5min", REGULAR)[0] == utc("2024-03-11T13:30:00+00:00")
    assert expected_bar_starts(xnys, date(2024, 11, 1), "5min", EXTENDED)[0] == utc("2024-11-01T08:00:00+00:00")
    assert expected_bar_starts(xnys, date(2024, 11, 4), "5min", EXTENDED)[0] == utc("2024-11-04T09:00:00+00:00")


def test_xnse_day(calendars):
    xnse = calendars.get("XNSE")
    regular = expected_bar_starts(xnse, date(2024, 3, 11), "5min", REGULAR)
    assert len(regular) == 75  # 09:15-15:30 IST
    assert regular[0] == utc("2024-03-11T09:15:00+05:30") and regular[-1] == utc("2024-03-11T15:25:00+05:30")
    with_pre = expected_bar_starts(xnse, date(2024, 3, 11), "5min", frozenset({Session.PRE, Session.REGULAR}))
    assert len(with_pre) == 78 and with_pre[0] == utc("2024-03-11T09:00:00+05:30")
    assert expected_bar_starts(xnse, date(2024, 3, 11), "5min", frozenset({Session.POST})) == []  # XNSE has none


def test_24_7_day(calendars):
    crypto = calendars.get("CRYPTO")
    day = date(2024, 3, 10)  # a Sunday, and the US DST switch: nothing changes in UTC
    minutes = expected_bar_starts(crypto, day, "1min", REGULAR)
    assert len(minutes) == 1440
    assert minutes[0] == datetime(2024, 3, 10, tzinfo=UTC) and minutes[-1] == datetime(2024, 3, 10, 23, 59, tzinfo=UTC)
    assert len(expected_bar_starts(crypto, day, "5min", REGULAR)) == 288
    assert expected_bar_starts(crypto, day, "1day", REGULAR) == [datetime(2024, 3, 10, tzinfo=UTC)]
    assert session_dates(crypto, date(2024, 3, 8), date(2024, 3, 11)) == [date(2024, 3, d) for d in (8, 9, 10, 11)]


@pytest.mark.parametrize("day", [date(2024, 3, 12), date(2024, 11, 29), date(2024, 7, 3)])
@pytest.mark.parametrize("interval", ["1min", "5min", "15min", "30min", "60min"])
def test_regular_bars_match_pandas_market_calendars(xnys, day, interval):
    """The library's own bar grid: labelled by start, ``closed="left"``, a partial last bar kept."""
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar("NYSE").schedule(day.isoformat(), day.isoformat())
    want = [t.to_pydatetime() for t in mcal.date_range(schedule, interval, closed="left", force_close=False)]
    assert expected_bar_starts(xnys, day, interval, REGULAR) == want


def test_60min_bars_step_from_each_joined_span(xnys):
    day = date(2024, 3, 12)
    regular = expected_bar_starts(xnys, day, "60min", REGULAR)
    assert [t.astimezone(NY).strftime("%H:%M") for t in regular] == [f"{h:02d}:30" for h in range(9, 16)]
    joined = expected_bar_starts(xnys, day, "60min", EXTENDED)  # pre, regular and post touch: one span from 04:00
    assert [t.astimezone(NY).hour for t in joined] == list(range(4, 20))
    apart = expected_bar_starts(xnys, day, "60min", frozenset({Session.PRE, Session.POST}))
    assert [t.astimezone(NY).strftime("%H:%M") for t in apart] == [f"{h:02d}:00" for h in (4, 5, 6, 7, 8, 9, 16, 17, 18, 19)]


def test_60min_bars_on_the_clock_grid_start_on_the_hour(xnys, calendars):
    """Polygon, Binance, Coinbase and Alpha Vantage bucket on the clock: the 09:00 bar holds the 09:30 open."""
    day = date(2024, 3, 12)
    clock = expected_bar_starts(xnys, day, "60min", REGULAR, grid="clock")
    assert [t.astimezone(NY).strftime("%H:%M") for t in clock] == [f"{h:02d}:00" for h in range(9, 16)]
    early = expected_bar_starts(xnys, date(2024, 11, 29), "60min", REGULAR, grid="clock")  # 09:30-13:00
    assert [t.astimezone(NY).hour for t in early] == [9, 10, 11, 12]
    for interval in ("1min", "5min", "15min", "30min"):  # the open is on their grid: both grids agree
        on_clock = expected_bar_starts(xnys, day, interval, REGULAR, grid="clock")
        assert on_clock == expected_bar_starts(xnys, day, interval, REGULAR)
    xnse = calendars.get("XNSE")  # opens 09:15 IST (03:45 UTC): 30min bars from 03:30 UTC on the clock grid
    assert expected_bar_starts(xnse, date(2024, 3, 12), "30min", REGULAR, grid="clock")[0] == utc("2024-03-12T03:30:00+00:00")
    with pytest.raises(ConfigError):
        expected_bar_starts(xnys, day, "60min", REGULAR, grid="hourly")


def test_the_ledger_expects_each_provider_s_own_grid(engine, calendars, clock):
    day = date(2024, 3, 12)
    on_the_hour = expected_bar_starts(calendars.get("XNYS"), day, "60min", REGULAR, grid="clock")
    for provider in ("polygon", "yahoo"):
        put(engine, on_the_hour, provider=provider, interval="60min")
    ledger = CoverageLedger(engine, calendars, clock)  # grids from the provider registry
    for provider, loaded in (("polygon", 7), ("yahoo", 0)):  # Yahoo's 60m bars start at 09:30: none of these
        (row,) = ledger.compute(provider, ["IBM"], "60min", day, day, exchange="XNYS", sessions=REGULAR)
        assert (row.expected, row.loaded, row.missing) == (7, loaded, 7 - loaded)


def test_daily_bar_starts_at_local_midnight(xnys):
    assert expected_bar_starts(xnys, date(2024, 3, 8), "1day", REGULAR) == [utc("2024-03-08T05:00:00+00:00")]  # EST
    assert expected_bar_starts(xnys, date(2024, 3, 11), "1day", REGULAR) == [utc("2024-03-11T04:00:00+00:00")]  # EDT
    assert expected_bar_starts(xnys, date(2024, 11, 29), "1day", EXTENDED) == [utc("2024-11-29T00:00:00-05:00")]


def test_overrides_change_what_is_expected():
    overrides = CalendarOverrides(
        holidays={"XNYS": frozenset({date(2024, 3, 12)})},
        early_closes={"XNYS": {date(2024, 3, 13): datetime.strptime("13:00", "%H:%M").time()}},
    )
    cal = Calendars(overrides).get("XNYS")
    assert expected_bar_starts(cal, date(2024, 3, 12), "5min", REGULAR) == []
    assert len(expected_bar_starts(cal, date(2024, 3, 13), "5min", REGULAR)) == 42
    assert len(expected_bar_starts(cal, date(2024, 3, 13), "5min", EXTENDED)) == 66 + 42 + 48  # after-hours to 17:00


def test_unknown_interval(xnys):
    with pytest.raises(ConfigError) as exc:
        expected_bar_starts(xnys, date(2024, 3, 12), "2min", REGULAR)
    assert exc.value.name == "interval"


# -- the ledger on both databases -----------------------------------------------------------------

AFTER = datetime(2024, 3, 20, tzinfo=UTC)  # every bar of the days below has ended


def day_starts(xnys, day: date, interval="5min", sessions=REGULAR) -> list[datetime]:
    return expected_bar_starts(xnys, day, interval, sessions)


def put(engine, starts, *, symbol="IBM", interval="5min", provider="demo") -> None:
    """Store bars at ``starts`` (UTC) directly, as the loader would."""
    if not starts:
        return
    rows = [
        {"provider": provider, "symbol": symbol, "interval": interval, "ts": ts, "open": "10", "high": "11", "low": "9",
         "close": "10.5", "volume": "100", "ingested_at": AFTER}
        for ts in starts
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(tables.bars), rows)


def drop(engine, ts: datetime, *, symbol="IBM", interval="5min") -> None:
    b = tables.bars.c
    with engine.begin() as conn:
        conn.execute(sa.delete(tables.bars).where(b.symbol == symbol, b.interval == interval, b.ts == ts))


def stored(engine) -> list[tuple]:
    c = tables.coverage.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.symbol, c.session_date, c.sessions, c.expected, c.loaded, c.no_data, c.missing, c.first_missing)
            .order_by(c.symbol, c.session_date, c.sessions)
        ).all()  # fmt: skip
    return [(*r[:7], coverage_mod._utc(r[7])) for r in rows]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(AFTER)


@pytest.fixture
def ledger(engine, calendars, clock) -> CoverageLedger:
    return CoverageLedger(engine, calendars, clock)


def compute(ledger, symbols=("IBM",), start=date(2024, 3, 8), end=date(2024, 3, 12), interval="5min", sessions=REGULAR,
            exchange="XNYS"):  # fmt: skip
    return ledger.compute("demo", list(symbols), interval, start, end, exchange=exchange, sessions=sessions)


def test_loaded_missing_and_first_missing(engine, ledger, xnys, clock):
    mon, tue = day_starts(xnys, date(2024, 3, 11)), day_starts(xnys, date(2024, 3, 12))
    put(engine, mon[:6] + mon[8:])  # 10:00 and 10:05 EDT missing
    put(engine, tue, symbol="MSFT")
    put(engine, [mon[0] + timedelta(minutes=2)])  # off the 5-minute grid: not an expected start
    put(engine, [mon[-1] + MIN5, mon[-1] + 2 * MIN5])  # after-hours bars: not asked for
    rows = compute(ledger, symbols=["MSFT", "IBM", "IBM"])
    assert [(r.symbol, r.session_date) for r in rows] == [
        ("IBM", date(2024, 3, 8)), ("IBM", date(2024, 3, 11)), ("IBM", date(2024, 3, 12)),
        ("MSFT", date(2024, 3, 8)), ("MSFT", date(2024, 3, 11)), ("MSFT", date(2024, 3, 12)),
    ]  # fmt: skip
    ibm_fri, ibm_mon, ibm_tue, _, _, msft_tue = rows
    assert (ibm_fri.expected, ibm_fri.loaded, ibm_fri.missing) == (78, 0, 78)
    assert ibm_fri.first_missing == utc("2024-03-08T14:30:00+00:00")
    assert (ibm_mon.expected, ibm_mon.loaded, ibm_mon.no_data, ibm_mon.missing) == (78, 76, 0, 2)
    assert ibm_mon.first_missing == utc("2024-03-11T10:00:00-04:00")
    assert ibm_tue.loaded == 0 and ibm_tue.missing == 78
    assert (msft_tue.loaded, msft_tue.missing, msft_tue.first_missing) == (78, 0, None)
    assert all(r.checked_at == AFTER and r.provider == "demo" and r.interval == "5min" for r in rows)
    assert stored(engine) == [(r.symbol, r.session_date, "regular", r.expected, r.loaded, r.no_data, r.missing, r.first_missing)
                              for r in rows]  # fmt: skip


def first_missing_cases():
    """Which of a day's 78 bars are loaded -> index of the first missing one (None: complete)."""
    every = list(range(78))
    return [
        (every, None),
        ([], 0),
        (every[3:], 0),  # head missing
        (every[:50], 50),  # tail missing
        (every[:20] + every[21:], 20),  # one hole
        (every[:20] + every[21:40] + every[45:], 20),  # two holes
        (every[:1] + every[2:3] + every[5:], 1),  # holes near the start
        (every[:76] + every[77:], 76),  # the last but one
        (every[:77], 77),  # only the last
        ([0, 2, 4, 6], 1),
    ]


@pytest.mark.parametrize(("present", "first"), first_missing_cases())
def test_first_missing(engine, ledger, xnys, present, first):
    starts = day_starts(xnys, date(2024, 3, 12))
    put(engine, [starts[i] for i in present])
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert (row.loaded, row.missing) == (len(present), 78 - len(present))
    assert row.first_missing == (None if first is None else starts[first])


def test_many_pairs_in_chunks(engine, ledger, xnys, monkeypatch):
    """Pairs split over several statements (run two at a time) land on the right rows."""
    monkeypatch.setattr(coverage_mod, "PAIRS_PER_STATEMENT", 2)
    days = session_dates(xnys, date(2024, 3, 4), date(2024, 3, 15))
    for k, sym in enumerate(["A", "B", "C"]):
        for i, day in enumerate(days):
            starts = day_starts(xnys, day)
            put(engine, starts[: 78 - (k + i) % 5], symbol=sym)  # 0-4 bars missing at the end
            if (k + i) % 3 == 0:
                drop(engine, starts[10], symbol=sym)
                drop(engine, starts[30], symbol=sym)
    rows = compute(ledger, symbols=["C", "A", "B"], start=days[0], end=days[-1])
    assert len(rows) == 30
    for row in rows:
        k, i = "ABC".index(row.symbol), days.index(row.session_date)
        starts = day_starts(xnys, row.session_date)
        holes = 2 if (k + i) % 3 == 0 else 0
        assert row.loaded == 78 - (k + i) % 5 - holes
        want = starts[10] if holes else (starts[78 - (k + i) % 5] if (k + i) % 5 else None)
        assert row.first_missing == want


def test_only_ended_bars_are_expected(engine, calendars, xnys):
    clock = ManualClock(datetime(2024, 3, 11, 15, 2, tzinfo=UTC))  # 11:02 EDT: 18 bars of the day have ended
    ledger = CoverageLedger(engine, calendars, clock)
    put(engine, day_starts(xnys, date(2024, 3, 11))[:19])  # the 11:00 bar is already there, still running
    rows = compute(ledger, start=date(2024, 3, 11), end=date(2024, 3, 15))
    assert [(r.session_date, r.expected, r.loaded, r.missing) for r in rows] == [(date(2024, 3, 11), 18, 18, 0)]  # no future rows


def test_recompute_updates_rows_and_settled_rows_stay(engine, ledger, xnys, clock):
    starts = day_starts(xnys, date(2024, 3, 12))
    put(engine, starts[:70])
    (first,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert first.missing == 8
    clock.advance(3600)
    put(engine, starts[70:])
    (second,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert (second.loaded, second.missing, second.first_missing, second.checked_at) == (78, 0, None, AFTER + timedelta(hours=1))
    assert len(stored(engine)) == 1
    # a complete row is settled: marketpoll never deletes bars, so it is not counted again ...
    drop(engine, starts[5])
    clock.advance(3600)
    (third,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert third == second
    # ... unless asked to recount (--recount: bars deleted by hand), which finds the hole and fill-gaps its range
    ranges = ledger.missing_ranges("demo", ["IBM"], "5min", date(2024, 3, 12), date(2024, 3, 12), exchange="XNYS",
                                   sessions=REGULAR)  # fmt: skip
    assert ranges == []  # settled: not read
    ranges = ledger.missing_ranges("demo", ["IBM"], "5min", date(2024, 3, 12), date(2024, 3, 12), exchange="XNYS",
                                   sessions=REGULAR, recount=True)  # fmt: skip
    assert ranges == [("IBM", starts[5], starts[5] + timedelta(minutes=5))]
    (fourth,) = ledger.compute("demo", ["IBM"], "5min", date(2024, 3, 12), date(2024, 3, 12), exchange="XNYS",
                               sessions=REGULAR, recount=True)  # fmt: skip
    assert (fourth.loaded, fourth.first_missing, fourth.checked_at) == (77, starts[5], AFTER + timedelta(hours=2))
    assert compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12)) == [fourth]  # no longer settled: counted


def test_sessions_are_part_of_the_key(engine, ledger, xnys):
    put(engine, day_starts(xnys, date(2024, 3, 12), sessions=EXTENDED))
    (regular,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    (extended,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12), sessions=EXTENDED)
    assert (regular.expected, regular.loaded, extended.expected, extended.loaded) == (78, 78, 192, 192)
    assert [r[2] for r in stored(engine)] == ["pre regular post", "regular"]
    (again,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12), sessions=("post", "regular", "pre"))  # names
    assert again == extended and len(stored(engine)) == 2


def test_pre_and_post_without_regular(engine, ledger, xnys):
    """Two spans on one date (pre-market and after-hours) add up to one row."""
    both = frozenset({Session.PRE, Session.POST})
    starts = day_starts(xnys, date(2024, 3, 12), sessions=both)
    assert len(starts) == 66 + 48
    put(engine, starts[66:])  # after-hours only
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12), sessions=both)
    assert (row.expected, row.loaded, row.missing, row.first_missing) == (114, 48, 66, utc("2024-03-12T04:00:00-04:00"))
    put(engine, starts[:66])
    drop(engine, starts[70])
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12), sessions=both)
    assert (row.loaded, row.first_missing) == (113, starts[70])


def test_daily_interval(engine, ledger, xnys, clock):
    clock.set(datetime(2024, 7, 6, tzinfo=UTC))
    days = session_dates(xnys, date(2024, 7, 1), date(2024, 7, 5))  # 4 July closed, 3 July an early close
    assert days == [date(2024, 7, 1), date(2024, 7, 2), date(2024, 7, 3), date(2024, 7, 5)]
    midnight = {d: day_starts(xnys, d, "1day")[0] for d in days}
    put(engine, [midnight[d] for d in days if d != date(2024, 7, 2)], interval="1day")
    put(engine, [datetime(2024, 7, 2, tzinfo=UTC)], interval="1day")  # midnight UTC is not New York's: not the bar
    rows = compute(ledger, start=date(2024, 7, 1), end=date(2024, 7, 5), interval="1day")
    assert [(r.session_date, r.expected, r.loaded, r.missing) for r in rows] == [
        (date(2024, 7, 1), 1, 1, 0), (date(2024, 7, 2), 1, 0, 1), (date(2024, 7, 3), 1, 1, 0), (date(2024, 7, 5), 1, 1, 0),
    ]  # fmt: skip
    assert rows[1].first_missing == utc("2024-07-02T00:00:00-04:00")


def test_24_7_series(engine, ledger, calendars):
    crypto = calendars.get("24/7")
    starts = expected_bar_starts(crypto, date(2024, 3, 9), "60min", REGULAR)
    put(engine, starts[:5] + starts[6:], symbol="BTC-USD", interval="60min")
    rows = compute(ledger, symbols=["BTC-USD"], start=date(2024, 3, 9), end=date(2024, 3, 10), interval="60min",
                   exchange="CRYPTO")  # fmt: skip
    assert [(r.session_date, r.expected, r.loaded, r.first_missing) for r in rows] == [
        (date(2024, 3, 9), 24, 23, datetime(2024, 3, 9, 5, tzinfo=UTC)),
        (date(2024, 3, 10), 24, 0, datetime(2024, 3, 10, tzinfo=UTC)),
    ]


def test_no_data_ranges_are_not_missing(engine, ledger, xnys):
    starts = day_starts(xnys, date(2024, 3, 12))
    put(engine, starts[:10] + starts[20:30] + starts[31:])  # 10-19 and 30 missing
    ledger.record_no_data("demo", "IBM", "5min", starts[10], starts[15])  # 10-14: the provider has none
    ledger.record_no_data("demo", "IBM", "5min", starts[10], starts[15])  # again: one range
    ledger.record_no_data("demo", "IBM", "5min", starts[25], starts[31])  # covers loaded 25-29 and missing 30
    ledger.record_no_data("demo", "MSFT", "5min", starts[0], starts[-1] + MIN5)  # another series
    ledger.record_no_data("demo", "IBM", "1min", starts[0], starts[-1] + MIN5)  # another interval
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert (row.expected, row.loaded, row.no_data, row.missing, row.first_missing) == (78, 67, 6, 5, starts[15])
    assert ledger.missing_ranges("demo", ["IBM"], "5min", date(2024, 3, 12), date(2024, 3, 12), exchange="XNYS",
                                 sessions=REGULAR) == [("IBM", starts[15], starts[20])]  # fmt: skip
    ledger.record_no_data("demo", "IBM", "5min", starts[15], starts[20])
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert (row.loaded, row.no_data, row.missing, row.first_missing) == (67, 11, 0, None)
    put(engine, [starts[12]])  # a bar that came after all: loaded, not no_data (a new check counts it)
    with engine.begin() as conn:
        conn.execute(sa.delete(tables.coverage))
    (row,) = compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))
    assert (row.loaded, row.no_data, row.missing) == (68, 10, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.no_data_ranges)).scalar() == 5


def test_record_no_data_refuses_naive_or_empty_ranges(ledger):
    with pytest.raises(ValueError, match="naive"):
        ledger.record_no_data("demo", "IBM", "5min", datetime(2024, 3, 12, 14), datetime(2024, 3, 12, 15, tzinfo=UTC))
    with pytest.raises(ValueError, match="empty"):
        ledger.record_no_data("demo", "IBM", "5min", AFTER, AFTER)


def test_missing_ranges_merge_contiguous_holes(engine, ledger, xnys):
    fri, mon, tue = (day_starts(xnys, date(2024, 3, d)) for d in (8, 11, 12))
    put(engine, fri[:70] + mon[3:20] + mon[22:] + tue[:40] + tue[41:])
    put(engine, tue, symbol="MSFT")
    ranges = ledger.missing_ranges("demo", ["MSFT", "IBM", "AAPL"], "5min", date(2024, 3, 8), date(2024, 3, 12),
                                   exchange="XNYS", sessions=REGULAR)  # fmt: skip
    assert ranges == [
        ("AAPL", fri[0], tue[-1] + MIN5),  # nothing at all: one range across nights and the weekend
        ("IBM", fri[70], mon[3]),  # Friday's last bars and Monday's first: consecutive among the expected bars
        ("IBM", mon[20], mon[22]),
        ("IBM", tue[40], tue[41]),
        ("MSFT", fri[0], mon[-1] + MIN5),
    ]
    assert stored(engine) == []  # reading only


def test_missing_ranges_read_the_bars_of_partly_loaded_days(engine, ledger, xnys, clock):
    starts = day_starts(xnys, date(2024, 3, 12))
    put(engine, starts[:10] + starts[12:])
    compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 12))  # the ledger knows the day is incomplete
    assert ledger.missing_ranges("demo", ["IBM"], "5min", date(2024, 3, 12), date(2024, 3, 12), exchange="XNYS",
                                 sessions=REGULAR) == [("IBM", starts[10], starts[12])]  # fmt: skip


def test_worst(engine, ledger, xnys):
    fri, mon = day_starts(xnys, date(2024, 3, 8)), day_starts(xnys, date(2024, 3, 11))
    put(engine, fri + mon[:70], symbol="A")
    put(engine, fri[:60] + mon, symbol="B")
    put(engine, fri + mon, symbol="C")
    compute(ledger, symbols=["A", "B", "C"], start=date(2024, 3, 8), end=date(2024, 3, 11))
    assert [(r.symbol, r.session_date, r.missing) for r in ledger.worst()] == [
        ("B", date(2024, 3, 8), 18), ("A", date(2024, 3, 11), 8),
    ]  # fmt: skip
    assert len(ledger.worst(limit=1)) == 1
    assert all(r.checked_at == AFTER for r in ledger.worst())


def test_nothing_to_check(ledger):
    assert compute(ledger, symbols=[]) == []
    assert compute(ledger, start=date(2024, 3, 12), end=date(2024, 3, 11)) == []
    assert compute(ledger, start=date(2024, 3, 9), end=date(2024, 3, 10)) == []  # a weekend
    assert ledger.worst() == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"exchange": "XXXX"}, "exchange"), ({"interval": "2min"}, "interval"), ({"sessions": frozenset()}, "sessions")],
)
def test_bad_input(ledger, kwargs, name):
    with pytest.raises(ConfigError) as exc:
        compute(ledger, **kwargs)
    assert exc.value.name == name


# -- output ---------------------------------------------------------------------------------------


FIRST = datetime(2024, 3, 12, 14, tzinfo=UTC)


def row(symbol="IBM", day=date(2024, 3, 12), expected=78, loaded=70, no_data=3, first=FIRST):
    return CoverageRow("demo", symbol, "5min", day, expected, loaded, no_data, expected - loaded - no_data, first, AFTER)


def test_as_dict_is_json_ready():
    d = row().as_dict()
    assert d == {
        "provider": "demo", "symbol": "IBM", "interval": "5min", "session_date": "2024-03-12", "expected": 78, "loaded": 70,
        "missing": 5, "no_data": 3, "first_missing": "2024-03-12T14:00:00+00:00",
    }  # fmt: skip
    assert json.loads(json.dumps([row(first=None).as_dict()]))[0]["first_missing"] is None


def test_render_table():
    text = render_table([row(), row("MSFT", loaded=78, no_data=0, first=None)])
    lines = text.splitlines()
    assert lines[0].split() == ["provider", "symbol", "interval", "session_date", "expected", "loaded", "no_data", "missing",
                                "complete", "first_missing", "(UTC)"]  # fmt: skip
    assert lines[2].split() == ["demo", "IBM", "5min", "2024-03-12", "78", "70", "3", "5", "93.6%", "2024-03-12", "14:00"]
    assert lines[3].split() == ["demo", "MSFT", "5min", "2024-03-12", "78", "78", "0", "0", "100.0%", "-"]
    assert lines[-1] == "2 rows: 148 of 156 expected bars loaded, 3 no data, 5 missing (96.8% complete)"
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    assert render_table([]).splitlines()[-1] == "0 rows: 0 of 0 expected bars loaded, 0 no data, 0 missing"


# -- the picture ----------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_grid_leaves_holidays_blank_and_weekends_out(xnys):
    from reports.coverage_plot import coverage_grid

    days = session_dates(xnys, date(2024, 7, 1), date(2024, 7, 9))  # 4 July closed; a weekend
    rows = [row("A", d, loaded=78, no_data=0, first=None) for d in days] + [row("B", days[0], expected=0, loaded=0, no_data=0)]
    rows.append(row("B", days[1], loaded=39, no_data=0))
    series, columns, grid = coverage_grid(rows)
    assert series == ["A", "B"]
    assert columns == [date(2024, 7, d) for d in (1, 2, 3, 4, 5, 8, 9)]  # the holiday is a column, the weekend is not
    holiday = columns.index(date(2024, 7, 4))
    assert all(v != v for v in grid[:, holiday])  # NaN: blank
    assert list(grid[0, [0, 1, 2, 4, 5, 6]]) == [1.0] * 6
    assert grid[1, 0] != grid[1, 0] and grid[1, 1] == 0.5  # nothing expected: blank; half the bars: 0.5
    crypto_rows = [row("BTC-USD", date(2024, 7, d), loaded=78, no_data=0) for d in (5, 6, 7, 8)]
    assert coverage_grid(crypto_rows)[1] == [date(2024, 7, d) for d in (5, 6, 7, 8)]  # 24/7: weekends kept


def test_plot_is_a_png_of_the_right_shape(tmp_path, xnys):
    import matplotlib.image

    from reports import plot_coverage

    days = session_dates(xnys, date(2024, 1, 1), date(2024, 12, 31))[:250]
    symbols = [f"S{i:02d}" for i in range(50)]
    rows = [row(s, d, loaded=78 - (i * j) % 7, no_data=0) for i, s in enumerate(symbols) for j, d in enumerate(days)]
    path = plot_coverage(rows, tmp_path / "out" / "coverage.png", title="50 x 250")
    assert path == tmp_path / "out" / "coverage.png"
    width, height = png_size(path)
    assert width > height > 600 and width >= 1200  # room for 250 columns and 50 labelled rows
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width)
    small = plot_coverage(rows[:3], tmp_path / "small.png")
    w, h = png_size(small)
    assert w < width and h < height
    empty = plot_coverage([], tmp_path / "empty.png", title="nothing")
    assert png_size(empty) == (600, 200)
