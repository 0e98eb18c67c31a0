"""The coverage heatmap (``--coverage-plot FILE.png``): series x session dates, colour = share complete.

One row per series (its symbol; ``symbol (provider interval)`` when the rows hold several
providers or intervals), one column per date from the first to the last session date of the
rows. A cell's colour is the share of its expected bars that are accounted for,
``(expected - missing) / expected`` (bars a provider said do not exist count as accounted for),
from red (none) through yellow to blue (all). Cells without a row or with nothing expected
(holidays, a series not checked that day) are left blank; weekend columns are left out when no
series has a row on them (an equity calendar), kept when some has (24/7). Drawn with matplotlib's
Agg backend (no display needed, nothing global switched), sized to stay readable with 50 series
x 250 dates.
"""

from __future__ import annotations

import textwrap
from datetime import date, timedelta
from pathlib import Path

from db.coverage import CoverageRow

__all__ = ["plot_coverage", "coverage_grid"]

_CMAP = "RdYlBu"  # red = missing, blue = complete; readable by most colour-blind users, unlike red/green
_MAX_Y_LABELS = 60  # more series than this: label every n-th
_MAX_X_LABELS = 24


def _columns(rows: list[CoverageRow]) -> list[date]:
    have = {r.session_date for r in rows}
    first, last = min(have), max(have)
    out, d = [], first
    while d <= last:
        if d in have or d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def coverage_grid(rows: list[CoverageRow]):
    """``(series labels, dates, grid)``: ``grid[i, j]`` is series i's share complete on date j, NaN when blank.

    Pure (no drawing), so the layout can be tested; ``rows`` must not be empty.
    """
    import numpy as np

    several = len({(r.provider, r.interval) for r in rows}) > 1

    def label(r: CoverageRow) -> str:
        return f"{r.symbol} ({r.provider} {r.interval})" if several else r.symbol

    series = sorted({label(r) for r in rows})
    columns = _columns(rows)
    y_of = {s: i for i, s in enumerate(series)}
    x_of = {d: i for i, d in enumerate(columns)}
    grid = np.full((len(series), len(columns)), np.nan)
    for r in rows:
        share = r.share_complete
        if share is not None:
            grid[y_of[label(r)], x_of[r.session_date]] = share
    return series, columns, grid


def plot_coverage(rows: list[CoverageRow], path: str | Path, *, title: str = "") -> Path:
    """Draw the heatmap of ``rows`` into the PNG ``path`` (parent folders created); returns the path.

    ``title`` heads the picture (default: provider, interval and date range); a second line gives
    the totals. With no rows, the picture says so.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        fig = Figure(figsize=(6, 2), dpi=100)
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, title + ("\n" if title else "") + "no coverage rows to draw", ha="center", va="center")
        fig.savefig(path, format="png")
        return path

    series, columns, grid = coverage_grid(rows)
    x_of = {d: i for i, d in enumerate(columns)}

    width = min(40.0, max(8.0, 2.5 + 0.05 * len(columns)))
    height = min(60.0, max(3.5, 1.8 + 0.2 * len(series)))
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = _colormap()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=Normalize(0.0, 1.0))  # fmt: skip

    y_step = max(1, -(-len(series) // _MAX_Y_LABELS))
    ax.set_yticks(range(0, len(series), y_step), [series[i] for i in range(0, len(series), y_step)], fontsize=8)
    ticks = _date_ticks(columns)
    ax.set_xticks([x_of[d] for d in ticks], [d.isoformat() if len(columns) <= 62 else d.strftime("%b %Y") for d in ticks],
                  rotation=45, ha="right", fontsize=8)  # fmt: skip
    ax.set_xlabel("session date (exchange's local date)")
    ax.set_ylabel("symbol")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    bar.set_label("share complete: (loaded + no data) / expected")
    bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])

    expected = sum(r.expected for r in rows)
    missing = sum(r.missing for r in rows)
    if not title:
        providers = ", ".join(sorted({f"{r.provider} {r.interval}" for r in rows}))
        title = f"Coverage of {providers}, {columns[0]} to {columns[-1]}"
    share = f"{100 * (expected - missing) / expected:.1f}%" if expected else "-"
    n_dates = len({r.session_date for r in rows})
    subtitle = (f"{len(series)} series x {n_dates} session dates: {expected - missing:,} of {expected:,} expected bars "
                f"accounted for ({share}), {missing:,} missing; blank = closed or not checked")  # fmt: skip
    columns_of_text = max(40, int(width * 100 / 6.5))  # characters of 10-point text that fit the figure's width
    ax.set_title("\n".join([*textwrap.wrap(title, columns_of_text), *textwrap.wrap(subtitle, columns_of_text)]), fontsize=10)
    fig.savefig(path, format="png", bbox_inches="tight")  # a narrow figure keeps its title and colour-bar label
    return path


def _colormap():
    from matplotlib import colormaps

    return colormaps[_CMAP].with_extremes(bad="white")


def _date_ticks(columns: list[date]) -> list[date]:
    """Every date when there are few, else the first column of each month (thinned to at most ``_MAX_X_LABELS``)."""
    if len(columns) <= 31:
        return columns
    if len(columns) <= 62:
        return columns[::7]
    firsts, seen = [], set()
    for d in columns:
        if (d.year, d.month) not in seen:
            seen.add((d.year, d.month))
            firsts.append(d)
    step = max(1, -(-len(firsts) // _MAX_X_LABELS))
    return firsts[::step]
