"""The HTML status page: per session the verdict and its reasons, plots over time, views and the classes.

One self-contained HTML document (inline CSS, SVG and a small inline script; no external asset).
The script fetches ``fragment.html`` every ``refresh_seconds`` and swaps in only the sessions
whose state changed (``data-version``), so the page never reloads as a whole; without
JavaScript it falls back to ``<meta http-equiv="refresh">``. Every URL is relative, so the page
works behind a reverse proxy under any path. Images come from the same server
(``sessions/<name>/averages/<N>.png`` for the tiles, ``classes/<N>.png``, ``gallery.png``).
Every piece of text from a session (its name, reasons) is HTML-escaped.

The confidence next to the badge says how *settled* the verdict is (it grows with the particles
classified and the distance from the thresholds), not how good the grid is; below
:data:`EARLY_CONFIDENCE` the badge is drawn outlined and the text says "early call".
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from otf2d.core.durations import format_in_words
from otf2d.monitoring.page_charts import (
    VERDICT_COLOURS,
    compact_number,
    histogram_svg,
    line_chart_svg,
    verdict_strip_svg,
)
from otf2d.monitoring.snapshots.gallery import class_order
from otf2d.monitoring.state import MonitoringState, VerdictPoint

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
.badge { display: inline-block; padding: 3px 14px; border-radius: 999px; color: #fff; font-weight: 700;
  letter-spacing: 0.04em; text-transform: uppercase; font-size: 16px; border: 2px solid transparent; }
.badge.early { background: transparent; border-style: dashed; }
.chip { font-size: 12px; padding: 2px 8px; border-radius: 6px; background: #27272a; color: #d4d4d8;
  text-transform: uppercase; letter-spacing: 0.05em; }
.chip.life-closed { background: #3f3f46; color: #a1a1aa; }
.chip.life-idle { background: #422006; color: #fbbf24; }
.hint { text-transform: none; letter-spacing: 0; font-size: 12px; color: #71717a; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px 14px; }
figure.chart { margin: 0; }
figure.chart figcaption { font-size: 12px; color: #a1a1aa; margin-bottom: 2px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
a.tile { display: block; text-decoration: none; color: #e4e4e7; background: #202024; border-radius: 6px;
  padding: 5px; border: 2px solid transparent; cursor: zoom-in; }
a.tile.junk { border-color: #ef4444; }
a.tile .frame { position: relative; display: block; }
a.tile img { width: 100%; aspect-ratio: 1; display: block; border-radius: 4px; background: #000; }
.scalebar { position: absolute; left: 8%; bottom: 8%; height: 4px; background: #fff; box-shadow: 0 0 2px #000; }
.scalelabel { position: absolute; left: 8%; bottom: calc(8% + 6px); font-size: 11px; color: #fff;
  text-shadow: 0 0 3px #000, 0 0 2px #000; }
a.tile .cap { display: flex; gap: 6px; font-size: 12px; margin-top: 4px; font-variant-numeric: tabular-nums; }
a.tile .cap .res { margin-left: auto; color: #c4b5fd; }
dialog#enlarge { background: #18181b; color: #e4e4e7; border: 1px solid #3f3f46; border-radius: 10px; padding: 14px; }
dialog#enlarge .frame { position: relative; display: block; }
dialog#enlarge img { width: min(70vh, 560px); height: auto; display: block; image-rendering: auto; }
dialog#enlarge::backdrop { background: rgba(0, 0, 0, 0.7); }
table.acq { border-collapse: collapse; font-size: 13px; margin-bottom: 6px; }
table.acq th { text-align: left; color: #a1a1aa; font-weight: 500; padding: 2px 12px 2px 0; }
body[data-live="stale"] #updated { color: #f87171; }
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


_LEGEND = (
    '<span class="junk">red border</span> = flagged junk; under each class: its number, particles and '
    "resolution; the white bar is the scale."
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def session_path(session: str) -> str:
    """Relative URL prefix of a session: ``sessions/<quoted name>`` (relative: works behind a proxy)."""
    return f"sessions/{quote(session, safe='')}"


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
    return format_in_words(state.forecast_seconds), target


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


#: The verdict strip (kept under its older name).
timeline_svg = verdict_strip_svg


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


#: Below this confidence a verdict is shown as an early call (outlined badge), not a settled one.
EARLY_CONFIDENCE = 0.6
#: Scale-bar lengths to choose from, Å.
SCALE_BAR_ANGSTROM = (10, 20, 25, 50, 100, 200, 250, 500, 1000)

_CONFIDENCE_HELP = (
    "How settled the verdict is, not how good the grid is: it grows with the particles classified "
    "and with how far the numbers are from the thresholds that decide the verdict."
)


def _confidence_html(state: MonitoringState) -> str:
    verdict = state.verdict
    if verdict.state == "pending":
        text = "waiting for enough particles"
    elif verdict.confidence < EARLY_CONFIDENCE:
        text = f"early call · confidence {verdict.confidence:.0%}"
    else:
        text = f"settled · confidence {verdict.confidence:.0%}"
    return f'<span class="confidence" title="{_e(_CONFIDENCE_HELP)}">{_e(text)}</span>'


def _badge_html(state: MonitoringState) -> str:
    verdict = state.verdict
    colour = VERDICT_COLOURS.get(verdict.state, VERDICT_COLOURS["pending"])
    early = verdict.state != "pending" and verdict.confidence < EARLY_CONFIDENCE
    style = f"border-color:{colour};color:{colour}" if early else f"background:{colour};border-color:{colour}"
    cls = "badge early" if early else "badge"
    return f'<span class="{cls} verdict-{_e(verdict.state)}" style="{style}">{_e(verdict.state)}</span>'


def _plots_html(state: MonitoringState) -> str:
    points = state.timeline

    def series(get: Callable[[VerdictPoint], float | int | None]) -> list[tuple[float, float]]:
        return [(p.unix_time, float(v)) for p in points if (v := get(p)) is not None]

    def percent(v: float) -> str:
        return f"{v:.0%}"

    def angstrom(v: float) -> str:
        return f"{v:.0f} Å"

    charts = [
        ("Particles classified", series(lambda p: p.particles), "#60a5fa", compact_number, None),
        ("Junk fraction", series(lambda p: p.junk_fraction), "#f87171", percent, 1.0),
        ("Good particles per hour", series(lambda p: p.good_per_hour), "#4ade80", compact_number, None),
        ("Best class resolution", series(lambda p: p.best_resolution_angstrom), "#c084fc", angstrom, None),
    ]
    cells = []
    for title, samples, colour, fmt, top in charts:
        svg = line_chart_svg(samples, label=title, colour=colour, fmt=fmt, y_max=top)
        cells.append(f'<figure class="chart"><figcaption>{_e(title)}</figcaption>{svg}</figure>')
    return f'<div class="charts">{"".join(cells)}</div>'


def _acquisition_html(state: MonitoringState) -> str:
    acq = state.acquisition
    if acq is None:
        return '<p class="legend">No micrograph or CTF summary yet.</p>'
    rows = [
        ("Micrographs", f"{acq.micrographs:,}"),
        ("Particles / micrograph", f"{acq.particles_per_micrograph:.1f}"),
    ]
    if acq.defocus_median_um is not None:
        rows.append(
            ("Defocus", f"{acq.defocus_median_um:.2f} µm (5–95 %: {acq.defocus_p5_um:.2f}–{acq.defocus_p95_um:.2f})")
        )
    if acq.astigmatism_median_angstrom is not None:
        rows.append(("Astigmatism (median)", f"{acq.astigmatism_median_angstrom:,.0f} Å"))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    hist = histogram_svg(acq.defocus_edges_um, acq.defocus_counts, label="defocus of the particles", unit="µm")
    return f'<table class="acq">{table}</table>{hist}'


def scale_bar_angstrom(box_angstrom: float) -> float:
    """A round scale-bar length near a quarter of the box."""
    return float(min(SCALE_BAR_ANGSTROM, key=lambda a: abs(math.log(a / max(box_angstrom / 4.0, 1e-3)))))


def _tiles_html(state: MonitoringState, version: str) -> str:
    snapshot = state.snapshot
    counts = state.class_counts
    total = max(1, int(counts.sum()))
    box = float(snapshot.averages.shape[-1] * snapshot.pixel_size_angstrom)
    bar = scale_bar_angstrom(box)
    bar_pct = 100.0 * bar / box if box > 0 else 0.0
    base = session_path(state.session)
    tiles = []
    for k in class_order(counts):
        k = int(k)
        res = float(snapshot.resolution_angstrom[k])
        res_text = f"{res:.0f} Å" if math.isfinite(res) and res > 0 else "– Å"
        junk = bool(state.quality.junk[k])
        score = float(state.junk_scores[k])
        caption = (
            f"class {k + 1}: {int(counts[k]):,} particles ({counts[k] / total:.0%}), resolution {res_text}, "
            f"junk score {score:.2f}{' (junk)' if junk else ''}"
        )
        tiles.append(
            f'<a class="tile{" junk" if junk else ""}" id="class-{_e(state.session)}-{k + 1}" '
            f'href="{base}/classes/{k + 1}.png" target="_blank" '
            f'data-large="{base}/averages/{k + 1}.png?v={version}" data-caption="{_e(caption)}" title="{_e(caption)}">'
            f'<span class="frame"><img src="{base}/averages/{k + 1}.png?v={version}" alt="class {k + 1}">'
            f'<span class="scalebar" style="width:{bar_pct:.1f}%"></span>'
            f'<span class="scalelabel">{bar:.0f} Å</span></span>'
            f'<span class="cap"><b>#{k + 1}</b> {int(counts[k]):,}<span class="res">{res_text}</span></span></a>'
        )
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _stats_html(state: MonitoringState) -> str:
    forecast, forecast_sub = _forecast_text(state)
    views = state.views
    junk_classes = int(state.quality.junk.sum())
    return "".join(
        [
            _stat("Particles", f"{state.particles_classified:,}", f"{len(state.snapshot.particles):,} in snapshot"),
            _stat("Good particles", f"{state.good_particles:,}", f"{1 - state.junk_fraction:.0%} of all"),
            _stat("Junk", f"{state.junk_fraction:.0%}", f"{junk_classes} of {state.snapshot.n_classes} classes"),
            _stat(
                "Particles / h",
                _rate_text(state.shown_classified_per_second),
                "shown after 10 s of data" if state.shown_classified_per_second is None else "",
            ),
            _stat("Good / h", _rate_text(state.shown_good_per_second)),
            _stat("Forecast", forecast, forecast_sub),
            _stat(
                "Distinct views",
                f"{views.n_views}",
                f"effective {views.effective_views:.1f}, top {views.largest_share:.0%}",
            ),
            _stat("Classes", f"{state.snapshot.n_classes}", f"effective {state.effective_classes:.1f}"),
        ]
    )


def state_version(state: MonitoringState) -> str:
    """Changes whenever the session's section changes (the page swaps only changed sections)."""
    return f"{state.snapshot.iteration}-{int(state.computed_at * 1000)}"


def session_html(state: MonitoringState, now: float, lifecycle: str | None = None) -> str:
    """The ``<section>`` of one session."""
    verdict = state.verdict
    base = session_path(state.session)
    version = state_version(state)
    reasons = "".join(
        f'<li class="{"lead" if i == 0 else ""}">{_e(reason)}</li>' for i, reason in enumerate(verdict.reasons)
    )
    age = state.snapshot_age(now)
    age_text = format_in_words(age) if age >= 60 else f"{age:.0f} s"
    chip = f'<span class="chip life-{_e(lifecycle)}">{_e(lifecycle)}</span>' if lifecycle else ""
    return f"""
<section class="session" id="session-{_e(state.session)}" data-version="{_e(version)}{_e(lifecycle or "")}">
  <div class="head">
    <h2>{_e(state.session or "(unnamed session)")}</h2>{chip}
    {_badge_html(state)}
    {_confidence_html(state)}
    <span class="age" data-snapshot-time="{state.snapshot_time:.3f}">snapshot {state.snapshot.iteration},
      <span class="ago">{age_text}</span> ago</span>
  </div>
  <div class="row">
    <div class="panel left">
      <ul class="reasons">{reasons}</ul>
      <div class="stats">{_stats_html(state)}</div>
      <h3>Verdict over particles classified</h3>{verdict_strip_svg(state.timeline)}
      <h3>Over time</h3>{_plots_html(state)}
      <h3>Good particles per distinct view</h3>{view_chart_svg(state)}
    </div>
    <div class="panel gallery">
      <h3>Classes, largest first <span class="hint">(click a class to enlarge)</span></h3>
      {_tiles_html(state, version)}
      <div class="legend">{_LEGEND} <a href="{base}/gallery.png?v={version}">whole gallery (PNG)</a></div>
      <h3>Micrographs and CTF</h3>{_acquisition_html(state)}
      <h3>Junk classes</h3>{_junk_table(state)}
    </div>
  </div>
</section>"""


def sessions_html(states: Mapping[str, MonitoringState], now: float, lifecycle: Mapping[str, str] | None = None) -> str:
    """The ``<div id="sessions">`` the page refreshes in place (also served alone as ``/fragment.html``)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    life = lifecycle or {}
    if states:
        body = "".join(session_html(states[name], now, life.get(name)) for name in sorted(states))
    else:
        body = '<p class="empty" id="empty">No session has a snapshot yet: waiting for the first classes.</p>'
    return f'<div id="sessions" data-updated="{_e(when)}" data-count="{len(states)}">{body}</div>'


_SCRIPT = """
(function () {
  var period = PERIOD_MS, dialog = document.getElementById('enlarge');
  function enlarge(tile) {
    if (!dialog || !dialog.showModal) return false;
    dialog.querySelector('img').src = tile.dataset.large;
    dialog.querySelector('.caption').textContent = tile.dataset.caption;
    var bar = tile.querySelector('.scalebar'), label = tile.querySelector('.scalelabel');
    dialog.querySelector('.scalebar').style.width = bar ? bar.style.width : '0';
    dialog.querySelector('.scalelabel').textContent = label ? label.textContent : '';
    dialog.showModal();
    return true;
  }
  document.addEventListener('click', function (event) {
    var tile = event.target.closest && event.target.closest('a.tile');
    if (tile && enlarge(tile)) event.preventDefault();
  });
  if (dialog) dialog.addEventListener('click', function () { dialog.close(); });
  var linked = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (linked && linked.classList.contains('tile')) enlarge(linked);  // #class-SESSION-N opens class N
  function tickAges() {
    var now = Date.now() / 1000;
    document.querySelectorAll('[data-snapshot-time]').forEach(function (el) {
      var age = Math.max(0, now - parseFloat(el.dataset.snapshotTime));
      var text = age < 60 ? Math.round(age) + ' s' : age < 3600 ? Math.round(age / 60) + ' min'
        : (age / 3600).toFixed(1) + ' h';
      el.querySelector('.ago').textContent = text;
    });
  }
  function update() {
    fetch('fragment.html', {cache: 'no-store'}).then(function (response) {
      if (!response.ok) throw new Error(response.status);
      return response.text();
    }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, 'text/html').getElementById('sessions');
      var box = document.getElementById('sessions');
      var old = {};
      Array.prototype.forEach.call(box.children, function (n) { old[n.id] = n; });
      var kids = Array.prototype.map.call(fresh.children, function (n) {
        var o = old[n.id];
        return o && o.dataset.version === n.dataset.version ? o : document.importNode(n, true);
      });
      box.replaceChildren.apply(box, kids);
      document.getElementById('updated').textContent = 'updated ' + fresh.dataset.updated;
      document.body.dataset.live = 'ok';
    }).catch(function () {
      document.body.dataset.live = 'stale';
      document.getElementById('updated').textContent += ' · engine not answering';
    }).then(function () { tickAges(); setTimeout(update, period); });
  }
  setTimeout(update, period);
})();
"""


def render_status_page(
    states: Mapping[str, MonitoringState],
    *,
    refresh_seconds: float = 5.0,
    now: float | None = None,
    title: str = "otf2d status",
    metrics: bool = True,
    lifecycle: Mapping[str, str] | None = None,
) -> str:
    """The whole status page for every session (sorted by name); it refreshes its sessions in place."""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    refresh = max(1, math.ceil(refresh_seconds))
    plural = "" if len(states) == 1 else "s"
    meta = (
        f'{len(states)} session{plural} · <span id="updated">updated {_e(when)}</span> · '
        f"updates every {refresh} s without reloading"
    )
    links = '<a href="status.json">status.json</a>' + (' · <a href="metrics">metrics</a>' if metrics else "")
    script = _SCRIPT.replace("PERIOD_MS", str(refresh * 1000))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header class="top"><h1>{_e(title)}</h1>
<span class="meta">{meta}</span>
</header>
{sessions_html(states, now, lifecycle)}
<dialog id="enlarge"><span class="frame"><img alt="class average, enlarged">
<span class="scalebar"></span><span class="scalelabel"></span></span><p class="caption"></p>
<p class="legend">click anywhere to close</p></dialog>
<footer>{links}</footer>
<script>{script}</script>
</body>
</html>
"""


__all__ = [
    "EARLY_CONFIDENCE",
    "VERDICT_COLOURS",
    "render_status_page",
    "scale_bar_angstrom",
    "session_html",
    "session_path",
    "sessions_html",
    "state_version",
    "timeline_svg",
    "view_chart_svg",
]
