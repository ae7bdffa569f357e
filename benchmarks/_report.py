"""Summary statistics, result tables and profiles shared by the benchmarks."""

from __future__ import annotations

import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))

    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(bot: float, baseline: float) -> float:
    return bot / baseline if baseline else math.nan


def machine() -> dict[str, Any]:
    """What the figures were measured on; benchmarks on shared hosts vary."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@dataclass(frozen=True)
class Row:
    """One line of a result table: a figure for the bot and for the baseline."""

    name: str
    bot: float
    baseline: float
    unit: str
    goal: str = ""
    #: Whether the goal is met; None when the row has no goal.
    met: bool | None = None

    @property
    def ratio(self) -> float:
        return ratio(self.bot, self.baseline)


def table(title: str, baseline_name: str, rows: Sequence[Row]) -> str:
    header = ("", "bot", baseline_name, "ratio", "goal")
    lines = [
        (
            row.name,
            f"{_fmt(row.bot)} {row.unit}",
            f"{_fmt(row.baseline)} {row.unit}",
            f"{row.ratio:.2f}x",
            _goal(row),
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in (header, *lines)) for i in range(5)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += [
        "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        for cells in lines
    ]

    return "\n".join(line.rstrip() for line in out)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _goal(row: Row) -> str:
    if row.met is None:
        return row.goal
    return f"{row.goal} ({'met' if row.met else 'MISSED'})"


def write_json(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, default=str) + "\n")


def profile(
    fn: Callable[[], object], *, focus: str = "/bot/", per: int = 1, limit: int = 15
) -> tuple[str, pstats.Stats]:
    """Run ``fn`` under cProfile; return where its time went, as text, and stats.

    Three lists: the functions of files whose path contains ``focus`` (the
    bot's own code) by cumulative time, with milliseconds per unit of work
    (``per`` units, e.g. deliveries, were done); then the top entries overall
    by cumulative and by own time.
    """
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stream.write(_focused(stats, focus, per, limit) + "\n\n")
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)

    return _trim(stream.getvalue()), stats


def own_time(stats: pstats.Stats, name_part: str) -> float:
    """Seconds spent inside functions whose name contains ``name_part``."""
    return sum(
        own
        for (_, _, name), (_, _, own, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if name_part in name
    )


def _focused(stats: pstats.Stats, focus: str, per: int, limit: int) -> str:
    entries = [
        (cumulative, calls, f"{Path(file).name}:{line}({name})")
        for (file, line, name), (_, calls, _, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
        if focus in file
    ]
    entries.sort(reverse=True)
    total = stats.total_tt  # type: ignore[attr-defined]
    lines = [f"{'cumulative':>10} {'share':>6} {'ms/unit':>8} {'calls':>7}  function"]
    lines += [
        f"{cumulative:>9.3f}s {cumulative / total:>6.0%} "
        f"{cumulative * 1000 / per:>8.3f} {calls:>7}  {where}"
        for cumulative, calls, where in entries[:limit]
    ]

    return "\n".join(lines)


def _trim(text: str) -> str:
    # pstats opens with the profiler's own preamble; keep from the table on.
    keep = [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
    ]
    return "\n".join(keep)
