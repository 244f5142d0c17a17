"""Charts drawn on the server as SVG: no chart library, no script, nothing to fetch.

Colours and strokes come from console.css through class names (the CSP allows no inline style);
every text is escaped. Each point carries a <title>, so hovering shows its value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 40
MAX_MARKERS = 400  # beyond this, points are a line only: thousands of <circle>s make a page sluggish


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


class _Frame:
    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int,
                 y_from_zero: bool) -> None:
        self.width, self.height = width, height
        y_lo = min([*ys, 0.0]) if y_from_zero else min(ys)
        self.xt = nice_ticks(min(xs), max(xs))
        self.yt = nice_ticks(y_lo, max(ys))
        self.x0, self.x1, self.y0, self.y1 = self.xt[0], self.xt[-1], self.yt[0], self.yt[-1]

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return LEFT + (v - self.x0) / span * (self.width - LEFT - RIGHT)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - BOTTOM - (v - self.y0) / span * (self.height - TOP - BOTTOM)

    def axes(self, x_label: str, y_label: str) -> list[str]:
        out = []
        for t in self.yt:
            y = self.y(t)
            out.append(f'<line class="grid" x1="{LEFT}" x2="{self.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in self.xt:
            x = self.x(t)
            out.append(f'<text class="tick" x="{x:.1f}" y="{self.height - BOTTOM + 16}" '
                       f'text-anchor="middle">{_fmt(t)}</text>')
        out.append(f'<line class="axis" x1="{LEFT}" x2="{self.width - RIGHT}" y1="{self.height - BOTTOM}" '
                   f'y2="{self.height - BOTTOM}"/>')
        out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{self.height - BOTTOM}"/>')
        out.append(f'<text class="label" x="{(LEFT + self.width - RIGHT) / 2:.0f}" y="{self.height - 6}" '
                   f'text-anchor="middle">{escape(x_label)}</text>')
        out.append(f'<text class="label" x="12" y="{(TOP + self.height - BOTTOM) / 2:.0f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {(TOP + self.height - BOTTOM) / 2:.0f})">{escape(y_label)}</text>')
        return out


def _svg(body: list[str], title: str, width: int, height: int) -> Markup:
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">')
    return Markup(head + "".join(body) + "</svg>")


def empty(message: str) -> Markup:
    return Markup(f'<p class="empty">{escape(message)}</p>')


def _legend(series: Sequence[Series], width: int) -> list[str]:
    out, x = [], LEFT + 8
    for i, s in enumerate(series):
        out.append(f'<rect class="swatch s{i % 6}" x="{x}" y="{TOP}" width="10" height="10"/>')
        out.append(f'<text class="legend" x="{x + 14}" y="{TOP + 9}">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return out if x < width else out[: 2 * 3]


def line_chart(series: Sequence[Series], x_label: str, y_label: str, title: str, width: int = WIDTH,
               height: int = HEIGHT, markers: bool = True, y_from_zero: bool = False) -> Markup:
    drawn = [s for s in series if s.points]
    if not drawn:
        return empty(f"{title}: nothing recorded yet")
    xs = [p[0] for s in drawn for p in s.points]
    ys = [p[1] for s in drawn for p in s.points]
    frame = _Frame(xs, ys, width, height, y_from_zero)
    body = frame.axes(x_label, y_label)
    for i, s in enumerate(series):
        if not s.points:
            continue
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in s.points)
        body.append(f'<polyline class="line s{i % 6}" points="{path}"/>')
        if markers and len(s.points) <= MAX_MARKERS:
            for x, y in s.points:
                body.append(f'<circle class="dot s{i % 6}" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3">'
                            f'<title>{escape(s.name)}: {_fmt(x)}, {_fmt(y)}</title></circle>')
    if len(drawn) > 1:
        body += _legend(series, width)
    return _svg(body, title, width, height)


def scatter(points: Sequence[tuple[float, float]], x_label: str, y_label: str, title: str,
            diagonal: bool = False, width: int = 360, height: int = HEIGHT) -> Markup:
    """One dot per point; with DIAGONAL, the line y = x (below it, the value went down)."""
    if not points:
        return empty(f"{title}: nothing recorded yet")
    lo = min(min(p) for p in points) if diagonal else None
    hi = max(max(p) for p in points) if diagonal else None
    xs = [p[0] for p in points] + ([lo, hi] if lo is not None and hi is not None else [])
    ys = [p[1] for p in points] + ([lo, hi] if lo is not None and hi is not None else [])
    frame = _Frame(xs, ys, width, height, y_from_zero=False)
    body = frame.axes(x_label, y_label)
    if lo is not None and hi is not None:
        body.append(f'<line class="diagonal" x1="{frame.x(lo):.1f}" y1="{frame.y(lo):.1f}" '
                    f'x2="{frame.x(hi):.1f}" y2="{frame.y(hi):.1f}"/>')
    for x, y in points[:MAX_MARKERS * 5]:
        body.append(f'<circle class="dot s0" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5">'
                    f'<title>{_fmt(x)} → {_fmt(y)}</title></circle>')
    return _svg(body, title, width, height)


def bars(items: Sequence[tuple[str, float]], title: str, width: int = WIDTH, bar_height: int = 22) -> Markup:
    """Horizontal bars, one per labelled value (counts by reason, say)."""
    if not items:
        return empty(f"{title}: none")
    top = max(v for _, v in items) or 1.0
    label_w = min(260, 8 * max(len(k) for k, _ in items) + 12)
    height = bar_height * len(items) + 8
    body = []
    for i, (label, value) in enumerate(items):
        y = 4 + i * bar_height
        w = max(1.0, (width - label_w - 70) * value / top)
        body.append(f'<text class="tick" x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        body.append(f'<rect class="bar s{i % 6}" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{bar_height - 6}">'
                    f'<title>{escape(label)}: {_fmt(value)}</title></rect>')
        body.append(f'<text class="tick" x="{label_w + w + 6:.1f}" y="{y + 15}">{_fmt(value)}</text>')
    return _svg(body, title, width, height)


def histogram(values: Sequence[float], x_label: str, title: str, bins: int = 20, width: int = 360,
              height: int = HEIGHT) -> Markup:
    if not values:
        return empty(f"{title}: nothing recorded yet")
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    frame = _Frame([lo, lo + span], [0.0, float(max(counts))], width, height, y_from_zero=True)
    body = frame.axes(x_label, "count")
    step = span / bins
    for i, c in enumerate(counts):
        if c:
            x0, x1 = frame.x(lo + i * step), frame.x(lo + (i + 1) * step)
            body.append(f'<rect class="bar s0" x="{x0:.1f}" y="{frame.y(c):.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                        f'height="{frame.y(0) - frame.y(c):.1f}"><title>{_fmt(lo + i * step)} to '
                        f'{_fmt(lo + (i + 1) * step)}: {c}</title></rect>')
    return _svg(body, title, width, height)
