"""Nothing implausible or conflicting reaches ``bars``; what is refused is kept in ``rejected_bars``.

The property test generates Alpha Vantage intraday payloads (JSON and CSV) whose records
include DST-gap and fall-back local times, repeated timestamps (same and different values),
junk values and future stamps, runs them through parse -> validate -> load into a real
database, and compares ``bars`` with an oracle written here, independently of the code under test.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import db.rejects
from db.rejects import MAX_STORED_PER_CALL, RejectStore
from db.tables import bars, rejected_bars
from errors import LoadError
from etl.load import make_loader
from etl.providers.alphavantage import parse_response
from etl.transform import FUTURE_SKEW_SECONDS, Rejection, validate_bars, zone

NY = zone("US/Eastern")
NOW = datetime(2024, 11, 5, 15, 0, tzinfo=UTC)  # 10:00 New York (EST)
SEEN = datetime(2024, 11, 5, 15, 0, 30, tzinfo=UTC)
INTERVAL = "5min"
FIELDS = ("1. open", "2. high", "3. low", "4. close", "5. volume")


def _clean(engine) -> None:
    with engine.begin() as conn:
        conn.execute(bars.delete())
        conn.execute(rejected_bars.delete())


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)  # SQLite gives naive UTC


# --- RejectStore ---------------------------------------------------------------------------


def _stored(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(rejected_bars).order_by(rejected_bars.c.id)).mappings()]


def test_reject_store_records_what_and_why(engine):
    rejections = [
        Rejection("IBM", "2024-03-10 02:30:00", "nonexistent local time (DST gap)", '{"2024-03-10 02:30:00":{"1. open":"1"}}'),
        Rejection("IBM", "2024-03-10T08:00:00+00:00", "non-finite value", "2024-03-10T08:00:00+00:00,nan,1,1,1,1"),
    ]
    seen_ny = SEEN.astimezone(NY)  # any zone: stored as the UTC instant
    assert RejectStore(engine).record(rejections, provider="alphavantage", interval="5min", seen_at=seen_ny, run_id=7) == 2
    rows = _stored(engine)
    assert [(r["run_id"], r["provider"], r["symbol"], r["interval"], r["raw_ts"], r["reason"], r["excerpt"]) for r in rows] == [
        (7, "alphavantage", "IBM", "5min", x.key, x.reason, x.excerpt) for x in rejections
    ]
    assert {_utc(r["seen_at"]) for r in rows} == {SEEN}


def test_a_run_that_fetches_a_symbol_again_stores_its_rejections_once(engine):
    """A retry pass (or a retried cluster chunk) sees the same bad records: one row each per run; a
    record sent twice in one reply keeps both copies; another run records its own."""
    store = RejectStore(engine)
    twice = [Rejection("IBM", "k1", "conflict", "a"), Rejection("IBM", "k1", "conflict", "a")]
    assert store.record([*twice, Rejection("MSFT", "k2", "bad", "b")], provider="demo", interval="1min", seen_at=SEEN,
                        run_id=5) == 3  # fmt: skip
    again = [*twice, Rejection("IBM", "k3", "new", "c"), Rejection("MSFT", "k2", "bad", "b")]
    assert store.record(again, provider="demo", interval="1min", seen_at=SEEN, run_id=5) == 1  # only k3 is new
    assert store.record(again, provider="demo", interval="1min", seen_at=SEEN, run_id=6) == 4
    assert sorted((r["run_id"], r["raw_ts"]) for r in _stored(engine)) == [
        (5, "k1"),
        (5, "k1"),
        (5, "k2"),
        (5, "k3"),
        (6, "k1"),
        (6, "k1"),
        (6, "k2"),
        (6, "k3"),
    ]


def test_reject_store_without_a_run_and_without_rejections(engine):
    store = RejectStore(engine)
    assert store.record([], provider="demo", interval="1min", seen_at=SEEN) == 0
    assert store.record([Rejection("X", "k", "r")], provider="demo", interval="1min", seen_at=SEEN) == 1
    (row,) = _stored(engine)
    assert row["run_id"] is None and row["excerpt"] == ""


def test_reject_store_keeps_at_most_a_thousand_per_call(engine):
    many = [Rejection("IBM", f"2024-01-02 10:{i % 60:02d}:00", "non-numeric value", f"row {i}") for i in range(2500)]
    assert RejectStore(engine).record(many, provider="demo", interval="1min", seen_at=SEEN) == MAX_STORED_PER_CALL == 1000
    rows = _stored(engine)
    assert len(rows) == 1000 and rows[0]["excerpt"] == "row 0" and rows[-1]["excerpt"] == "row 999"


def test_reject_store_takes_hostile_text(engine):
    # a JSON "\u0000" or "\ud800" decodes to text PostgreSQL refuses; a junk key can be huge
    nasty = Rejection("IBM", "x" * 5000, "non-numeric value \x00", '{"k":"\x00\ud800"}' + "y" * 5000)
    assert RejectStore(engine).record([nasty], provider="demo", interval="1min", seen_at=SEEN) == 1
    (row,) = _stored(engine)
    assert row["raw_ts"] == "x" * 200 and row["reason"] == "non-numeric value \\x00"
    assert row["excerpt"].startswith('{"k":"\\x00\\ud800"}yyy') and len(row["excerpt"]) <= 220


def test_reject_store_refuses_a_naive_seen_at(sqlite_engine):
    with pytest.raises(ValueError, match="aware"):
        RejectStore(sqlite_engine).record(
            [Rejection("X", "k", "r")], provider="demo", interval="1min", seen_at=datetime(2024, 1, 1)
        )


def test_reject_store_translates_database_errors(tmp_path):
    from db.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no rejected_bars table
    with pytest.raises(LoadError, match="rejected_bars"):
        RejectStore(engine).record([Rejection("X", "k", "r")], provider="demo", interval="1min", seen_at=SEEN)
    engine.dispose()


def test_documented_query_runs(pg_engine):
    query = re.search(r"(SELECT .*?;)", db.rejects.__doc__, re.S).group(1)
    RejectStore(pg_engine).record([Rejection("IBM", "k", "r", "e")], provider="demo", interval="5min", seen_at=datetime.now(UTC))
    with pg_engine.connect() as conn:
        rows = conn.exec_driver_sql(query).all()
    assert [(r.symbol, r.raw_ts, r.reason, r.excerpt) for r in rows] == [("IBM", "k", "r", "e")]


# --- the property: bars holds exactly the valid, non-conflicting records ---------------------


def _wall(day: str, hour: int, minute: int) -> str:
    return f"{day} {hour:02d}:{minute:02d}:00"


STAMPS = (
    [_wall("2024-03-10", h, m) for h in (1, 2, 3) for m in (0, 30, 55)]  # 02:xx never happened (spring gap)
    + [_wall("2024-11-03", h, m) for h in (0, 1, 2) for m in (0, 30, 55)]  # 01:xx happened twice (fall back)
    + [_wall("2024-01-31", 10, m) for m in (0, 5, 10)]
    + ["2024-01-31 10:05", "2024-01-31T10:05:00"]  # 10:05 written two more ways: one instant, one key
    + [_wall("2024-11-05", 10, m) for m in (0, 5, 10, 15)]  # now, +5 min, +10 min (the limit), +15 min
    + ["2099-01-01 10:00:00", "2030-06-01 12:00:00", "1900-01-02 10:00:00"]  # the future; old history
    + ["not-a-time", "2024-02-30 10:00:00", "2024-01-31 25:00:00"]
)
JUNK = ["0", "0.00", "-1", "-5", "99999", "nan", "inf", "-inf", "1e999", "abc", "", "1_0", "١٢", "\x00", "\ud800"]


@st.composite
def bar_values(draw, csv_safe: bool) -> tuple[str, ...]:
    a, b, c, d = sorted(draw(st.lists(st.integers(1, 20000), min_size=4, max_size=4)))
    o, cl = draw(st.permutations([b, c]))
    values = [f"{o / 100:.2f}", f"{d / 100:.2f}", f"{a / 100:.2f}", f"{cl / 100:.2f}", str(draw(st.integers(0, 10**6)))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):  # most records plausible, some spoiled
        junk = [j for j in JUNK if not (csv_safe and j == "\ud800")]  # UTF-8 cannot carry a lone surrogate
        spoil = draw(st.sampled_from(["junk", "swap high and low", "high below close", "low above open"]))
        if spoil == "junk":
            values[draw(st.integers(0, 4))] = draw(st.sampled_from(junk))
        elif spoil == "swap high and low":
            values[1], values[2] = values[2], values[1]
        elif spoil == "high below close":
            values[1] = f"{max(a - 1, 1) / 100:.2f}"
        else:
            values[2] = f"{(d + 1) / 100:.2f}"
    return tuple(values)


@st.composite
def payloads(draw) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    fmt = draw(st.sampled_from(["json", "csv"]))
    records = draw(st.lists(st.tuples(st.sampled_from(STAMPS), bar_values(fmt == "csv")), max_size=20))
    if records:
        records += draw(st.lists(st.sampled_from(records), max_size=5))  # exact copies
    return fmt, draw(st.permutations(records))


def _body(fmt: str, records) -> bytes:
    if fmt == "csv":
        lines = ["timestamp,open,high,low,close,volume"] + [",".join((ts, *v)) for ts, v in records]
        return ("\r\n".join(lines) + "\r\n").encode()
    series = ", ".join(f"{json.dumps(ts)}: {json.dumps(dict(zip(FIELDS, v, strict=True)))}" for ts, v in records)
    meta = '"2. Symbol": "IBM", "4. Interval": "5min", "6. Time Zone": "US/Eastern"'
    return f'{{"Meta Data": {{{meta}}}, "Time Series (5min)": {{{series}}}}}'.encode()


# The oracle: the rules of issue #7, written without the code under test.

_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_EST, _EDT = timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4))


def _instant(text: str) -> datetime | None:
    """The one UTC instant a New York wall time names; None for junk, skipped and repeated wall times."""
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return None
    if naive.tzinfo is not None:
        return None
    candidates = {naive.replace(tzinfo=off).astimezone(UTC) for off in (_EST, _EDT)}
    real = [u for u in candidates if u.astimezone(NY).replace(tzinfo=None) == naive]
    return real[0] if len(real) == 1 else None


def _plausible(values: tuple[str, ...]) -> bool:
    if not all(_NUMBER.fullmatch(x) for x in values):
        return False
    o, h, l, c, v = map(Decimal, values)
    if any(abs(x) > Decimal("1e300") for x in (o, h, l, c, v)):  # beyond a double: not a finite number
        return False
    return min(o, h, l, c) > 0 and v >= 0 and h >= max(o, c, l) and l <= min(o, c)


def oracle(fmt: str, records) -> tuple[dict[datetime, tuple[str, ...]], int]:
    """The rows ``bars`` must hold ({UTC start: values}) and how many records may vanish (identical copies)."""
    vanish = 0
    if fmt == "json":  # a key repeated inside the series object: identical copies are one, others all out
        by_key: dict[str, list] = defaultdict(list)
        for ts, v in records:
            by_key[ts].append(v)
        records = [(ts, vs[0]) for ts, vs in by_key.items() if all(x == vs[0] for x in vs)]
        vanish += sum(len(vs) - 1 for vs in by_key.values() if all(x == vs[0] for x in vs))
    by_instant: dict[datetime, list] = defaultdict(list)
    for ts, v in records:
        instant = _instant(ts)
        if "" in v or instant is None:  # never a bar: missing field, bad / skipped / repeated wall time
            continue
        by_instant[instant].append(v)
    limit = NOW + timedelta(minutes=5, seconds=FUTURE_SKEW_SECONDS)
    expected = {}
    for instant, vs in by_instant.items():
        if any(x != vs[0] for x in vs):
            continue  # one instant, different values: a conflict, every copy out
        vanish += len(vs) - 1
        if _plausible(vs[0]) and instant <= limit:
            expected[instant] = vs[0]
    return expected, vanish


# the issue's own cases, always run
GAP_ONTO_REAL = ("json", [("2024-03-10 02:30:00", ("1.00", "2.00", "0.50", "1.50", "10")),
                          ("2024-03-10 03:30:00", ("3.00", "4.00", "2.50", "3.50", "20"))])  # fmt: skip
FALL_BACK_TWICE = ("csv", [("2024-11-03 01:30:00", ("1.00", "2.00", "0.50", "1.50", "10")),
                           ("2024-11-03 01:30:00", ("1.10", "2.00", "0.50", "1.50", "10")),
                           ("2024-11-03 02:00:00", ("1.00", "2.00", "0.50", "1.50", "10"))])  # fmt: skip
SAME_INSTANT_TWO_SPELLINGS = ("json", [("2024-01-31 10:05", ("1.00", "2.00", "0.50", "1.50", "10")),
                                       ("2024-01-31T10:05:00", ("1.00", "2.00", "0.50", "1.50", "11"))])  # fmt: skip
FAR_FUTURE = ("csv", [("2099-01-01 10:00:00", ("1.00", "2.00", "0.50", "1.50", "10"))])


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads())
@example(payload=GAP_ONTO_REAL)
@example(payload=FALL_BACK_TWICE)
@example(payload=SAME_INSTANT_TWO_SPELLINGS)
@example(payload=FAR_FUTURE)
def test_bars_hold_exactly_the_valid_non_conflicting_records(engine, payload):
    fmt, records = payload
    _clean(engine)
    fetched = parse_response(_body(fmt, records), symbol="IBM", interval=INTERVAL)
    good, rejected = validate_bars(fetched.bars, now=NOW)
    make_loader(engine).load(good)
    RejectStore(engine).record(fetched.rejected + rejected, provider="alphavantage", interval=INTERVAL, seen_at=SEEN)

    expected, vanish = oracle(fmt, records)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(bars).where(bars.c.symbol == "IBM")).mappings().all()
        stored_rejects = conn.execute(sa.select(sa.func.count()).select_from(rejected_bars)).scalar()
    landed = {_utc(r["ts"]): tuple(r[k] for k in ("open", "high", "low", "close", "volume")) for r in rows}
    assert landed == {ts: tuple(map(Decimal, v)) for ts, v in expected.items()}
    assert len(rows) == len(good)  # nothing loaded twice, nothing lost on the way
    # every record is loaded, rejected with a reason, or an identical copy of one that was
    assert len(good) + len(fetched.rejected) + len(rejected) + vanish == len(records)
    assert stored_rejects == len(fetched.rejected) + len(rejected)
