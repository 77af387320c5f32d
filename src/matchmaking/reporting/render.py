"""The report as one self-contained HTML file: inline CSS, inline SVG charts, a few lines of
vanilla JavaScript to sort the fleet table. No server, no network, no external asset."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import date
from html import escape

from matchmaking.reporting.model import (
    LOGGED_METRICS,
    MOVES,
    PROMOTED,
    REFUSED,
    ROLLBACK,
    SIMULATOR_METRICS,
    CityReport,
    Event,
    FleetReport,
    display_name,
    window_of,
)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
EVENT_COLOURS = {PROMOTED: "#2ca02c", REFUSED: "#ff7f0e", ROLLBACK: "#d62728"}
DRIFT_DAYS_SHOWN = 14

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#222}
h1{margin:0 0 .3rem}h2{margin-top:2.5rem;border-top:1px solid #ccc;padding-top:1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.sortable th{cursor:pointer;user-select:none}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.look td:first-child{border-left:4px solid #d62728}
.alert{background:#fde0dd;font-weight:bold}.warn{background:#fff3cd}.muted{color:#777}
.note{background:#eef5ff;border:1px solid #cfe0ff;padding:.5rem .8rem;max-width:60rem}
.sim{color:#8c564b}svg{background:#fff;border:1px solid #eee;margin:.3rem .6rem .3rem 0}
.wide{overflow-x:auto;max-width:100%}
.legend span{display:inline-block;margin-right:1rem;font-size:.8rem}
"""

SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var desc = th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _colour(label: str, index: int) -> str:
    """A version keeps its colour in every chart and the legend (``v3`` -> the third colour)."""
    number = label.removeprefix("v")
    slot = int(number) - 1 if label.startswith("v") and number.isdigit() else index
    return PALETTE[slot % len(PALETTE)]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _td(text: str, sort: object = None, cls: str = "") -> str:
    attrs = f' data-sort="{_e(sort if sort is not None else text)}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{text}</td>"


def _table(headers: Iterable[str], rows: Iterable[str], cls: str = "", tid: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{tid}"' if tid else "")
    table = f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="wide">{table}</div>'


# -- charts -----------------------------------------------------------------------------------


def line_chart(
    title: str,
    series: dict[str, list[tuple[date, float]]],
    span: tuple[date, date],
    events: Sequence[Event] = (),
    hline: float | None = None,
    dashed: Iterable[str] = (),
    width: int = 620,
    height: int = 190,
) -> str:
    """An SVG line chart over data days, one line per series, events as vertical lines."""
    left, right, top, bottom = 48, 10, 22, 24
    values = [v for pts in series.values() for _, v in pts if math.isfinite(v)]
    if hline is not None:
        values.append(hline)
    if not values:
        return ""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 0.05
    lo, hi = lo - pad, hi + pad
    d0, d1 = span[0].toordinal(), max(span[1].toordinal(), span[0].toordinal() + 1)

    def x(day: date) -> float:
        return left + (day.toordinal() - d0) / (d1 - d0) * (width - left - right)

    def y(value: float) -> float:
        return top + (hi - value) / (hi - lo) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{_e(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for value in (lo + pad, hi - pad):
        parts.append(
            f'<text x="{left - 4}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:.3g}</text>"
        )
    for day, anchor in ((span[0], "start"), (span[1], "end")):
        parts.append(
            f'<text x="{x(day):.1f}" y="{height - 8}" font-size="10" text-anchor="{anchor}">'
            f"{day.isoformat()}</text>"
        )
    if hline is not None:
        parts.append(
            f'<line x1="{left}" y1="{y(hline):.1f}" x2="{width - right}" y2="{y(hline):.1f}" '
            'stroke="#d62728" stroke-dasharray="4 3"><title>alert level</title></line>'
        )
    for e in events:
        if e.day is None or e.kind not in EVENT_COLOURS:
            continue
        parts.append(
            f'<line x1="{x(e.day):.1f}" y1="{top}" x2="{x(e.day):.1f}" y2="{height - bottom}" '
            f'stroke="{EVENT_COLOURS[e.kind]}" stroke-width="2" opacity="0.6">'
            f"<title>{_e(f'{e.day} {e.kind} v{e.version}: {e.reason}')}</title></line>"
        )
    dashed = set(dashed)
    for i, (label, pts) in enumerate(series.items()):
        colour = "#888" if label in dashed else _colour(label, i)
        finite = [(d, v) for d, v in sorted(pts) if math.isfinite(v)]
        if not finite:
            continue
        style = ' stroke-dasharray="5 3"' if label in dashed else ""
        coords = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in finite)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.8"{style} '
            f'points="{coords}"><title>{_e(label)}</title></polyline>'
        )
        for d, v in finite:
            parts.append(
                f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                f"<title>{_e(f'{label} {d}: {v:.4f}')}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _legend(labels: Iterable[str], dashed: Iterable[str] = ()) -> str:
    dashed = set(dashed)
    spans = []
    for i, label in enumerate(labels):
        colour = "#888" if label in dashed else _colour(label, i)
        spans.append(f'<span style="color:{colour}">&#9632; {_e(label)}</span>')
    events = "".join(
        f'<span style="color:{c}">&#9474; {k}</span>' for k, c in EVENT_COLOURS.items()
    )
    return f'<div class="legend">{"".join(spans)}{events}</div>'


# -- the fleet page ---------------------------------------------------------------------------


def _age_days(report: FleetReport, c: CityReport) -> float | None:
    if c.production_since is None:
        return None
    return (report.generated_at - c.production_since).total_seconds() / 86400


def fleet_table(report: FleetReport) -> str:
    rows = []
    for c in report.cities:
        age = _age_days(report, c)
        ev = c.last_evaluation
        dr = c.last_drift
        h = c.last_health
        failed = sum(1 for r in c.unfinished if r.status == "FAILED")
        running = sum(1 for r in c.unfinished if r.status == "RUNNING")
        look = "; ".join(_e(a) for a in c.attention) or '<span class="muted">ok</span>'
        cells = [
            _td(look, len(c.attention), "alert" if c.attention else ""),
            _td(f'<a href="#city-{_e(c.city)}">{_e(display_name(c.city))}</a>', c.city),
            _td(f"v{_e(c.production)}" if c.production else "none", int(c.production or 0)),
            _td(f"{age:.1f} d" if age is not None else "-", age if age is not None else -1, "num"),
            _td(
                f"{ev.day} v{_e(ev.version)}: AUC {_num(ev.metrics.get('auc'))}, "
                f'<span class="sim">acceptance {_num(ev.metrics.get("acceptance"))}</span>'
                if ev
                else "none",
                ev.day.isoformat() if ev else "",
            ),
            _td(
                (
                    f"{len(dr.flagged)} on {dr.day}"
                    + (f": {_e(', '.join(dr.flagged))}" if dr.flagged else "")
                )
                if dr
                else '<span class="muted">not measured</span>',
                len(dr.flagged) if dr else -1,
                "alert" if dr and dr.flagged else "",
            ),
            _td(
                f"{h.day}: {h.rows} rows, {h.bad_share:.2%} quarantined, "
                f"{h.labelled_share:.1%} labelled"
                if h
                else "none",
                h.bad_share if h else -1,
                "warn" if h and h.bad_share > report.config.bad_share_alert else "",
            ),
            _td(f"{failed} failed, {running} running", failed * 1000 + running),
        ]
        rows.append(f'<tr class="{"look" if c.attention else ""}">{"".join(cells)}</tr>')
    headers = (
        "needs a look",
        "city",
        "Production",
        "Production age",
        "last evaluation",
        "drift flags (latest day)",
        "data health (latest window)",
        "unfinished runs",
    )
    return _table(headers, rows, "sortable", "fleet")


# -- a city -----------------------------------------------------------------------------------


def _span(report: FleetReport, c: CityReport) -> tuple[date, date] | None:
    days = [e.day for e in c.evaluations] + [h.day for h in c.health] + [d.day for d in c.drift]
    days += [e.day for e in c.events if e.day is not None]
    return (min(days), max(days)) if days else report.days


def _label_order(label: str) -> tuple[int, str]:
    number = label.removeprefix("v")
    return (int(number) if number.isdigit() else 10**9, label)


def _metric_series(c: CityReport, metric: str) -> dict[str, list[tuple[date, float]]]:
    series: dict[str, list[tuple[date, float]]] = {}
    for ev in c.evaluations:
        if metric in ev.metrics:
            series.setdefault(f"v{ev.version}", []).append((ev.day, ev.metrics[metric]))
    return series


def city_section(report: FleetReport, c: CityReport) -> str:
    out = [f'<section id="city-{_e(c.city)}"><h2>{_e(display_name(c.city))} ({_e(c.name)})</h2>']
    if c.attention:
        out.append("<p><b>Needs a look:</b> " + "; ".join(_e(a) for a in c.attention) + "</p>")
    prod = f"v{_e(c.production)}" if c.production else "no version"
    since = f" since {c.production_since:%Y-%m-%d %H:%M} UTC" if c.production_since else ""
    out.append(f"<p>Production: <b>{prod}</b>{since}; {len(c.versions)} version(s).</p>")
    span = _span(report, c)
    if span is not None:
        auc = _metric_series(c, "auc")
        acc = _metric_series(c, "acceptance")
        base = [
            (e.day, e.metrics["baseline.acceptance"])
            for e in c.evaluations
            if "baseline.acceptance" in e.metrics
        ]
        if base:
            acc["nearest ETA"] = base
        out.append(
            _legend(
                [*sorted(set(auc) | set(acc) - {"nearest ETA"}, key=_label_order), "nearest ETA"],
                ["nearest ETA"],
            )
        )
        out.append(line_chart("AUC on logged labels (offered rows)", auc, span, c.events))
        out.append(
            line_chart(
                "replay acceptance (simulator diagnostic)",
                acc,
                span,
                c.events,
                dashed=["nearest ETA"],
            )
        )
        scored = [d for d in c.drift if d.scored]
        if scored:
            worst = {"max PSI": [(d.day, max(d.psi.values())) for d in scored]}
            out.append(
                line_chart(
                    "drift: highest feature PSI per day",
                    worst,
                    span,
                    c.events,
                    report.drift.alert_psi,
                )
            )
    out.append("<h3>Production history</h3>")
    out.append(_holdings(c))
    out.append(_events(c))
    out.append("<h3>Versions</h3>" + _versions(c))
    out.append("<h3>Offline evaluation</h3>" + _evaluations(c))
    out.append("<h3>Data health (process runs)</h3>" + _health(c))
    out.append("<h3>Drift</h3>" + _drift(report, c))
    if c.unfinished:
        rows = [
            f"<tr><td>{_e(r.step or '-')}</td><td>{_e(r.status)}</td><td>{_e(r.run_id)}</td></tr>"
            for r in c.unfinished
        ]
        out.append("<h3>Runs that did not finish</h3>" + _table(("step", "status", "run"), rows))
    out.append("</section>")
    return "".join(out)


def _holdings(c: CityReport) -> str:
    if not c.holdings:
        return "<p>No version has held Production.</p>"
    items = [
        f"v{_e(h.version)} from {h.start or 'an unknown day'} ({_e(h.kind)})" for h in c.holdings
    ]
    return "<p>" + " &rarr; ".join(items) + "</p>"


def _events(c: CityReport) -> str:
    if not c.events:
        return "<p>No promotion, refusal or rollback recorded.</p>"
    rows = []
    for e in c.events:
        cls = {REFUSED: "warn", ROLLBACK: "alert"}.get(e.kind, "")
        rows.append(
            "<tr>"
            + "".join(
                [
                    _td(_e(e.day or "-")),
                    _td(f"{e.at:%Y-%m-%d %H:%M:%S}"),
                    _td(_e(e.kind), cls=cls),
                    _td(f"v{_e(e.version)}"),
                    _td(f"v{_e(e.previous)}" if e.previous else "-"),
                    _td(_e(e.reason)),
                    _td(_e(e.run_id or "-")),
                ]
            )
            + "</tr>"
        )
    headers = ("data day", "at (UTC)", "what", "version", "previous", "reason", "gate run")
    return _table(headers, rows, tid=f"events-{_e(c.city)}")


def _versions(c: CityReport) -> str:
    if not c.versions:
        return "<p>No registered version.</p>"
    rows = []
    for v in c.versions:
        t = v.tags
        rows.append(
            "<tr>"
            + "".join(
                [
                    _td(
                        f"v{_e(v.version)}" + (" (Production)" if v.version == c.production else "")
                    ),
                    _td(_e(t.get("objective", "-"))),
                    _td(_e(_window_text(t.get("features_uri")))),
                    _td(_e(t.get("valid_auc", "-")), cls="num"),
                    _td(_e(t.get("gate.result", "-"))),
                    _td(_e(t.get("gate.reason", "-"))),
                    _td(_e(t.get("production.promoted_at", "-"))),
                ]
            )
            + "</tr>"
        )
    headers = (
        "version",
        "objective",
        "training window",
        "valid AUC",
        "gate",
        "gate reason",
        "last moved to Production",
    )
    return _table(headers, rows, tid=f"versions-{_e(c.city)}")


def _window_text(uri: str | None) -> str:
    w = window_of(uri)
    return f"{w[0]}..{w[1]}" if w else "-"


def _evaluations(c: CityReport) -> str:
    if not c.evaluations:
        return "<p>No evaluation run.</p>"
    headers = (
        ["data day", "version", "holdout"]
        + list(LOGGED_METRICS)
        + [f'<span class="sim">{m}*</span>' for m in SIMULATOR_METRICS]
        + ["run"]
    )
    rows = []
    for ev in c.evaluations:
        cells = [_td(_e(ev.day)), _td(f"v{_e(ev.version)}"), _td(f"{ev.window[0]}..{ev.window[1]}")]
        cells += [_td(_num(ev.metrics.get(m)), ev.metrics.get(m), "num") for m in LOGGED_METRICS]
        cells += [
            _td(_num(ev.metrics.get(m)), ev.metrics.get(m), "num sim") for m in SIMULATOR_METRICS
        ]
        cells.append(_td(_e(ev.run_id)))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = (
        '<p class="muted">* simulator diagnostics: they use the synthetic world\'s hidden '
        "ground truth (true acceptance probabilities, replayed outcomes), which production does "
        "not have. AUC, log loss and calibration error use the logged labels of offered rows; "
        "dr is the off-policy (doubly robust) estimate of first-offer acceptance from the "
        "decision log alone (docs/evaluation.md).</p>"
    )
    return _table(headers, rows, tid=f"evaluations-{_e(c.city)}") + note


def _health(c: CityReport) -> str:
    if not c.health:
        return "<p>No process run.</p>"
    reasons = sorted({k for h in c.health for k in h.quarantine})
    headers = ["data day", "window", "rows", "labelled share", "quarantined", "bad share"]
    headers += [f"quarantined: {_e(r)}" for r in reasons]
    rows = []
    for h in c.health:
        cells = [
            _td(_e(h.day)),
            _td(f"{h.start}..{h.day}"),
            _td(str(h.rows), h.rows, "num"),
            _td(f"{h.labelled_share:.4f}", h.labelled_share, "num"),
            _td(str(h.quarantined), h.quarantined, "num"),
            _td(f"{h.bad_share:.4f}", h.bad_share, "num"),
        ]
        cells += [_td(str(h.quarantine.get(r, 0)), cls="num") for r in reasons]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = (
        '<p class="muted">Each row is the shortest process window ending that day (the daily '
        "holdout); labelled share = offered rows / feature rows (only offered candidates have a "
        "label).</p>"
    )
    return _table(headers, rows, tid=f"health-{_e(c.city)}") + note


def _drift(report: FleetReport, c: CityReport) -> str:
    cfg = report.drift
    if c.drift_reference is None:
        return "<p>Not measured: no Production version with a readable training window.</p>"
    intro = (
        f"<p>PSI of each feature, each day after the training window of Production "
        f"v{_e(c.production)} (<code>{_e(c.drift_reference)}</code>); alert at "
        f"{cfg.alert_psi}, {cfg.bins} quantile bins; not compared: "
        f"{_e(', '.join(cfg.exclude) or 'none')}. Last {DRIFT_DAYS_SHOWN} days shown.</p>"
    )
    days = c.drift[-DRIFT_DAYS_SHOWN:]
    if not days:
        return intro + "<p>No later day in the lake yet.</p>"
    headers = ["data day", "rows", *cfg.features]
    rows = []
    for d in days:
        cells = [_td(_e(d.day)), _td(str(d.rows), d.rows, "num")]
        for f in cfg.features:
            v = d.psi.get(f)
            cells.append(_td(_num(v, 3), v, "num alert" if f in d.flagged else "num"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return intro + _table(headers, rows, tid=f"drift-{_e(c.city)}")


# -- the page ---------------------------------------------------------------------------------


def render(report: FleetReport) -> str:
    """The whole report as one HTML document."""
    looks = sum(1 for c in report.cities if c.attention)
    span = f"{report.days[0]}..{report.days[1]}" if report.days else "no data day yet"
    calls = ", ".join(f"{k} {v}" for k, v in sorted(report.calls.items()))
    moves = sum(1 for c in report.cities for e in c.events if e.kind in MOVES)
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>matchmaking fleet report</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>matchmaking fleet report</h1>"
        f"<p>Generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC; data days {span}"
        + (f" (since {report.since})" if report.since else "")
        + f"; {len(report.cities)} cities, {looks} need a look; {moves} Production moves. "
        f"Registry and tracking calls: {_e(calls) or 'none'}.</p>"
        '<div class="note">Not in this report yet: online acceptance by version and arm from the '
        "decision log (its own issue). Off-policy estimates (dr) come from the logged data "
        "alone; the offline metrics below are marked where they use the simulator's ground "
        "truth.</div>"
    )
    fleet = '<h2 id="fleet-page">Fleet</h2><p>Click a header to sort.</p>' + fleet_table(report)
    sections = "".join(city_section(report, c) for c in report.cities)
    return f"{head}{fleet}{sections}<script>{SORT_JS}</script></body></html>\n"
