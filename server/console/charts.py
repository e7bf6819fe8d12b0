"""Charts drawn on the server as inline SVG: a line chart, a grouped and a stacked bar chart over rounds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 40


@dataclass(frozen=True)
class Series:
    """One named, coloured run of values, one per round (``None`` where there is none)."""

    label: str
    values: Sequence[float | None]
    color: str


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round-numbered ticks covering ``low``..``high``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return ticks


class _Frame:
    """The plot area of one chart: scales, grid, axes and legend."""

    def __init__(self, rounds: Sequence[int], ticks: list[float]) -> None:
        self.rounds, self.ticks = list(rounds), ticks
        self.width, self.height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(self, index: int) -> float:
        """Centre of the ``index``-th round's slot."""
        return LEFT + (index + 0.5) * self.width / max(1, len(self.rounds))

    def y(self, value: float) -> float:
        low, high = self.ticks[0], self.ticks[-1]
        return TOP + self.height * (1 - (value - low) / (high - low))

    def slot(self) -> float:
        return self.width / max(1, len(self.rounds))

    def axes(self, title: str, y_format: Callable[[float], str], series: Sequence[Series],
             legend: bool = True) -> list[str]:
        parts = [f'<text class="chart-title" x="{LEFT}" y="20">{escape(title)}</text>']
        for tick in self.ticks:
            y = self.y(tick)
            parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(tick))}</text>')
        every = max(1, math.ceil(len(self.rounds) / 16))
        for index, number in enumerate(self.rounds):
            if index % every == 0:
                parts.append(f'<text class="tick" x="{self.x(index):.1f}" y="{HEIGHT - BOTTOM + 18}" '
                             f'text-anchor="middle">{number}</text>')
        parts.append(f'<text class="axis-label" x="{LEFT + self.width / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">round</text>')
        if not legend:
            return parts
        legend_x = WIDTH - RIGHT
        for item in reversed(series):
            legend_x -= 14 + 7 * len(item.label) + 16
            parts.append(f'<rect x="{legend_x}" y="10" width="12" height="12" rx="2" fill="{item.color}"/>'
                         f'<text class="legend" x="{legend_x + 16}" y="20">{escape(item.label)}</text>')
        return parts


def _svg(parts: list[str], title: str, height: int = HEIGHT) -> str:
    body = "".join(parts)
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def _range(series: Sequence[Series], floor: float | None, ceiling: float | None) -> list[float]:
    values = [v for item in series for v in item.values if v is not None]
    low = min(values, default=0.0) if floor is None else floor
    high = max(values, default=1.0) if ceiling is None else ceiling
    return nice_ticks(low, high)


def line_chart(title: str, rounds: Sequence[int], series: Sequence[Series], y_format: Callable[[float], str], *,
               floor: float | None = None, ceiling: float | None = None) -> str:
    """Each series as a line with a dot (and a hover title) per round."""
    frame = _Frame(rounds, _range(series, floor, ceiling))
    parts = frame.axes(title, y_format, series)
    for item in series:
        points = [(frame.x(i), frame.y(v), rounds[i], v) for i, v in enumerate(item.values) if v is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(f'<polyline fill="none" stroke="{item.color}" stroke-width="2.5" points="{path}"/>')
        for x, y, number, value in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{item.color}">'
                         f'<title>{escape(item.label)}, round {number}: {escape(y_format(value))}</title></circle>')
    return _svg(parts, title)


def bar_chart(title: str, rounds: Sequence[int], series: Sequence[Series], y_format: Callable[[float], str]) -> str:
    """Side-by-side bars per round, one per series, from zero."""
    frame = _Frame(rounds, _range(series, 0.0, None))
    parts = frame.axes(title, y_format, series)
    width = frame.slot() * 0.7 / max(1, len(series))
    for offset, item in enumerate(series):
        for index, value in enumerate(item.values):
            if value is None:
                continue
            x = frame.x(index) - frame.slot() * 0.35 + offset * width
            parts.append(_bar(frame, index, 0.0, value, item.label, y_format(value), item.color, x, width * 0.92))
    return _svg(parts, title)


def _bar(frame: _Frame, index: int, low: float, high: float, label: str, text: str, color: str,
         left: float, width: float) -> str:
    """One bar (or one block of a stack) from ``low`` to ``high`` in round ``index``'s slot, with its hover title."""
    top = frame.y(high)
    return (f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{frame.y(low) - top:.1f}" '
            f'rx="2" fill="{color}"><title>{escape(label)}, round {frame.rounds[index]}: {escape(text)}</title></rect>')


def stacked_chart(title: str, rounds: Sequence[int], series: Sequence[Series], y_format: Callable[[float], str]) -> str:
    """One bar per round, the series stacked in order from zero; the legend in rows under the axis."""
    totals = [sum(item.values[index] or 0.0 for item in series) for index in range(len(rounds))]
    frame = _Frame(rounds, nice_ticks(0.0, max(totals, default=1.0)))
    parts = frame.axes(title, y_format, series, legend=False)
    for index in range(len(rounds)):
        low = 0.0
        for item in series:
            value = item.values[index]
            if value:
                parts.append(_bar(frame, index, low, low + value, item.label, y_format(value), item.color,
                                  frame.x(index) - frame.slot() * 0.3, frame.slot() * 0.6))
                low += value
    x, y = LEFT, HEIGHT + 4
    for item in series:
        step = 14 + 7 * len(item.label) + 16
        if x + step > WIDTH - RIGHT:
            x, y = LEFT, y + 18
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" rx="2" fill="{item.color}"/>'
                     f'<text class="legend" x="{x + 16}" y="{y + 10}">{escape(item.label)}</text>')
        x += step
    return _svg(parts, title, height=y + 20)
