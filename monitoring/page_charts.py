"""Inline SVG charts of the status page: the verdict strip, plots over time, the defocus histogram.

No script and no external asset: each function returns one ``<svg>`` element with its axes,
labels and a ``<title>`` per mark (the browser's tooltip). Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence

from otf2d.monitoring.state import VerdictPoint

#: Colours of the verdict states (badge, strip, legend).
VERDICT_COLOURS = {
    "collect": "#16a34a",
    "marginal": "#d97706",
    "abandon": "#dc2626",
    "pending": "#71717a",
}
AXIS = "#a1a1aa"
GRID = "#2e2e33"
TEXT = "#d4d4d8"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (1, 2, 2.5, 5 × 10ⁿ steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def compact_number(value: float) -> str:
    """``1234`` → ``1.2k``, ``2500000`` → ``2.5M``; small numbers as they are."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def _svg_open(width: int, height: int, label: str, css_class: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
    )


def _runs(points: Sequence[VerdictPoint]) -> list[tuple[str, int, int, float]]:
    """``(state, from particles, to particles, last confidence)`` of each run of one verdict.

    A point's verdict covers the particles since the previous point (from 0 for the first): the
    verdict reached with them. The last run ends at the newest point, so it is the current verdict.
    """
    runs: list[tuple[str, int, int, float]] = []
    begin = 0
    for point in points:
        end = max(point.particles, begin)
        if runs and runs[-1][0] == point.state:
            runs[-1] = (point.state, runs[-1][1], end, point.confidence)
        else:
            runs.append((point.state, begin, end, point.confidence))
        begin = end
    return runs


def verdict_strip_svg(points: Sequence[VerdictPoint], width: int = 600) -> str:
    """The verdict over particles classified: coloured segments, state names, a particle axis, a legend.

    One segment per run of the same verdict (:func:`_runs`); the last one is the current verdict.
    """
    if not points:
        return ""
    strip_y, strip_h, axis_y = 4, 26, 36
    height = 84
    last = max(1, points[-1].particles)
    parts = [_svg_open(width, height, "verdict over particles classified", "verdict-strip")]
    for state, begin, end, confidence in _runs(points):
        x0, x1 = width * begin / last, width * end / last
        w = max(2.0, x1 - x0)
        colour = VERDICT_COLOURS.get(state, VERDICT_COLOURS["pending"])
        parts.append(
            f'<rect class="segment state-{_e(state)}" x="{x0:.1f}" y="{strip_y}" width="{w:.1f}" '
            f'height="{strip_h}" fill="{colour}"><title>{_e(state)} from {begin:,} to {end:,} particles '
            f"(confidence {confidence:.0%} at the end)</title></rect>"
        )
        if w >= 8 * len(state) + 8:
            parts.append(
                f'<text x="{x0 + w / 2:.1f}" y="{strip_y + 18}" fill="#fff" font-size="12" font-weight="600" '
                f'text-anchor="middle">{_e(state)}</text>'
            )
    parts.append(f'<line x1="0" y1="{axis_y}" x2="{width}" y2="{axis_y}" stroke="{AXIS}"/>')
    for tick in nice_ticks(0, last, 5):
        x = min(width - 1.0, width * tick / last)
        anchor = "start" if x < 12 else ("end" if x > width - 30 else "middle")
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="{AXIS}"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{axis_y + 18}" fill="{AXIS}" font-size="11" text-anchor="{anchor}">'
            f"{compact_number(tick)}</text>"
        )
    parts.append(
        f'<text x="{width}" y="{axis_y + 32}" fill="{AXIS}" font-size="11" text-anchor="end">'
        "particles classified</text>"
    )
    x = 0
    for state, colour in VERDICT_COLOURS.items():
        parts.append(f'<rect x="{x}" y="{axis_y + 23}" width="11" height="11" rx="2" fill="{colour}"/>')
        parts.append(f'<text x="{x + 15}" y="{axis_y + 33}" fill="{TEXT}" font-size="11">{state}</text>')
        x += 26 + 7 * len(state)
    parts.append("</svg>")
    return "".join(parts)


def _clock(t: float) -> str:
    return time.strftime("%H:%M", time.localtime(t))


def line_chart_svg(
    samples: Sequence[tuple[float, float]],
    *,
    label: str,
    colour: str,
    fmt: Callable[[float], str] = compact_number,
    y_min: float | None = 0.0,
    y_max: float | None = None,
    width: int = 290,
    height: int = 150,
    empty: str = "not known yet",
) -> str:
    """A line over time (x: unix seconds, shown as local clock time) with y ticks and a last-value dot."""
    left, right, top, bottom = 44, 8, 8, 20
    parts = [_svg_open(width, height, label, "plot")]
    pts = [(t, v) for t, v in samples if math.isfinite(t) and math.isfinite(v)]
    if not pts:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" fill="{AXIS}" font-size="12" text-anchor="middle">'
            f"{_e(empty)}</text></svg>"
        )
        return "".join(parts)
    t0, t1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1.0)
    values = [v for _, v in pts]
    lo = min(values) if y_min is None else min(y_min, min(values))
    hi = max(values) if y_max is None else max(y_max, max(values))
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + plot_w * (t - t0) / (t1 - t0), top + plot_h * (1 - (v - lo) / (hi - lo))

    for tick in nice_ticks(lo, hi, 3):
        _, y = xy(t0, tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" fill="{AXIS}" font-size="10" text-anchor="end">'
            f"{_e(fmt(tick))}</text>"
        )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    for t, anchor in ((t0, "start"), (t1, "end")):
        x, _ = xy(t, lo)
        parts.append(
            f'<text x="{x:.1f}" y="{height - 5}" fill="{AXIS}" font-size="10" text-anchor="{anchor}">{_clock(t)}</text>'
        )
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in pts))
    parts.append(
        f'<polyline class="series" data-points="{len(pts)}" points="{coords}" fill="none" stroke="{colour}" '
        'stroke-width="2" stroke-linejoin="round"/>'
    )
    x, y = xy(*pts[-1])
    parts.append(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>{_e(label)}: {_e(fmt(pts[-1][1]))} '
        f"at {_clock(pts[-1][0])}</title></circle></svg>"
    )
    return "".join(parts)


def histogram_svg(
    edges: Sequence[float], counts: Sequence[int], *, label: str, unit: str, width: int = 290, height: int = 120
) -> str:
    """Bars of ``counts`` between ``edges`` with the end values on the x axis."""
    if len(edges) != len(counts) + 1 or not counts or max(counts) <= 0:
        return ""
    left, bottom, top = 6, 18, 6
    plot_w, plot_h = width - 2 * left, height - bottom - top
    bar_w = plot_w / len(counts)
    peak = max(counts)
    parts = [_svg_open(width, height, label, "histogram")]
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        parts.append(
            f'<rect class="bar" x="{left + i * bar_w + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}" fill="#3b82f6"><title>{edges[i]:.2f}–{edges[i + 1]:.2f} {_e(unit)}: {n:,}</title></rect>'
        )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    for value, x, anchor in ((edges[0], left, "start"), (edges[-1], width - left, "end")):
        parts.append(
            f'<text x="{x}" y="{height - 4}" fill="{AXIS}" font-size="10" text-anchor="{anchor}">'
            f"{value:.2f} {_e(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


__all__ = [
    "VERDICT_COLOURS",
    "compact_number",
    "histogram_svg",
    "line_chart_svg",
    "nice_ticks",
    "verdict_strip_svg",
]
