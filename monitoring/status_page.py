"""The HTML status page: per session the verdict and its reasons, rates, views and the gallery.

One self-contained HTML document (inline CSS and SVG, no script, no external asset) that reloads
itself every ``refresh_seconds`` with ``<meta http-equiv="refresh">``. Images are fetched from the
same server (``/sessions/<name>/gallery.png``, ``/sessions/<name>/classes/<N>.png``). Every piece
of text from a session (its name, reasons) is HTML-escaped.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from collections.abc import Mapping
from urllib.parse import quote

from otf2d.monitoring.state import MonitoringState, VerdictPoint
from otf2d.monitoring.verdict import format_duration

#: Colours of the verdict states (badge, timeline).
VERDICT_COLOURS = {
    "collect": "#16a34a",
    "marginal": "#d97706",
    "abandon": "#dc2626",
    "pending": "#71717a",
}
#: Most views drawn in the view chart (the rest are summed into one bar).
MAX_VIEW_BARS = 12

_CSS = """
:root { color-scheme: dark; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 28px; background: #111113; color: #e4e4e7;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header.top { display: flex; align-items: baseline; gap: 16px; margin-bottom: 14px; }
header.top h1 { font-size: 20px; margin: 0; font-weight: 600; }
header.top .meta { color: #a1a1aa; font-size: 13px; }
section.session { background: #18181b; border: 1px solid #27272a; border-radius: 10px; padding: 18px 20px;
  margin-bottom: 22px; }
.head { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; }
.head h2 { margin: 0; font-size: 22px; font-weight: 600; }
.badge { display: inline-block; padding: 4px 14px; border-radius: 999px; color: #fff; font-weight: 700;
  letter-spacing: 0.04em; text-transform: uppercase; font-size: 16px; }
.confidence { color: #d4d4d8; }
.age { color: #a1a1aa; font-size: 13px; margin-left: auto; }
ul.reasons { margin: 12px 0 12px 0; padding-left: 20px; font-size: 16px; }
ul.reasons li { margin: 2px 0; }
ul.reasons li.lead { font-weight: 600; }
.stats { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; margin: 8px 0 16px; }
.stat { background: #202024; border-radius: 8px; padding: 8px 12px; }
.stat .label { color: #a1a1aa; font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; }
.stat .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .sub { color: #a1a1aa; font-size: 12px; }
.row { display: flex; gap: 26px; flex-wrap: wrap; align-items: flex-start; }
.panel { min-width: 320px; }
.panel.left { flex: 1 1 520px; max-width: 640px; }
.panel.gallery { flex: 1 1 460px; }
.panel h3 { font-size: 13px; text-transform: uppercase; letter-spacing: 0.06em; color: #a1a1aa; margin: 14px 0 8px; }
.gallery img { max-width: 100%; height: auto; border-radius: 6px; display: block; }
.legend { color: #a1a1aa; font-size: 12px; margin-top: 4px; }
.legend .junk { color: #ef4444; font-weight: 600; }
table.junk { border-collapse: collapse; width: 100%; font-size: 13px; }
table.junk th, table.junk td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #27272a; }
table.junk th { color: #a1a1aa; font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
footer { color: #71717a; font-size: 12px; }
footer a, a { color: #93c5fd; }
.empty { color: #a1a1aa; font-size: 18px; padding: 30px 0; }
"""


_LEGEND = '<span class="junk">red border</span> = flagged junk; number under each class = particles.'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def session_path(session: str) -> str:
    """URL path prefix of a session: ``/sessions/<quoted name>``."""
    return f"/sessions/{quote(session, safe='')}"


def _rate_text(per_second: float | None) -> str:
    return "–" if per_second is None else f"{per_second * 3600:,.0f}"


def _stat(label: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="sub">{_e(sub)}</div>' if sub else ""
    return f'<div class="stat"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>{sub_html}</div>'


def _forecast_text(state: MonitoringState) -> tuple[str, str]:
    target = f"to {state.target_good_particles:,} good"
    if state.good_particles >= state.target_good_particles:
        return "reached", target
    if state.good_per_second is None:
        return "–", target + " (rate not known yet)"
    return format_duration(state.forecast_seconds), target


def view_chart_svg(state: MonitoringState, width: int = 600) -> str:
    """Inline SVG horizontal bars: good particles per distinct view, each with its classes."""
    counts = [int(c) for c in state.views.view_particles]
    classes = state.views.view_classes
    if not counts:
        return '<p class="legend">No good class yet.</p>'
    if len(counts) > MAX_VIEW_BARS:
        rest = sum(counts[MAX_VIEW_BARS - 1 :])
        rest_classes = [c for group in classes[MAX_VIEW_BARS - 1 :] for c in group]
        counts = [*counts[: MAX_VIEW_BARS - 1], rest]
        classes = [*classes[: MAX_VIEW_BARS - 1], rest_classes]
        labels = [f"view {i + 1}" for i in range(MAX_VIEW_BARS - 1)] + [f"{len(state.views.view_classes) - 11} more"]
    else:
        labels = [f"view {i + 1}" for i in range(len(counts))]
    total = sum(counts)
    row_h, thumb, label_w, value_w = 46, 42, 62, 190
    bar_x = label_w + thumb + 10
    bar_w = width - bar_x - value_w
    height = row_h * len(counts) + 4
    top = max(counts)
    views_status = next((c.status for c in state.verdict.criteria if c.name == "views"), "ok")
    warn = {"marginal": VERDICT_COLOURS["marginal"], "bad": VERDICT_COLOURS["abandon"]}.get(views_status)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="good particles per distinct view">'
    ]
    base = session_path(state.session)
    for i, (n, label, group) in enumerate(zip(counts, labels, classes, strict=True)):
        y = 2 + i * row_h
        mid = y + row_h / 2
        length = max(2.0, bar_w * n / top) if top > 0 else 2.0
        share = n / total if total else 0.0
        members = ", ".join(f"#{c}" for c in group[:4]) + (" …" if len(group) > 4 else "")
        colour = warn if (i == 0 and warn is not None) else "#3b82f6"
        parts.append(
            f'<g class="view-bar"><title>{_e(label)}: {n:,} good particles ({share:.0%}), classes {_e(members)}</title>'
        )
        parts.append(f'<text x="0" y="{mid + 5:.0f}" fill="#d4d4d8" font-size="13">{_e(label)}</text>')
        if group:
            parts.append(
                f'<image href="{base}/classes/{group[0]}.png" x="{label_w}" y="{y + 2}" '
                f'width="{thumb}" height="{thumb}" preserveAspectRatio="xMidYMin slice"/>'
            )
        parts.append(f'<rect x="{bar_x}" y="{mid - 9:.0f}" width="{length:.1f}" height="18" rx="3" fill="{colour}"/>')
        parts.append(
            f'<text x="{bar_x + length + 8:.1f}" y="{mid + 5:.0f}" fill="#e4e4e7" font-size="13">'
            f'{n:,} ({share:.0%})<tspan fill="#a1a1aa" font-size="11"> {_e(members)}</tspan></text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(points: tuple[VerdictPoint, ...], width: int = 600, height: int = 18) -> str:
    """Inline SVG strip of the verdict over particles classified, coloured by state."""
    if len(points) < 2:
        return ""
    first, last = points[0].particles, points[-1].particles
    span = max(1, last - first)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="verdict timeline">'
    ]
    for a, b in itertools.pairwise(points):
        x0 = width * (a.particles - first) / span
        x1 = width * (b.particles - first) / span
        parts.append(
            f'<rect x="{x0:.1f}" y="0" width="{max(1.0, x1 - x0):.1f}" height="{height}" '
            f'fill="{VERDICT_COLOURS.get(a.state, "#71717a")}"><title>{_e(a.state)} from {a.particles:,} particles'
            "</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _junk_table(state: MonitoringState) -> str:
    junk = state.quality.junk
    counts = state.class_counts
    order = [int(k) for k in sorted(range(len(junk)), key=lambda k: -int(counts[k])) if junk[k]]
    if not order:
        return '<p class="legend">No class is flagged junk.</p>'
    rows = []
    for k in order[:30]:
        reasons = "; ".join(state.quality.reasons(k)[:2]) or "–"
        score = float(state.junk_scores[k])
        rows.append(
            f'<tr><td>#{k + 1}</td><td class="num">{int(counts[k]):,}</td>'
            f'<td class="num">{score:.2f}</td><td>{_e(reasons)}</td></tr>'
        )
    more = f'<p class="legend">… and {len(order) - 30} more</p>' if len(order) > 30 else ""
    return (
        '<table class="junk"><tr><th>class</th><th>particles</th><th>score</th><th>why</th></tr>'
        + "".join(rows)
        + "</table>"
        + more
    )


def session_html(state: MonitoringState, now: float) -> str:
    """The ``<section>`` of one session."""
    verdict = state.verdict
    colour = VERDICT_COLOURS.get(verdict.state, "#71717a")
    base = session_path(state.session)
    version = f"{state.snapshot.iteration}-{int(state.computed_at * 1000)}"
    reasons = "".join(
        f'<li class="{"lead" if i == 0 else ""}">{_e(reason)}</li>' for i, reason in enumerate(verdict.reasons)
    )
    forecast, forecast_sub = _forecast_text(state)
    views = state.views
    junk_classes = int(state.quality.junk.sum())
    stats = "".join(
        [
            _stat("Particles", f"{state.particles_classified:,}", f"{len(state.snapshot.particles):,} in snapshot"),
            _stat("Good particles", f"{state.good_particles:,}", f"{1 - state.junk_fraction:.0%} of all"),
            _stat("Junk", f"{state.junk_fraction:.0%}", f"{junk_classes} of {state.snapshot.n_classes} classes"),
            _stat("Particles / h", _rate_text(state.classified_per_second)),
            _stat("Good / h", _rate_text(state.good_per_second)),
            _stat("Forecast", forecast, forecast_sub),
            _stat(
                "Distinct views",
                f"{views.n_views}",
                f"effective {views.effective_views:.1f}, top {views.largest_share:.0%}",
            ),
            _stat("Classes", f"{state.snapshot.n_classes}", f"effective {state.effective_classes:.1f}"),
        ]
    )
    age = state.snapshot_age(now)
    age_text = format_duration(age) if age >= 60 else f"{age:.0f} s"
    timeline = timeline_svg(state.timeline)
    timeline_html = f"<h3>Verdict over particles classified</h3>{timeline}" if timeline else ""
    return f"""
<section class="session" id="session-{_e(state.session)}">
  <div class="head">
    <h2>{_e(state.session or "(unnamed session)")}</h2>
    <span class="badge verdict-{_e(verdict.state)}" style="background:{colour}">{_e(verdict.state)}</span>
    <span class="confidence">confidence {verdict.confidence:.0%}</span>
    <span class="age">snapshot {state.snapshot.iteration}, {age_text} ago</span>
  </div>
  <div class="row">
    <div class="panel left">
      <ul class="reasons">{reasons}</ul>
      <div class="stats">{stats}</div>
      <h3>Good particles per distinct view</h3>{view_chart_svg(state)}
      {timeline_html}
    </div>
    <div class="panel gallery">
      <h3>Classes, largest first</h3>
      <img src="{base}/gallery.png?v={version}" alt="class averages of {_e(state.session)}">
      <div class="legend">{_LEGEND}</div>
      <h3>Junk classes</h3>{_junk_table(state)}
    </div>
  </div>
</section>"""


def render_status_page(
    states: Mapping[str, MonitoringState],
    *,
    refresh_seconds: float = 5.0,
    now: float | None = None,
    title: str = "otf2d status",
    metrics: bool = True,
) -> str:
    """The whole status page for every session (sorted by name)."""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    if states:
        body = "".join(session_html(states[name], now) for name in sorted(states))
    else:
        body = '<p class="empty">No session has a snapshot yet: waiting for the first classes.</p>'
    refresh = max(1, math.ceil(refresh_seconds))
    plural = "" if len(states) == 1 else "s"
    meta = f"{len(states)} session{plural} · updated {_e(when)} · refreshes every {refresh} s"
    links = '<a href="/status.json">status.json</a>' + (' · <a href="/metrics">metrics</a>' if metrics else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header class="top"><h1>{_e(title)}</h1>
<span class="meta">{meta}</span>
</header>
{body}
<footer>{links}</footer>
</body>
</html>
"""


__all__ = ["VERDICT_COLOURS", "render_status_page", "session_html", "session_path", "timeline_svg", "view_chart_svg"]
