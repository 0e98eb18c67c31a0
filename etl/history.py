"""History: load a window of past bars chunk by chunk, resumably, through the polling cycle's own route.

Planning (pure, given the provider and what is stored):

1. :func:`subtract` removes from UTC ``[start, end)`` the windows already loaded (``done`` or
   ``no_data`` chunks in ``backfill_chunks``), unless a refetch is asked for.
2. :func:`chunk_windows` cuts what is left with the provider's own
   :meth:`~etl.providers.base.Provider.range_requests`: each ``Request.window`` is one API-sized
   chunk (a month per Alpha Vantage intraday request, 300 candles per Coinbase request ...).
   Neighbouring windows the API would answer with the very same request are one chunk.
3. The chunks are stored as ``pending`` rows (:class:`db.backfill.ChunkStore`) before any fetch.

Running (:meth:`Backfill.run`): the chunks that share a window are grouped, up to
:data:`MAX_CYCLE_SYMBOLS` symbols, into one cycle of :meth:`etl.pipeline.EtlPipeline.run_cycle`
with ``window=``: the same fetch threads, retries, validation, group-commit load and
``etl_runs`` row as polling. Each chunk then becomes

- ``done`` (as soon as its symbol's bars commit, then with the cycle's counts), or ``no_data``
  when the provider said the window holds nothing (told to ``record_no_data`` too);
- ``failed`` with the error when its symbol failed; the other symbols go on. A symbol that fails
  terminally (an unknown symbol) before any of its chunks succeeded is not fetched again in this
  run: its later chunks fail with that reason, sparing the API quota;
- ``pending`` when a shutdown (``stop``) left it undone, or the daily quota ran out under it.

Rate budget and quota: every request takes the provider's shared budget (waits are counted
for the progress display). Before each cycle, a used-up daily quota is waited out until it
resets (next UTC midnight), with one log line; ``stop`` ends the wait, leaving the rest pending.

Progress: :func:`make_progress` chooses a rich progress bar on a terminal, else one log line
per :func:`log_every` chunks.

Catch-up after downtime (:func:`fetch_caught_up`, called by every polling cycle and named-job
fire of :class:`etl.pipeline.EtlPipeline`): a series whose watermark lies beyond what one ordinary
request reaches (:meth:`~etl.providers.base.Provider.latest_reach`) gets the hole fetched in the
provider's history windows first, then the ordinary request, in the same cycle.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from clock import Clock
from db.backfill import Chunk, ChunkStatus, ChunkStore, Span
from errors import ConfigError, LoadError
from etl.events import LoadEvent
from etl.providers.base import FetchResult, Provider
from etl.retry import RetryBudget, human_seconds, retry_budget
from models.bar import interval_seconds
from models.run import CycleResult, SymbolOutcome

if TYPE_CHECKING:  # the pipeline imports this module (catch-up)
    from etl.pipeline import EtlPipeline

__all__ = ["Backfill", "Plan", "HistoryResult", "subtract", "chunk_windows", "cycle_groups", "make_progress",
           "Progress", "LogProgress", "RichProgress", "log_every", "MAX_CYCLE_SYMBOLS", "RATE_WAIT_MIN_SECONDS",
           "catch_up_window", "fetch_caught_up", "CATCH_UP_MAX_BARS"]  # fmt: skip

log = logging.getLogger(__name__)

#: Most symbols fetched in one cycle (one ``etl_runs`` row) for one window.
MAX_CYCLE_SYMBOLS = 50
#: A request that waited at least this long (seconds) for the rate budget counts as a rate-limit wait.
RATE_WAIT_MIN_SECONDS = 0.05
#: Longest single sleep (seconds) while waiting for the daily quota, between checks of the clock.
QUOTA_SLEEP_SECONDS = 60.0
#: Failures listed one by one in the result (all are counted, and stay in ``backfill_chunks``).
MAX_FAILURES_LISTED = 100
#: Longest hole a polling cycle or job fire catches up for one series, in bar intervals (1min: ~35
#: days; 5min: ~174 days; 60min and 1day: years). The hole is held in memory and loaded in one
#: transaction with the symbol's new bars, so it is bounded; anything older is left to ``--fill-gaps``
#: (the coverage ledger shows it) and said in a warning.
CATCH_UP_MAX_BARS = 50_000


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


# -- catch-up after downtime (every polling cycle and named-job fire) -----------------------------


def catch_up_window(provider: Provider, interval: str, since: datetime | None, now: datetime, *,
                    max_bars: int = CATCH_UP_MAX_BARS) -> Span | None:  # fmt: skip
    """The hole ``[since, now)`` (UTC) to backfill before a series' ordinary fetch, or None. Pure.

    A hole is a watermark ``since`` (the newest stored bar start) older than one ordinary request
    reaches back (:meth:`~etl.providers.base.Provider.latest_reach`). None when it is within reach,
    when the provider's ordinary request reaches any watermark, and when there is no watermark: a
    series never loaded gets the ordinary request only (the provider's own first window: Alpha
    Vantage's compact 100 bars, Polygon's ``lookback_days`` ...); older history is ``--backfill``'s.
    A hole longer than ``max_bars`` intervals is cut to its newest ``max_bars`` intervals
    (:data:`CATCH_UP_MAX_BARS`; the rest stays a gap for ``--fill-gaps``).
    """
    if since is None:
        return None
    reach = provider.latest_reach(interval)
    if reach is None or since >= now - reach:
        return None
    return max(since, now - timedelta(seconds=interval_seconds(interval) * max_bars)), now


def fetch_caught_up(provider: Provider, symbol: str, interval: str, since: datetime | None, now: datetime, *,
                    window_budget: Callable[[], RetryBudget] | None = None) -> FetchResult:  # fmt: skip
    """The ordinary fetch of ``symbol`` (newest bars after watermark ``since``), preceded by a history
    window over the hole when there is one (:func:`catch_up_window`), in one result.

    The hole is cut into the provider's own request windows (:func:`chunk_windows`: a month per
    Alpha Vantage request, 300 candles per Coinbase request ...), each fetched with
    :meth:`~etl.providers.base.Provider.fetch_range` (its pages, the shared rate budget, retries)
    under its own retry budget from ``window_budget()``, like a backfill chunk, so the caller's
    per-symbol budget (it counts requests) is left whole for the ordinary request (None: every
    request draws on the caller's). Then the ordinary request from the newest bar the hole brought;
    where both hold a bar, the ordinary request's copy wins. Windows the provider said hold no data
    are in ``FetchResult.no_data``. A provider that cannot fetch the hole (no history API, or older
    than it keeps: a :class:`~errors.ConfigError`) gets the ordinary request only, with a warning.
    Any other error propagates: the symbol fails this cycle and the next one starts from the same
    watermark.
    """
    window = catch_up_window(provider, interval, since, now)
    if window is None:
        return provider.fetch_bars(symbol, interval, since=since)
    hole = FetchResult(symbol)
    try:
        if window[0] > since:
            log.warning("%s %s %s: the hole since %s is longer than a cycle catches up (%d bars); catching up from %s, "
                        "the rest is left to --fill-gaps", provider.name, symbol, interval, since.isoformat(),
                        CATCH_UP_MAX_BARS, window[0].isoformat())  # fmt: skip
        windows = chunk_windows(provider, symbol, interval, [window])
        log.info("%s %s %s: watermark %s is beyond one ordinary request; backfilling [%s, %s) first in %d window(s)",
                 provider.name, symbol, interval, since.isoformat(), window[0].isoformat(), window[1].isoformat(),
                 len(windows))  # fmt: skip
        for lo, hi in windows:
            with retry_budget(window_budget()) if window_budget is not None else nullcontext():
                part = provider.fetch_range(symbol, interval, lo, hi)
            hole.bars += part.bars
            hole.rejected += part.rejected
            hole.actions += part.actions
            hole.no_data += part.no_data
    except ConfigError as exc:
        log.warning("%s %s: cannot backfill the hole since %s (%s); the ordinary request only", provider.name, symbol,
                    since.isoformat(), exc)  # fmt: skip
        return provider.fetch_bars(symbol, interval, since=since)
    latest = provider.fetch_bars(symbol, interval, since=max((b.ts for b in hole.bars), default=since))
    newer = {b.ts for b in latest.bars}
    latest.bars = sorted([b for b in hole.bars if b.ts not in newer] + latest.bars, key=_bar_ts)
    latest.rejected = hole.rejected + latest.rejected
    latest.actions = hole.actions + latest.actions
    latest.no_data = hole.no_data + latest.no_data
    return latest


def _bar_ts(bar) -> datetime:
    return bar.ts


# -- planning (pure) ---------------------------------------------------------------------------


def subtract(span: Span, covered: Sequence[Span]) -> list[Span]:
    """The parts of UTC ``span`` [start, end) that no window of ``covered`` overlaps, oldest first."""
    lo, hi = span
    out: list[Span] = []
    cur = lo
    for a, b in sorted(covered):
        if b <= cur:
            continue
        if a >= hi:
            break
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
        if cur >= hi:
            return out
    if cur < hi:
        out.append((cur, hi))
    return out


def chunk_windows(provider: Provider, symbol: str, interval: str, spans: Sequence[Span]) -> list[Span]:
    """The API-sized windows covering ``spans``: each request ``provider.range_requests`` makes for them,
    clipped to its span; consecutive windows the API would be asked with the same request (Alpha
    Vantage's ``month=``) are merged into one. Raises ConfigError if the provider has no history."""
    out: list[tuple[Span, tuple]] = []
    for lo, hi in spans:
        for req in provider.range_requests(symbol, interval, lo, hi):
            w = req.window or (lo, hi)
            a, b = max(_utc(w[0]), lo), min(_utc(w[1]), hi)
            if a >= b:
                continue
            same = (req.url, tuple(sorted(req.params.items())))  # compared in memory only (it may hold the key)
            if out and out[-1][1] == same:
                (pa, pb), _ = out[-1]
                out[-1] = ((pa, max(pb, b)), same)
            elif not out or out[-1][0] != (a, b):
                out.append(((a, b), same))
    return [w for w, _ in out]


def cycle_groups(chunks: Sequence[Chunk], max_symbols: int = MAX_CYCLE_SYMBOLS) -> list[list[Chunk]]:
    """Chunks grouped by window (oldest window first), at most ``max_symbols`` per group: one cycle each."""
    by_window: dict[Span, list[Chunk]] = {}
    for ch in chunks:
        by_window.setdefault((ch.start, ch.end), []).append(ch)
    groups = []
    for window in sorted(by_window):
        same = by_window[window]
        groups.extend(same[i : i + max_symbols] for i in range(0, len(same), max_symbols))
    return groups


@dataclass(frozen=True, slots=True)
class Plan:
    """The chunks to run, and how many stored windows were already loaded (skipped)."""

    chunks: list[Chunk]
    already_loaded: int = 0


# -- progress ----------------------------------------------------------------------------------


class Progress(Protocol):
    """What a run tells its display. ``advance`` and ``rate_wait`` may be called from fetch threads."""

    def start(self, total_chunks: int) -> None: ...

    def advance(self, chunks: int, bars_loaded: int) -> None: ...

    def rate_wait(self, seconds: float) -> None: ...

    def quota_wait(self, until: datetime | None) -> None: ...

    def close(self) -> None: ...


def log_every(total_chunks: int) -> int:
    """Chunks between two progress lines off a terminal: about every 5 % (at least every chunk)."""
    return max(1, math.ceil(total_chunks / 20))


class _Tally:
    """What both displays count (thread-safe: fetch threads report rate-limit waits)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.total = self.done = self.bars = self.waits = 0
        self.wait_seconds = 0.0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def _count(self, chunks: int = 0, bars: int = 0, wait_seconds: float | None = None) -> None:
        with self._lock:
            self.done += chunks
            self.bars += bars
            if wait_seconds is not None:
                self.waits += 1
                self.wait_seconds += wait_seconds

    def _waits_text(self) -> str:
        return f"{self.waits} rate-limit waits ({human_seconds(self.wait_seconds)})"


class LogProgress(_Tally):
    """Off a terminal (systemd, CI): one INFO line per :func:`log_every` chunks, and at the end."""

    _every = _next = 1

    def start(self, total_chunks: int) -> None:
        self.total, self._every = total_chunks, log_every(total_chunks)
        self._next, self._t0 = self._every, time.monotonic()

    def advance(self, chunks: int, bars_loaded: int) -> None:
        self._count(chunks, bars_loaded)
        with self._lock:
            if self.done < self._next and self.done < self.total:
                return
            self._next = (self.done // self._every + 1) * self._every
        elapsed = time.monotonic() - self._t0
        eta = human_seconds(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        pct = 100 * self.done // self.total if self.total else 100
        log.info("%s: %d/%d chunks (%d%%), %s bars loaded, %s, %s elapsed, ETA %s", self.label, self.done, self.total, pct,
                 f"{self.bars:,}", self._waits_text(), human_seconds(elapsed), eta)  # fmt: skip

    def rate_wait(self, seconds: float) -> None:
        self._count(wait_seconds=seconds)

    def quota_wait(self, until: datetime | None) -> None:
        pass  # the run logs the wait itself

    def close(self) -> None:
        pass


class RichProgress(_Tally):
    """On a terminal: a rich progress bar on stderr (chunks done/total, bars loaded, rate-limit waits, ETA).

    While it shows, log lines on stderr are printed above it instead of through it.
    """

    def start(self, total_chunks: int) -> None:
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        original = sys.stderr
        self._bar = Bar(
            TextColumn(f"[bold]{self.label}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("chunks · {task.fields[bars]} bars loaded · {task.fields[waits]} ·"), TimeElapsedColumn(),
            TextColumn("· ETA"), TimeRemainingColumn(),
            console=Console(file=original), redirect_stderr=True, redirect_stdout=False,
        )  # fmt: skip
        self._task = self._bar.add_task(self.label, total=total_chunks, bars="0", waits=self._waits_text())
        self._bar.start()
        handlers = logging.getLogger().handlers
        self._handlers = [h for h in handlers if isinstance(h, logging.StreamHandler) and h.stream is original]
        for h in self._handlers:  # log lines go through rich's proxy, above the bar
            h.setStream(sys.stderr)
        self._original = original

    def advance(self, chunks: int, bars_loaded: int) -> None:
        self._count(chunks, bars_loaded)
        self._bar.update(self._task, advance=chunks, bars=f"{self.bars:,}")

    def rate_wait(self, seconds: float) -> None:
        self._count(wait_seconds=seconds)
        self._bar.update(self._task, waits=self._waits_text())

    def quota_wait(self, until: datetime | None) -> None:
        text = f"waiting for the daily quota until {until:%Y-%m-%d %H:%M} UTC" if until else self._waits_text()
        self._bar.update(self._task, waits=text)

    def close(self) -> None:
        if getattr(self, "_bar", None) is not None:
            for h in self._handlers:
                h.setStream(self._original)
            self._bar.stop()
            self._bar = None


def make_progress(*, interactive: bool, label: str = "backfill") -> Progress:
    """A rich bar when ``interactive`` (stderr is a terminal and logs are text), else log lines (also
    when rich is not installed: ``pip install -r requirements.txt`` brings it)."""
    if interactive:
        try:
            import rich.progress  # noqa: F401
        except ImportError:
            log.warning("no progress bar: rich is not installed; logging progress instead")
        else:
            return RichProgress(label)
    return LogProgress(label)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class HistoryResult:
    """What a run did (its :meth:`as_dict` is the JSON summary's body). Times UTC."""

    chunks_planned: int = 0
    chunks_already_loaded: int = 0
    chunks_done: int = 0
    chunks_no_data: int = 0
    chunks_failed: int = 0
    bars_fetched: int = 0
    bars_loaded: int = 0
    bars_rejected: int = 0
    cycles: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    quota_paused_until: datetime | None = None
    interrupted: bool = False
    error: str | None = None  # the run could not go on (database unreachable)
    failed_symbols: dict[str, str] = field(default_factory=dict)  # symbol -> its first error
    failures: list[dict] = field(default_factory=list)  # the first MAX_FAILURES_LISTED failed chunks
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float = 0.0

    @property
    def chunks_pending(self) -> int:
        return self.chunks_planned - self.chunks_done - self.chunks_no_data - self.chunks_failed

    def as_dict(self) -> dict:
        return {
            "chunks_planned": self.chunks_planned,
            "chunks_already_loaded": self.chunks_already_loaded,
            "chunks_done": self.chunks_done,
            "chunks_no_data": self.chunks_no_data,
            "chunks_failed": self.chunks_failed,
            "chunks_pending": self.chunks_pending,
            "bars_fetched": self.bars_fetched,
            "bars_loaded": self.bars_loaded,
            "bars_rejected": self.bars_rejected,
            "bars_per_second": round(self.bars_loaded / self.duration_seconds, 1) if self.duration_seconds else 0.0,
            "cycles": self.cycles,
            "rate_limit_waits": self.rate_limit_waits,
            "rate_limit_wait_seconds": round(self.rate_limit_wait_seconds, 3),
            "quota_paused_until": self.quota_paused_until.isoformat() if self.quota_paused_until else None,
            "interrupted": self.interrupted,
            "error": self.error,
            "failed_symbols": self.failed_symbols,
            "failures": self.failures,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_seconds": round(self.duration_seconds, 3),
        }


class _MeteredBudget:
    """The provider's :class:`~etl.ratelimit.RateBudget`, unchanged, telling ``on_wait`` of each wait it imposed."""

    def __init__(self, inner, on_wait: Callable[[float], None]) -> None:
        self._inner = inner
        self._on_wait = on_wait

    def acquire(self) -> None:
        t0 = time.monotonic()
        try:
            self._inner.acquire()
        finally:
            waited = time.monotonic() - t0
            if waited >= RATE_WAIT_MIN_SECONDS:
                self._on_wait(waited)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class _Loads:
    """A pipeline listener: marks a chunk done as soon as its symbol's bars commit (a crash then loses no
    finished chunk) and feeds the progress display."""

    def __init__(self, run: Backfill, job_name: str) -> None:
        self.run, self.job_name = run, job_name
        self.current: dict[str, Chunk] = {}
        self.counted: set[int] = set()

    def on_load(self, event: LoadEvent) -> None:
        chunk = self.current.get(event.symbol) if event.job_name == self.job_name else None
        if chunk is None or chunk.id in self.counted:
            return
        self.counted.add(chunk.id)
        self.run.progress.advance(1, event.rows_written)
        try:
            self.run.store.mark([(chunk.id, ChunkStatus.DONE, 0, event.rows_written, None)])
        except LoadError as exc:  # the cycle's end marks it again (or finds the database gone)
            log.warning("could not mark chunk %d done yet: %s", chunk.id, exc)

    def on_cycle(self, cycle: CycleResult) -> None:
        pass


@dataclass
class _RunState:
    """What one run keeps between its cycles."""

    res: HistoryResult
    loads: _Loads
    ok_symbols: set[str] = field(default_factory=set)  # symbols with a chunk done in this run
    dead: dict[str, str] = field(default_factory=dict)  # symbol -> the terminal error that stopped its fetches
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_wait(self, seconds: float) -> None:
        """A request waited ``seconds`` for the rate budget (called on fetch threads)."""
        with self.lock:
            self.res.rate_limit_waits += 1
            self.res.rate_limit_wait_seconds += seconds
        self.loads.run.progress.rate_wait(seconds)


class Backfill:
    """Plans and runs history chunks for one pipeline (its provider) into ``store`` (see the module docstring).

    - ``record_no_data(provider, symbol, interval, start_utc, end_utc)``: told of each window the
      provider said holds no data (the coverage ledger's ``no_data_ranges``); optional.
    - ``stop``: the process's shutdown event: no new cycle starts once it is set.
    - ``job_name``: the ``etl_runs.job_name`` of its cycles.
    """

    def __init__(
        self, pipeline: EtlPipeline, store: ChunkStore, *, clock: Clock, stop: threading.Event,
        progress: Progress | None = None, record_no_data: Callable[..., None] | None = None, job_name: str = "backfill",
        max_cycle_symbols: int = MAX_CYCLE_SYMBOLS, redact: Callable[[str], str] = lambda s: s,
    ) -> None:  # fmt: skip
        if max_cycle_symbols < 1:
            raise ConfigError(f"max_cycle_symbols must be >= 1, got {max_cycle_symbols}", name="max_cycle_symbols")
        self.pipeline = pipeline
        self.provider = pipeline.provider
        self.store = store
        self.clock = clock
        self.stop = stop
        self.progress = progress or LogProgress(job_name)
        self.record_no_data = record_no_data
        self.job_name = job_name
        self.max_cycle_symbols = max_cycle_symbols
        self.redact = redact

    # -- planning ----------------------------------------------------------------------------

    def plan(self, symbols: Sequence[str], interval: str, start: datetime, end: datetime, *, refetch: bool = False) -> Plan:
        """Chunks for UTC ``[start, end)`` of each symbol, minus the windows already loaded (unless ``refetch``)."""
        start, end = _utc(start), _utc(end)
        covered = {} if refetch else self.store.covered(self.provider.name, interval, symbols, start, end)
        windows = []
        for s in symbols:
            spans = subtract((start, end), covered.get(s, []))
            windows += [(s, lo, hi) for lo, hi in chunk_windows(self.provider, s, interval, spans)]
        chunks = self.store.replace_plan(self.provider.name, interval, [(s, start, end) for s in symbols], windows)
        return Plan(chunks, sum(len(v) for v in covered.values()))

    def plan_ranges(self, ranges: Sequence[tuple[str, datetime, datetime]], interval: str) -> Plan:
        """Chunks for exactly these (symbol, UTC start, end) ranges (the gaps a coverage check found)."""
        per_symbol: dict[str, list[Span]] = {}
        for s, lo, hi in ranges:
            per_symbol.setdefault(s, []).append((_utc(lo), _utc(hi)))
        windows = []
        for s, spans in per_symbol.items():
            windows += [(s, lo, hi) for lo, hi in chunk_windows(self.provider, s, interval, sorted(spans))]
        scope = [(s, lo, hi) for s, spans in per_symbol.items() for lo, hi in spans]
        return Plan(self.store.replace_plan(self.provider.name, interval, scope, windows))

    # -- running -----------------------------------------------------------------------------

    def run(self, plan: Plan, interval: str) -> HistoryResult:
        """Run the plan's chunks, oldest window first, until done or ``stop``. Never raises for a symbol's
        failure; a database that becomes unreachable ends the run with ``error`` set."""
        res = HistoryResult(chunks_planned=len(plan.chunks), chunks_already_loaded=plan.already_loaded,
                            started_at=self.clock.now())  # fmt: skip
        t0 = time.monotonic()
        queue = deque(cycle_groups(plan.chunks, self.max_cycle_symbols))
        st = _RunState(res, _Loads(self, self.job_name))
        if plan.chunks:
            self.progress.start(len(plan.chunks))
        try:
            with self._metered(st.on_wait), self._listening(st.loads):
                while queue and not self.stop.is_set():
                    group = queue.popleft()
                    skipped = [ch for ch in group if ch.symbol in st.dead]
                    if skipped:
                        self._settle_skipped(skipped, st)
                        group = [ch for ch in group if ch.symbol not in st.dead]
                    if not group or self._wait_for_quota(res, sum(len(g) for g in queue) + len(group)):
                        continue
                    st.loads.current = {ch.symbol: ch for ch in group}
                    cycle = self.pipeline.run_cycle([ch.symbol for ch in group], interval, job_name=self.job_name,
                                                    window=(group[0].start, group[0].end))  # fmt: skip
                    st.loads.current = {}
                    res.cycles += 1
                    if cycle.run_id is None and cycle.error:  # the ledger could not even start: the database is down
                        res.error = cycle.error
                        break
                    again = self._settle(group, cycle, st)
                    if again:
                        queue.appendleft(again)
        except LoadError as exc:  # the database went away: what is not marked stays pending for the next run
            res.error = self.redact(str(exc))
            log.error("%s stopped: %s", self.job_name, res.error)
        finally:
            self.progress.close()
            res.interrupted = self.stop.is_set() and res.chunks_pending > 0
            res.finished_at = self.clock.now()
            res.duration_seconds = time.monotonic() - t0
        return res

    def _settle(self, group: list[Chunk], cycle: CycleResult, st: _RunState) -> list[Chunk]:
        """Record each chunk's outcome; returns the chunks to run again once the daily quota resets."""
        res = st.res
        outcomes: dict[str, SymbolOutcome] = {o.symbol: o for o in cycle.outcomes}
        paused = self._quota_until() is not None
        marks, again, advanced = [], [], 0
        for ch in group:
            out = outcomes.get(ch.symbol)
            res.bars_fetched += out.rows_fetched if out else 0
            res.bars_rejected += out.rows_rejected if out else 0
            res.bars_loaded += out.rows_loaded if out else 0
            if out is None or out.interrupted:
                if out is None and paused and not self.stop.is_set():
                    again.append(ch)  # the cycle found the daily quota used up and fetched nothing
                continue  # a shutdown left it: pending for the next run
            if out.ok:
                st.ok_symbols.add(ch.symbol)
                for lo, hi in out.no_data:
                    self._no_data(ch, lo, hi)
                empty = bool(out.no_data) and out.rows_fetched == 0
                status = ChunkStatus.NO_DATA if empty else ChunkStatus.DONE
                marks.append((ch.id, status, out.rows_fetched, out.rows_loaded, None))
                res.chunks_no_data += empty
                res.chunks_done += not empty
            elif out.transient and paused:
                again.append(ch)  # the daily quota ran out under it: wait, then run it again
                continue
            else:
                marks.append((ch.id, ChunkStatus.FAILED, out.rows_fetched, 0, out.error))
                self._failed(ch, out.error or "failed", res)
                if not out.transient and ch.symbol not in st.ok_symbols:
                    st.dead[ch.symbol] = out.error or "failed"
            if ch.id not in st.loads.counted:
                st.loads.counted.add(ch.id)
                advanced += 1
        self.store.mark(marks)
        if advanced:
            self.progress.advance(advanced, 0)
        return again

    def _settle_skipped(self, chunks: list[Chunk], st: _RunState) -> None:
        marks = []
        for ch in chunks:
            error = f"not fetched: {ch.symbol} failed in this run: {st.dead[ch.symbol]}"
            marks.append((ch.id, ChunkStatus.FAILED, 0, 0, error))
            self._failed(ch, error, st.res)
        self.store.mark(marks)
        self.progress.advance(len(chunks), 0)

    def _failed(self, ch: Chunk, error: str, res: HistoryResult) -> None:
        res.chunks_failed += 1
        res.failed_symbols.setdefault(ch.symbol, error)
        if len(res.failures) < MAX_FAILURES_LISTED:
            res.failures.append({"symbol": ch.symbol, "window_start": ch.start.isoformat(), "window_end": ch.end.isoformat(),
                                 "error": error})  # fmt: skip

    def _no_data(self, ch: Chunk, lo: datetime, hi: datetime) -> None:
        if self.record_no_data is not None:
            self.record_no_data(self.provider.name, ch.symbol, ch.interval, _utc(lo), _utc(hi))

    # -- the daily quota ---------------------------------------------------------------------

    def _quota_until(self) -> datetime | None:
        """When the provider's used-up daily quota resets (next UTC midnight), or None if requests are left."""
        budget = self.provider.budget
        if budget is None or getattr(budget, "daily", None) is None:
            return None
        until = budget.exhausted_until()
        if until is None and budget.remaining_today() == 0:  # used up by another process (a running job)
            now = self.clock.now().astimezone(UTC)
            until = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        return until

    def _wait_for_quota(self, res: HistoryResult, pending: int) -> bool:
        """Wait out a used-up daily quota (True if ``stop`` ended the wait)."""
        until = self._quota_until()
        if until is None:
            return False
        res.quota_paused_until = until
        left = (until - self.clock.now()).total_seconds()
        log.warning("%s: daily quota used up (counted in api_quota): waiting %s, until %s, with %d chunk(s) pending; "
                    "Ctrl-C or SIGTERM stops cleanly and a rerun continues", self.provider.name, human_seconds(left),
                    until.isoformat(), pending)  # fmt: skip
        self.progress.quota_wait(until)
        while (left := (until - self.clock.now()).total_seconds()) > 0:
            if self.clock.sleep(min(left, QUOTA_SLEEP_SECONDS), self.stop):
                return True
        self.progress.quota_wait(None)
        log.info("%s: the daily quota has reset; going on", self.provider.name)
        return False

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _metered(self, on_wait: Callable[[float], None]) -> Iterator[None]:
        provider, budget = self.provider, self.provider.budget
        if budget is not None:
            provider.budget = _MeteredBudget(budget, on_wait)
        try:
            yield
        finally:
            provider.budget = budget

    @contextmanager
    def _listening(self, listener: _Loads) -> Iterator[None]:
        self.pipeline.listeners.append(listener)
        try:
            yield
        finally:
            self.pipeline.listeners.remove(listener)
