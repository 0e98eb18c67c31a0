from datetime import UTC, datetime, timedelta

import pytest

from etl.transform import (
    CONFLICT,
    FUTURE_SKEW_SECONDS,
    AmbiguousLocalTime,
    LocalToUtc,
    NonexistentLocalTime,
    Rejection,
    dedupe_bars,
    local_to_utc,
    validate_bars,
    zone,
)
from models.bar import Bar

NY = zone("US/Eastern")
T0 = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)


def bar(ts=T0, o="10.0", h="11.0", l="9.5", c="10.5", v="100", symbol="IBM", interval="5min"):
    return Bar("demo", symbol, interval, ts, o, h, l, c, v)


def minutes(day: str, hour: int):
    return [f"{day} {hour:02d}:{m:02d}:00" for m in range(60)]


# --- local time to UTC -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2024-03-08 09:30:00", "2024-03-08T14:30:00+00:00"),  # EST, Friday before the switch
        ("2024-03-11 09:30:00", "2024-03-11T13:30:00+00:00"),  # EDT, Monday after 2024-03-10
        ("2024-03-10 01:59:00", "2024-03-10T06:59:00+00:00"),  # last wall time before the spring gap
        ("2024-03-10 03:00:00", "2024-03-10T07:00:00+00:00"),  # first wall time after the spring gap
        ("2024-11-01 16:00:00", "2024-11-01T20:00:00+00:00"),  # EDT
        ("2024-11-03 00:59:00", "2024-11-03T04:59:00+00:00"),  # just before the repeated hour (EDT)
        ("2024-11-03 02:00:00", "2024-11-03T07:00:00+00:00"),  # just after it (EST)
        ("2024-11-04 16:00:00", "2024-11-04T21:00:00+00:00"),  # EST after 2024-11-03
        ("2024-12-31 23:55:00", "2025-01-01T04:55:00+00:00"),  # crosses midnight and a year in UTC
    ],
)
def test_local_to_utc_follows_new_york_dst(local, expected):
    assert local_to_utc(local, NY).isoformat() == expected
    assert LocalToUtc(NY)(local).isoformat() == expected


@pytest.mark.parametrize("convert", [lambda t: local_to_utc(t, NY), LocalToUtc(NY)], ids=["local_to_utc", "LocalToUtc"])
def test_spring_forward_gap_is_rejected_not_moved_onto_the_real_hour(convert):
    # 02:00-02:59 New York never happened on 2024-03-10; zoneinfo alone maps 02:30 onto 07:30Z = 03:30 EDT
    real = {local_to_utc(t, NY) for t in minutes("2024-03-10", 3)}
    for text in minutes("2024-03-10", 2):
        with pytest.raises(NonexistentLocalTime):
            got = convert(text)
            assert got not in real, (text, got)  # (only reached if nothing was raised)


@pytest.mark.parametrize("convert", [lambda t: local_to_utc(t, NY), LocalToUtc(NY)], ids=["local_to_utc", "LocalToUtc"])
def test_fall_back_hour_is_ambiguous_every_time(convert):
    # 01:00-01:59 New York happened twice on 2024-11-03 (05:xxZ in EDT, then 06:xxZ in EST): never guessed
    for _ in range(2):  # and the same answer again (the cache must not remember a guess)
        for text in minutes("2024-11-03", 1):
            with pytest.raises(AmbiguousLocalTime):
                convert(text)


def test_local_time_errors_are_value_errors_and_transform_errors():
    from errors import TransformError

    assert issubclass(NonexistentLocalTime, ValueError) and issubclass(NonexistentLocalTime, TransformError)
    assert issubclass(AmbiguousLocalTime, ValueError) and issubclass(AmbiguousLocalTime, TransformError)


def test_end_label_shift_is_applied_to_the_absolute_instant():
    # an end-labelled 60min bar at 03:00 EDT on the spring-forward day started at 01:00 EST (06:00Z)
    assert local_to_utc("2024-03-10 03:00:00", NY, -timedelta(hours=1)) == datetime(2024, 3, 10, 6, tzinfo=UTC)
    assert LocalToUtc(NY, -timedelta(hours=1))("2024-03-10 03:00:00") == datetime(2024, 3, 10, 6, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2024-01-02 10:00:00+05:00", "2024-01-02T10:00:00Z", ""])
def test_local_to_utc_rejects_garbage_and_explicit_offsets(text):
    with pytest.raises(ValueError):
        local_to_utc(text, NY)
    with pytest.raises(ValueError):
        LocalToUtc(NY)(text)


@pytest.mark.parametrize("day", ["2024-03-10", "2024-11-03", "2024-03-31", "2024-10-27", "2024-04-07", "2024-10-06"])
@pytest.mark.parametrize("shift", [timedelta(0), -timedelta(minutes=5)])
def test_cached_conversion_matches_per_timestamp_conversion_on_switch_days(day, shift):
    # Lord Howe Island shifts by 30 minutes at 02:00 (a gap 02:00-02:29 in October, 01:30-01:59 twice in April)
    for zone_name in ("US/Eastern", "Europe/Warsaw", "Australia/Lord_Howe"):
        tz = zone(zone_name)
        cached = LocalToUtc(tz, shift)
        start = datetime.fromisoformat(f"{day} 00:00:00")
        outcomes = set()
        for minute in range(0, 24 * 60):
            text = (start + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")
            try:
                expected = local_to_utc(text, tz, shift)
            except ValueError as exc:
                with pytest.raises(type(exc)):
                    cached(text)
                outcomes.add(type(exc))
            else:
                assert cached(text) == expected, (zone_name, text)
        # one kind of strange minute per zone and day at most (the US switches on 03-10/11-03, the EU on 03-31/10-27)
        assert len(outcomes) <= 1


# --- validation: values ----------------------------------------------------------------------


def test_valid_bar_passes():
    good, rejected = validate_bars([bar()])
    assert len(good) == 1 and rejected == []


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"o": "nan", "h": "nan"}, "non-finite"),
        ({"o": "1_000"}, "non-numeric"),  # float() takes it, PostgreSQL numeric does not
        ({"o": "١٢"}, "non-numeric"),  # non-ASCII digits
        ({"h": "1e999", "o": "1e999", "c": "1e999"}, "non-finite"),
        ({"h": "inf"}, "non-finite"),
        ({"v": "-1"}, "negative volume"),
        ({"v": "nan"}, "non-finite"),
        ({"l": "10.2"}, "inconsistent OHLC"),  # low above open
        ({"h": "10.4"}, "inconsistent OHLC"),  # high below close
        ({"o": ""}, "non-numeric"),
        ({"o": 10.0, "h": 11.0, "l": 9.5, "c": 10.5, "v": 100}, "non-numeric"),  # JSON numbers, not decimal text
        ({"o": None}, "non-numeric"),
        ({"ts": datetime(2024, 1, 2, 9, 30)}, "not UTC"),
        ({"ts": datetime(2024, 1, 2, 9, 30, tzinfo=NY)}, "not UTC"),
    ],
)
def test_invalid_bars_are_rejected_with_a_reason(kwargs, reason):
    good, rejected = validate_bars([bar(), bar(**{"ts": T0 + timedelta(minutes=5), **kwargs})])
    assert len(good) == 1
    assert len(rejected) == 1 and reason in rejected[0].reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"o": "0", "h": "0", "l": "0", "c": "0"}, "non-positive price"),
        ({"l": "0"}, "non-positive price"),
        ({"l": "-0.01"}, "non-positive price"),
        ({"o": "-1", "h": "-1", "l": "-2", "c": "-1.5"}, "non-positive price"),
        ({"h": "10.4"}, "inconsistent OHLC: high below max(open, close, low)"),  # below close
        ({"h": "9.9", "c": "9.8"}, "inconsistent OHLC: high below max(open, close, low)"),  # below open
        ({"l": "12", "h": "11"}, "inconsistent OHLC: high below max(open, close, low)"),  # below low
        ({"l": "10.2"}, "inconsistent OHLC: low above min(open, close)"),  # above open
        ({"l": "10.6", "o": "10.8"}, "inconsistent OHLC: low above min(open, close)"),  # above close
    ],
)
def test_each_plausibility_rule(kwargs, reason):
    good, rejected = validate_bars([bar(**kwargs)])
    assert good == [] and [r.reason.startswith(reason) for r in rejected] == [True], rejected


@pytest.mark.parametrize("kwargs", [{"v": "0"}, {"o": "11.0", "c": "11.0"}, {"o": "9.5", "h": "9.5", "l": "9.5", "c": "9.5"}])
def test_edges_that_stay_valid(kwargs):
    # zero volume (no trades), open/close on the high, a flat bar
    assert validate_bars([bar(**kwargs)]) == ([bar(**kwargs)], [])


def test_rejection_carries_the_bar_as_an_excerpt():
    (r,) = validate_bars([bar(l="10.2")])[1]
    assert r == Rejection("IBM", T0.isoformat(), r.reason, "2024-03-11T13:30:00+00:00,10.0,11.0,10.2,10.5,100")


def test_long_junk_is_shortened_in_reasons_and_excerpts():
    (r,) = validate_bars([bar(v="-" + "0" * 1000 + "1")])[1]  # -1, written in 1002 characters
    assert r.reason.startswith("negative volume -000") and len(r.reason) < 60 and len(r.excerpt) == 200


# --- validation: conflicts and duplicates ----------------------------------------------------


def test_conflicting_copies_are_all_rejected_and_counted():
    a, b, other = bar(c="10.5"), bar(c="10.6"), bar(ts=T0 + timedelta(minutes=5))
    good, rejected = validate_bars([a, other, b])
    assert good == [other]
    assert [(r.key, r.reason) for r in rejected] == [(T0.isoformat(), CONFLICT)] * 2
    assert rejected[0].reason.startswith("conflict") and [r.excerpt.split(",")[4] for r in rejected] == ["10.5", "10.6"]


def test_every_copy_of_a_conflicting_key_is_rejected_even_identical_ones():
    a, b = bar(v="100"), bar(v="101")
    good, rejected = validate_bars([a, a, b])
    assert good == [] and len(rejected) == 3 and {r.reason for r in rejected} == {CONFLICT}


def test_conflict_is_decided_on_the_text_not_on_plausibility():
    # one copy is junk: the other must not win silently
    good, rejected = validate_bars([bar(o="abc"), bar()])
    assert good == [] and [r.reason for r in rejected] == [CONFLICT, CONFLICT]


def test_exact_duplicates_are_kept_once_in_first_position():
    a, other = bar(), bar(ts=T0 + timedelta(minutes=5))
    good, rejected = validate_bars([a, other, bar(), other])
    assert good == [a, other] and rejected == []


def test_an_invalid_exact_duplicate_is_rejected_once():
    junk = bar(o="nan")
    good, rejected = validate_bars([junk, junk])
    assert good == [] and len(rejected) == 1 and "non-finite" in rejected[0].reason


def test_same_instant_in_other_series_is_not_a_conflict():
    bars = [bar(), bar(symbol="MSFT", c="10.6"), bar(interval="1min", c="10.7")]
    assert validate_bars(bars) == (bars, [])


def test_one_instant_written_in_two_zones_is_one_key():
    # 13:30Z and 09:30 New York are the same instant: the key is the instant, so differing values conflict
    ny = bar(ts=T0.astimezone(NY), c="10.6")
    good, rejected = validate_bars([bar(), ny])
    assert good == [] and [r.reason for r in rejected] == [CONFLICT, CONFLICT]


# --- validation: time ------------------------------------------------------------------------

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


def test_future_stamps_are_rejected_against_a_fixed_now():
    limit = NOW + timedelta(minutes=5) + timedelta(seconds=FUTURE_SKEW_SECONDS)  # one 5min interval plus skew
    ok_bars = [bar(ts=NOW - timedelta(minutes=5)), bar(ts=NOW), bar(ts=limit)]
    late = [bar(ts=limit + timedelta(microseconds=1)), bar(ts=datetime(2099, 1, 1, 14, 30, tzinfo=UTC))]
    good, rejected = validate_bars(ok_bars + late, now=NOW)
    assert good == ok_bars
    assert [r.key for r in rejected] == [b.ts.isoformat() for b in late]
    assert all(r.reason.startswith("in the future") for r in rejected)


def test_future_limit_follows_the_interval_and_the_skew():
    tomorrow = bar(ts=NOW + timedelta(hours=23), interval="1day")
    assert validate_bars([tomorrow], now=NOW)[0] == [tomorrow]  # one day ahead is within a daily interval
    assert validate_bars([tomorrow], now=NOW, skew_seconds=0)[0] == [tomorrow]
    soon = bar(ts=NOW + timedelta(minutes=1, seconds=30), interval="1min")
    assert validate_bars([soon], now=NOW, skew_seconds=20)[0] == []
    assert validate_bars([soon], now=NOW, skew_seconds=30)[0] == [soon]


def test_now_in_another_zone_is_the_same_instant():
    b = bar(ts=NOW + timedelta(minutes=6))  # after NOW + 5min, within NOW + 5min + skew
    assert validate_bars([b], now=NOW.astimezone(NY)) == validate_bars([b], now=NOW) == ([b], [])


def test_without_now_there_is_no_future_check():
    assert validate_bars([bar(ts=datetime(2099, 1, 1, tzinfo=UTC))])[1] == []


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="aware"):
        validate_bars([bar()], now=datetime(2024, 3, 11, 14, 0))


def test_centuries_old_daily_bars_are_valid():
    # Stooq's ^SPX starts in 1789: midnight New York was then local mean time, 04:56:02Z
    old = [
        bar(ts=datetime(1789, 5, 1, 4, 56, 2, tzinfo=UTC), interval="1day", o="0.51", h="0.51", l="0.51", c="0.51", v="0"),
        bar(ts=datetime(1900, 1, 2, 5, tzinfo=UTC), interval="1day"),
    ]
    assert validate_bars(old, now=NOW) == (old, [])


def test_dedupe_keeps_last_copy_in_first_position():
    t = datetime(2024, 1, 2, 15, tzinfo=UTC)
    first, other, revised = bar(ts=t, c="10.5"), bar(ts=t + timedelta(minutes=5)), bar(ts=t, c="10.6")
    assert dedupe_bars([first, other, revised]) == [revised, other]


def test_the_shared_converter_remembers_only_what_converted_and_agrees_with_a_fresh_one():
    shared = LocalToUtc.shared(NY)
    assert LocalToUtc.shared(NY) is shared and LocalToUtc.shared(NY, -timedelta(minutes=5)) is not shared
    texts = ["2024-03-10 01:59:00", "2024-03-10 03:00:00", "2024-11-03 00:59:00", "2024-11-03 02:00:00"]
    for _ in range(2):  # the second round answers from what the first remembered
        assert [shared(t) for t in texts] == [LocalToUtc(NY)(t) for t in texts]
        for bad in ("2024-03-10 02:30:00", "2024-11-03 01:30:00"):  # never remembered: raises every time
            with pytest.raises(ValueError):
                shared(bad)
    assert "2024-03-10 02:30:00" not in shared._seen and "2024-11-03 02:00:00" in shared._seen
