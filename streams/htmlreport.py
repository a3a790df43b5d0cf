"""The HTML report of ``voltguard evaluate``: one self-contained file, plots as inline SVG.

Pure string building from :func:`streams.commands.evaluate.evaluation_summary`'s dict, with
no plotting dependency: the plots are few and simple (step curves, strip plots, bars), and
hand-made SVG keeps the file small, text-diffable and free of scripts or external assets.

Examples
--------
>>> html = render_html({"sessions": 0, "labels": 0, "honest_labels": 0, "detections": 0,
...     "kinds": {}, "clean_sessions_flagged": 0, "clean_flag_rate": 0.0,
...     "false_positive_kinds": {}, "honest_flagged": {}, "scores_present": False,
...     "curves": []})
>>> html.startswith("<!DOCTYPE html>"), "Per-kind results" in html
(True, True)
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Final

__all__ = ["render_html"]

_PALETTE: Final = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
)  # fmt: skip
_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.low{color:#b00020;font-weight:600}.muted{color:#777}.grid{display:flex;flex-wrap:wrap;gap:16px}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delay(seconds: float | None) -> str:
    from streams.commands.evaluate import fmt_delay

    return fmt_delay(seconds)


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="n"' if i >= numeric_from else ""
            cells.append(f"<td{cls}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _pr_svg(curve: dict[str, Any], colour: str) -> str:
    """One precision-recall step curve (recall on x, precision on y), 0..1 both."""
    w, h, pad = 350, 260, 36
    iw, ih = w - 2 * pad, h - 2 * pad

    def xy(r: float, p: float) -> str:
        return f"{pad + r * iw:.1f},{pad + (1 - p) * ih:.1f}"

    pts = [xy(0.0, curve["precision"][0] if curve["precision"] else 1.0)]
    for p, r in zip(curve["precision"], curve["recall"], strict=True):
        prev_y = pts[-1].split(",")[1]
        pts.append(f"{pad + r * iw:.1f},{prev_y}")
        pts.append(xy(r, p))
    grid = "".join(
        f'<line x1="{pad}" x2="{pad + iw}" y1="{pad + (1 - t) * ih:.1f}" y2="{pad + (1 - t) * ih:.1f}" '
        f'stroke="#eee"/><text x="{pad - 4}" y="{pad + (1 - t) * ih + 4:.1f}" text-anchor="end">{t:g}</text>'
        f'<text x="{pad + t * iw:.1f}" y="{pad + ih + 14}" text-anchor="middle">{t:g}</text>'
        for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    marker = ""
    if (
        curve.get("precision_at_threshold") is not None
        and curve.get("recall_at_threshold") is not None
    ):
        cx, cy = xy(curve["recall_at_threshold"], curve["precision_at_threshold"]).split(",")
        left = curve["recall_at_threshold"] > 0.6  # keep the label inside the plot
        marker = (
            f'<circle cx="{cx}" cy="{cy}" r="5" fill="none" stroke="#000" stroke-width="1.5"/>'
            f'<text x="{float(cx) + (-7 if left else 7):.1f}" y="{float(cy) + 16:.1f}" '
            f'text-anchor="{"end" if left else "start"}">deployed threshold</text>'
        )
    title = f"{curve['kind']} · {curve['scorer']}"
    ap = _num(curve.get("average_precision"))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="precision-recall curve {escape(title)}">'
        f'<text x="{pad}" y="16" style="font-weight:600">{escape(title)}</text>'
        f'<text x="{pad}" y="29" class="muted">PR-AUC {ap}, {curve["positives"]} positive, '
        f"{curve['negatives']} negative</text>{grid}"
        f'<rect x="{pad}" y="{pad}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>'
        f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="2"/>'
        f'{marker}<text x="{pad + iw / 2}" y="{h - 4}" text-anchor="middle">recall</text>'
        f'<text x="10" y="{pad + ih / 2}" transform="rotate(-90 10 {pad + ih / 2})" '
        f'text-anchor="middle">precision</text></svg>'
    )


def _delay_svg(kinds: dict[str, dict[str, Any]]) -> str:
    """Detection delay per kind: every delay as a dot on a log time axis, median and p95 ticks."""
    rows = [(k, v) for k, v in kinds.items() if v.get("delays_s")]
    if not rows:
        return '<p class="muted">No detection matched a label, so there are no delays.</p>'
    lo_s, hi_s = 1.0, max(max(v["delays_s"]) for _, v in rows)
    hi_s = max(hi_s, 3600.0)
    label_w, pad, row_h = 230, 20, 20
    iw = 800
    w, h = label_w + iw + pad, pad * 2 + row_h * len(rows) + 20
    span = math.log10(hi_s) - math.log10(lo_s)

    def x(seconds: float) -> float:
        return label_w + (math.log10(max(seconds, lo_s)) - math.log10(lo_s)) / span * iw

    ticks = [(1, "1s"), (60, "1m"), (600, "10m"), (3600, "1h"), (21_600, "6h"), (86_400, "1d"),
             (604_800, "1w"), (2_592_000, "30d"), (7_776_000, "90d")]  # fmt: skip
    parts = []
    for t, name in ticks:
        if t <= hi_s * 1.01:
            parts.append(
                f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{pad}" y2="{h - 20}" stroke="#eee"/>'
                f'<text x="{x(t):.1f}" y="{h - 6}" text-anchor="middle">{name}</text>'
            )
    for i, (kind, v) in enumerate(rows):
        y = pad + row_h * i + row_h / 2
        colour = _PALETTE[i % len(_PALETTE)]
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(kind)}</text>'
        )
        for d in v["delays_s"]:
            parts.append(
                f'<circle cx="{x(d):.1f}" cy="{y:.1f}" r="2.5" fill="{colour}" fill-opacity="0.45"/>'
            )
        for stat, width in (("delay_median_s", 2.5), ("delay_p95_s", 1.2)):
            if v.get(stat) is not None:
                xs = x(v[stat])
                parts.append(
                    f'<line x1="{xs:.1f}" x2="{xs:.1f}" y1="{y - 7:.1f}" y2="{y + 7:.1f}" '
                    f'stroke="#000" stroke-width="{width}"/>'
                )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="detection delay per kind">{"".join(parts)}</svg>'
    )


def _bars_svg(counts: dict[str, int]) -> str:
    """Horizontal bars of false positives per kind."""
    if not counts:
        return '<p class="muted">No detection on a clean session.</p>'
    label_w, iw, row_h, pad = 230, 500, 22, 10
    top = max(counts.values())
    w, h = label_w + iw + 60, pad * 2 + row_h * len(counts)
    parts = []
    for i, (kind, n) in enumerate(counts.items()):
        y = pad + row_h * i
        bw = iw * n / top
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(kind)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bw:.1f}" height="{row_h - 6}" fill="#d62728"/>'
            f'<text x="{label_w + bw + 6:.1f}" y="{y + 15}">{n}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="false positives per kind">{"".join(parts)}</svg>'
    )


def _rate_cell(value: float | None, target: float) -> str:
    text = _num(value)
    return f'<span class="low">{text}</span>' if value is not None and value < target else text


def render_html(summary: dict[str, Any], *, title: str = "voltguard evaluation") -> str:
    """The report as one HTML document (no scripts, no external files)."""
    s = summary
    overview = _table(
        ["measure", "value"],
        [
            ["run", escape(str(s.get("run_dir", "-")))],
            ["sessions", str(s["sessions"])],
            ["fault labels", str(s["labels"])],
            ["honest oddities labelled", str(s["honest_labels"])],
            ["detections (alerts and mismatches)", str(s["detections"])],
            [
                "clean sessions flagged (false-positive rate)",
                f"{s['clean_sessions_flagged']} ({s['clean_flag_rate']:.2%})",
            ],
        ],
    )
    kind_rows = [
        [
            escape(kind),
            str(v["labels"]),
            str(v["detections"]),
            _rate_cell(v["recall"], 0.98),
            _rate_cell(v["precision"], 0.95),
            _delay(v["delay_median_s"]),
            _delay(v["delay_p95_s"]),
        ]
        for kind, v in s["kinds"].items()
    ]
    kinds_table = _table(
        ["kind", "labels", "detections", "recall", "precision", "delay p50", "delay p95"],
        kind_rows,
    )
    curves = s["curves"]
    if curves:
        curve_table = _table(
            ["kind", "scorer", "positives", "negatives", "PR-AUC", "precision @ thr", "recall @ thr"],
            [
                [escape(c["kind"]), escape(c["scorer"]), str(c["positives"]), str(c["negatives"]),
                 _num(c["average_precision"]), _num(c["precision_at_threshold"]),
                 _num(c["recall_at_threshold"])]
                for c in curves
            ],
            numeric_from=2,
        )  # fmt: skip
        plots = "".join(
            _pr_svg(c, _PALETTE[i % len(_PALETTE)]) for i, c in enumerate(curves) if c["precision"]
        )
        pr = f'{curve_table}<div class="grid">{plots}</div>'
    else:
        pr = '<p class="muted">No curve: no scored sessions and no alert kind whose score varies.</p>'
    if not s["scores_present"]:
        pr = (
            '<p class="muted">No scores.jsonl in the run directory: the anomaly kinds have no '
            "PR-AUC of the online score yet (replay writes it when the online detectors run). "
            "Curves below are over alert scores.</p>" + pr
        )
    honest = _table(
        ["honest oddity", "labels", "sessions flagged"],
        [[escape(k), str(v["labels"]), str(v["flagged"])] for k, v in s["honest_flagged"].items()],
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        '<p class="muted">Detections of a replay against the simulator\'s ground-truth labels; '
        "delays are in event time, from the labelled fault to the earliest matching detection. "
        "Red: recall below 0.98 or precision below 0.95.</p>"
        f'<h2 id="summary">Summary</h2>{overview}'
        f'<h2 id="kinds">Per-kind results</h2>{kinds_table}'
        f'<h2 id="pr-curves">Precision-recall curves</h2>{pr}'
        f'<h2 id="delays">Detection delay per kind</h2><p class="muted">Each dot is one found '
        "label (log time axis); the thick tick is the median, the thin one the 95th percentile.</p>"
        f"{_delay_svg(s['kinds'])}"
        f'<h2 id="false-positives">Top false-positive kinds</h2><p class="muted">Detections whose '
        "sessions no label mentions.</p>"
        f"{_bars_svg(s['false_positive_kinds'])}"
        f'<h2 id="honest">Honest oddities</h2>{honest}'
        "</body></html>"
    )
