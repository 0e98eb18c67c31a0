from datetime import UTC, datetime, timedelta

import pytest

from etl.transform import dedupe_bars, local_to_utc, validate_bars, zone
from models.bar import Bar

NY = zone("US/Eastern")


def bar(ts=datetime(2024, 3, 11, 13, 30, tzinfo=UTC), o="10.0", h="11.0", l="9.5", c="10.5", v="100", symbol="IBM"):
    return Bar("demo", symbol, "5min", ts, o, h, l, c, v)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2024-03-08 09:30:00", "2024-03-08T14:30:00+00:00"),  # EST, Friday before the switch
        ("2024-03-11 09:30:00", "2024-03-11T13:30:00+00:00"),  # EDT, Monday after 2024-03-10
        ("2024-03-10 03:00:00", "2024-03-10T07:00:00+00:00"),  # first wall time after the spring gap
        ("2024-11-01 16:00:00", "2024-11-01T20:00:00+00:00"),  # EDT
        ("2024-11-04 16:00:00", "2024-11-04T21:00:00+00:00"),  # EST after 2024-11-03
        ("2024-11-03 01:30:00", "2024-11-03T05:30:00+00:00"),  # ambiguous hour: first occurrence (EDT)
        ("2024-12-31 23:55:00", "2025-01-01T04:55:00+00:00"),  # crosses midnight and a year in UTC
    ],
)
def test_local_to_utc_follows_new_york_dst(local, expected):
    assert local_to_utc(local, NY).isoformat() == expected


def test_end_label_shift_is_applied_to_the_absolute_instant():
    # an end-labelled 60min bar at 03:00 EDT on the spring-forward day started at 01:00 EST (06:00Z)
    assert local_to_utc("2024-03-10 03:00:00", NY, -timedelta(hours=1)) == datetime(2024, 3, 10, 6, tzinfo=UTC)


def test_local_to_utc_rejects_garbage():
    with pytest.raises(ValueError):
        local_to_utc("yesterday", NY)


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
        ({"v": "-1"}, "negative volume"),
        ({"l": "10.2"}, "inconsistent OHLC"),  # low above open
        ({"h": "10.4"}, "inconsistent OHLC"),  # high below close
        ({"o": ""}, "non-numeric"),
        ({"ts": datetime(2024, 1, 2, 9, 30)}, "not UTC"),
        ({"ts": datetime(2024, 1, 2, 9, 30, tzinfo=NY)}, "not UTC"),
    ],
)
def test_invalid_bars_are_rejected_with_a_reason(kwargs, reason):
    good, rejected = validate_bars([bar(), bar(**kwargs)])
    assert len(good) == 1
    assert len(rejected) == 1 and reason in rejected[0].reason


def test_dedupe_keeps_last_copy_in_first_position():
    t = datetime(2024, 1, 2, 15, tzinfo=UTC)
    first, other, revised = bar(ts=t, c="10.5"), bar(ts=t + timedelta(minutes=5)), bar(ts=t, c="10.6")
    assert dedupe_bars([first, other, revised]) == [revised, other]


@pytest.mark.parametrize("day", ["2024-03-10", "2024-11-03", "2024-03-31"])
@pytest.mark.parametrize("shift", [timedelta(0), -timedelta(minutes=5)])
def test_cached_conversion_matches_per_timestamp_conversion_on_switch_days(day, shift):
    from etl.transform import LocalToUtc

    for zone_name in ("US/Eastern", "Europe/Warsaw"):
        tz = zone(zone_name)
        cached = LocalToUtc(tz, shift)
        start = datetime.fromisoformat(f"{day} 00:00:00")
        for minute in range(0, 24 * 60):
            text = (start + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")
            assert cached(text) == local_to_utc(text, tz, shift), (zone_name, text)
