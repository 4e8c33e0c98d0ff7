"""``report/index.html``: the report as one self-contained page that opens from disk.

No server and no network: plotly.js comes inlined from the plotly Python package
(``plotly.offline.get_plotlyjs()``), the data as JSON in the page, and the little JavaScript of
our own (table sorting, the curves' x-axis switch) is written out here. The charts are plotly
figure dicts built directly, so the page's structure is all in this file.

``index.html#sort=<column>`` (or ``#sort=<column>:desc``) opens with the table sorted, as a click
on the header does, and ``#x=tokens`` (``time``, ``step``) with the curves against that axis, as
its button does (``#sort=TPS:desc&x=tokens`` both); the browser test checks both that way.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from flowhn.report import seeds
from flowhn.report.runs import NOT_COMPLETED, Run, differing_config, order_key
from flowhn.report.table import fmt
from flowhn.sweeping import PAPER_TASKS

# Distinct colours (Okabe–Ito, then Tableau) so a run keeps its colour in every chart.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#76B7B2", "#EDC948", "#B07AA1", "#FF9DA7"]  # fmt: skip
STATUS_COLOURS = {"completed": "#2e7d32", "running": "#1565c0", "stopped": "#ef6c00", "failed": "#c62828",
                  "missing": "#6d6d6d"}  # fmt: skip
# x axes of the curves: column of Run.metrics, axis title.
X_AXES = {"step": "optimizer step", "tokens": "tokens trained",
          "time_s": "training time (s, measured step times; validation and compilation excluded)"}  # fmt: skip
# Curve panels: metric, title, factor.
PANELS = [("perf/tps", "TPS (tokens/s)", 1.0), ("perf/mfu", "MFU (%)", 100.0),
          ("train/loss", "training loss", 1.0), ("val/loss", "validation loss", 1.0)]  # fmt: skip


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null (plotly leaves a gap), numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json(value: Any) -> str:
    # "</" would end the <script> element early.
    return json.dumps(_clean(value), separators=(",", ":")).replace("</", "<\\/")


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def run_name(run: Run, duplicates: set[str]) -> str:
    """Legend name: the table's row label, the job's name where labels repeat, and its status."""
    name = f"{run.label} [{run.scale}]"
    if name in duplicates:
        name = f"{name} {run.name}"
    return name if run.completed else f"{name} ({run.status})"


def _names(runs: list[Run]) -> dict[str, str]:
    labels = [f"{r.label} [{r.scale}]" for r in runs]
    duplicates = {x for x in labels if labels.count(x) > 1}
    return {r.name: run_name(r, duplicates) for r in runs}


# -- figures ------------------------------------------------------------------------------


def curves_figure(runs: list[Run], names: dict[str, str], colours: dict[str, str]) -> dict:
    """TPS, MFU, training and validation loss in a 2×2 grid, one legend entry per run that
    toggles the run in all four, and buttons that switch every x axis between step, tokens
    and training time."""
    traces, x_variants = [], {k: [] for k in X_AXES}
    domains = [([0, 0.46], [0.62, 1]), ([0.54, 1], [0.62, 1]), ([0, 0.46], [0, 0.38]), ([0.54, 1], [0, 0.38])]
    layout: dict[str, Any] = {"height": 760, "margin": {"t": 70, "l": 60, "r": 20, "b": 50},
                              "legend": {"orientation": "h", "y": -0.1}, "annotations": [],
                              "hovermode": "closest"}  # fmt: skip
    for i, ((metric, title, factor), (xd, yd)) in enumerate(zip(PANELS, domains), start=1):
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {"domain": xd, "anchor": f"y{suffix}", "title": {"text": X_AXES["step"]},
                                    "zeroline": False}  # fmt: skip
        layout[f"yaxis{suffix}"] = {"domain": yd, "anchor": f"x{suffix}", "title": {"text": title}}
        layout["annotations"].append({"text": f"<b>{title}</b>", "xref": "paper", "yref": "paper", "showarrow": False,
                                      "x": sum(xd) / 2, "y": yd[1] + 0.03, "xanchor": "center",
                                      "yanchor": "bottom"})  # fmt: skip
        drawn = 0
        for run in runs:
            if metric not in run.metrics:
                continue
            points = thin(run.metrics[["step", "tokens", "time_s", metric]].dropna(subset=[metric]))
            if points.empty:
                continue
            traces.append({
                "type": "scatter", "mode": "lines+markers" if len(points) < 40 else "lines",
                "x": list(points["step"]), "y": list(points[metric] * factor),
                "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "name": names[run.name],
                "legendgroup": run.name, "showlegend": run.name not in {t["legendgroup"] for t in traces},
                "line": {"color": colours[run.name], "dash": "solid" if run.completed else "dot"},
                "marker": {"size": 5}, "hovertemplate": f"{_esc(names[run.name])}<br>%{{x}}: %{{y:.4g}}<extra></extra>",
            })  # fmt: skip
            for key in X_AXES:
                x_variants[key].append(list(points[key]))
            drawn += 1
        if not drawn:
            # An axis pair without traces is drawn with a made-up range; say why it is empty instead.
            layout[f"xaxis{suffix}"]["visible"] = layout[f"yaxis{suffix}"]["visible"] = False
            layout["annotations"].append({
                "text": f"no {metric} logged" + ("<br>(CPU runs, or GPUs without a peak FLOP/s entry)"
                                                  if metric == "perf/mfu" else ""),
                "xref": "paper", "yref": "paper", "x": sum(xd) / 2, "y": sum(yd) / 2, "showarrow": False,
                "font": {"color": "#888", "size": 14},
            })  # fmt: skip
    axis_titles = [f"{axis}.title.text" for axis in ("xaxis", "xaxis2", "xaxis3", "xaxis4")]
    layout["updatemenus"] = [{
        "type": "buttons", "direction": "right", "x": 0, "y": 1.13, "xanchor": "left", "showactive": True,
        "buttons": [{"label": f"x: {key if key != 'time_s' else 'time'}", "method": "update",
                     "args": [{"x": x_variants[key]}, {k: title for k in axis_titles}]}
                    for key, title in X_AXES.items()],
    }]  # fmt: skip
    return {"data": traces, "layout": layout}


# Points per curve at most: a long run logs every step, and the page carries each curve three times
# (one x per axis button); a few thousand points draw the same line.
MAX_POINTS = 2000


def thin(points: pd.DataFrame, limit: int = MAX_POINTS) -> pd.DataFrame:
    """Every k-th row so that at most ``limit`` remain, always keeping the last."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // (limit - 1))
    keep = list(range(0, len(points) - 1, stride)) + [len(points) - 1]
    return points.iloc[keep]


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both throughput (higher) and quality, by throughput."""
    best: float | None = None
    front = []
    for x, y in sorted(points, key=lambda p: (-p[0], p[1] if lower_is_better else -p[1])):
        if best is None or (y < best if lower_is_better else y > best):
            front.append((x, y))
            best = y
    # Drawn as steps, vertical first: the edge of the region the front's points dominate.
    return sorted(front)


def _tps(run: Run) -> float | None:
    """The summary's median TPS; for a run without one yet, the median of its logged windows."""
    if run.summary.get("tps") is not None:
        return float(run.summary["tps"])
    logged = run.metrics["perf/tps"].dropna() if "perf/tps" in run.metrics else []
    return float(statistics.median(logged)) if len(logged) else None


def _val_loss(run: Run) -> float | None:
    if run.summary.get("val_loss") is not None:
        return float(run.summary["val_loss"])
    logged = run.metrics["val/loss"].dropna() if "val/loss" in run.metrics else []
    return float(logged.iloc[-1]) if len(logged) else None


def _eval_avg(run: Run) -> float | None:
    avg = run.summary.get("eval_avg")
    return None if avg is None else 100.0 * float(avg)


def tradeoff_figure(runs: list[Run], names: dict[str, str], colours: dict[str, str]) -> tuple[dict, list[str]]:
    """Quality against TPS for every run with both, the Pareto front dashed; a second panel for the
    zero-shot average when any run has one. Returns the figure and the runs it could not place."""
    panels = [("validation loss", _val_loss, True)]
    if any(_eval_avg(r) is not None for r in runs):
        panels.append(("zero-shot average accuracy (%)", _eval_avg, False))
    traces: list[dict] = []
    layout: dict[str, Any] = {"height": 460, "margin": {"t": 40, "l": 60, "r": 20, "b": 50},
                              "legend": {"orientation": "h", "y": -0.18}, "hovermode": "closest"}  # fmt: skip
    width = 1.0 / len(panels)
    unplaced: dict[str, list[str]] = {}
    shown: set[str] = set()
    for i, (title, value, lower) in enumerate(panels, start=1):
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {"domain": [(i - 1) * width + (0.04 if i > 1 else 0), i * width - 0.04],
                                    "anchor": f"y{suffix}", "title": {"text": "TPS (tokens/s)"}}  # fmt: skip
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "title": {"text": title}}
        placed = []
        for run in runs:
            x, y = _tps(run), value(run)
            if x is None or y is None:
                unplaced.setdefault(names[run.name], []).append(title)
                continue
            placed.append((x, y))
            traces.append({
                "type": "scatter", "mode": "markers", "x": [x], "y": [y], "name": names[run.name],
                "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "legendgroup": run.name,
                "showlegend": run.name not in shown,
                "marker": {"size": 12, "color": colours[run.name],
                           "symbol": "circle" if run.completed else "circle-open", "line": {"width": 2}},
                "hovertemplate": f"{_esc(names[run.name])}<br>TPS %{{x:,.0f}}<br>{title} %{{y:.4g}}<extra></extra>",
            })  # fmt: skip
            shown.add(run.name)
        front = pareto_front(placed, lower)
        if front:
            traces.append({
                "type": "scatter", "mode": "lines", "x": [p[0] for p in front], "y": [p[1] for p in front],
                "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "name": "Pareto front", "legendgroup": "pareto",
                "showlegend": i == 1, "line": {"color": "#444", "dash": "dash", "shape": "vh"},
                "hoverinfo": "skip",
            })  # fmt: skip
    notes = [f"{name}: no {' / '.join(what)} yet" for name, what in unplaced.items()]
    return {"data": traces, "layout": layout}, notes


def seqlen_figure(ladder: pd.DataFrame) -> dict:
    """tok/s against sequence length, one line per model, log2 x axis."""
    traces = []
    for i, (model, rows) in enumerate(ladder.groupby("model", sort=False)):
        ok = rows[(rows["status"] == "ok") & rows["tok_s"].notna()]
        traces.append({
            "type": "scatter", "mode": "lines+markers", "name": model, "x": list(ok["seq_len"]),
            "y": list(ok["tok_s"]), "line": {"color": PALETTE[i % len(PALETTE)]},
            "customdata": [None if pd.isna(m) else 100 * m for m in ok["mfu"]],
            "hovertemplate": f"{_esc(model)}<br>seq %{{x:,}}: %{{y:,.0f}} tok/s<br>MFU %{{customdata:.1f}} %<extra></extra>",
        })  # fmt: skip
    lengths = sorted(int(t) for t in ladder["seq_len"].unique())
    return {"data": traces, "layout": {
        "height": 420, "margin": {"t": 30, "l": 70, "r": 20, "b": 50},
        "xaxis": {"type": "log", "title": {"text": "sequence length (tokens, log2 scale)"},
                  "tickvals": lengths, "ticktext": [f"{t:,}" for t in lengths]},
        "yaxis": {"title": {"text": "throughput (tokens/s)"}, "rangemode": "tozero"},
    }}  # fmt: skip


# -- page ---------------------------------------------------------------------------------

TABLE_COLUMNS = [("model", "model"), ("scale", "scale"), ("status", "status"), ("TPS", "TPS"),
                 ("paper_TPS", "TPS (paper)"), ("MFU", "MFU %"), ("paper_MFU", "MFU % (paper)"),
                 *[(t, t) for t in PAPER_TASKS], ("Avg", "Avg"), ("paper_Avg", "Avg (paper)"),
                 ("val_loss", "val loss"), ("job", "job")]  # fmt: skip


def seqlen_table_html(ladder: pd.DataFrame) -> str:
    """tok/s (MFU %) per model and length, as seqlen.md has it; a length not measured says why."""
    lengths = sorted(int(t) for t in ladder["seq_len"].unique())
    cells = {(r.model, int(r.seq_len)): r for r in ladder.itertuples()}

    def cell(row) -> str:
        if row is None:
            return "–"
        if row.status != "ok" or pd.isna(row.tok_s):
            return f'<span class="error">{_esc((row.status or "not measured").split(":")[0])}</span>'
        return f"{row.tok_s:,.0f}" + ("" if pd.isna(row.mfu) else f" ({100 * row.mfu:.1f} %)")

    head = "".join(f"<th>{t:,}</th>" for t in lengths)
    body = "".join(f"<tr><td>{_esc(m)}</td>" + "".join(f"<td>{cell(cells.get((m, t)))}</td>" for t in lengths)
                   + "</tr>" for m in dict.fromkeys(ladder["model"]))  # fmt: skip
    return (f'<p class="meta">tok/s (MFU %) per sequence length</p><table class="plain"><thead><tr><th>model</th>'
            f"{head}</tr></thead><tbody>{body}</tbody></table>")


def seeds_table_html(groups: list[seeds.SeedGroup]) -> str:
    """Each configuration once, mean ± spread over its seeds (the rows of seeds.md)."""
    body = ["<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in seeds.row_cells(g, seeds.group_spreads(g))) + "</tr>"
            for g in groups]
    head = "".join(f"<th>{_esc(h)}</th>" for h in seeds.ROW_HEADERS)
    return (f'<h2>Over seeds</h2><p class="meta">mean ± sample standard deviation over each row\'s completed '
            f"seeds (min–max, n runs); runs that did not complete are left out.</p>"
            f'<table id="seeds" class="plain"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6d6d6d")
    return f'<span class="badge" style="background:{colour}">{_esc(status)}</span>'


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f'<th data-col="{key}" title="sort by {_esc(title)}">{_esc(title)}</th>'
                   for key, title in TABLE_COLUMNS)  # fmt: skip
    body = []
    for _, row in df.iterrows():
        cells = []
        for key, _title in TABLE_COLUMNS:
            value = row.get(key)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            sort = "" if missing else (value if isinstance(value, (int, float)) else str(value))
            text = _badge(str(value)) if key == "status" else _esc(fmt(value, key))
            cls = ' class="paper"' if key.startswith("paper_") else ""
            cells.append(f'<td data-sort="{_esc(sort)}"{cls}>{text}</td>')
        status = str(row.get("status"))
        body.append(f'<tr class="status-{_esc(status)}">' + "".join(cells) + "</tr>")
    return (f'<table id="table1" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')  # fmt: skip


def run_cards(runs: list[Run], names: dict[str, str], colours: dict[str, str]) -> str:
    differing = differing_config(runs)
    cards = []
    for run in runs:
        s = run.summary
        peak = run.peak_tflops
        precision = run.config.get("trainer.precision")
        rows = [
            ("status", _badge(run.status) + (f" <span class='error'>{_esc(s.get('error'))}</span>"
                                            if s.get("error") else "")),
            ("device", _esc(f"{run.device} × {s.get('num_devices') or 1}" if run.device else "not recorded yet")),
            ("peak for MFU", _esc(f"{peak:,.1f} TFLOP/s per device" + (f" ({precision})" if precision else ""))
             if peak else "not recorded (the summary lacks flops_per_token)" if s.get("mfu")
             else "none (no MFU: CPU, or a GPU without a peak entry; set hardware.peak_tflops)"),
            ("params", _esc(f"{s['params'] / 1e6:.2f}M" if s.get("params") else "–")),
            ("steps / tokens", _esc(f"{s.get('steps', '–')} / {s.get('tokens', '–'):,}" if s.get("tokens")
                                    else str(s.get("steps", "–")))),
            ("command", f"<code>{_esc(run.command)}</code>" if run.command else "not recorded"),
        ]  # fmt: skip
        if run.status in ("stopped", "failed", "running") and run.command:
            rows.append(("resume", "the same command continues from <code>checkpoints/last.ckpt</code>"
                                   " (a sweep re-run does it for every job not completed)"))  # fmt: skip
        for w in run.wandb:
            rows.append(("W&B", _esc(f"group {w['group'] or '–'}, job_type {w['job_type']}, tags "
                                     f"{', '.join(w['tags']) or '–'}") + f"<br><code>wandb sync {_esc(w['offline_dir'])}</code>"))
        diff = differing.get(run.name)
        if diff:
            items = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc('null' if v is None else v)}</td></tr>"
                            for k, v in diff.items())
            rows.append(("config keys that differ", f'<table class="kv">{items}</table>'))
        elif run.name in differing:
            rows.append(("config keys that differ", "none (the only run with a config)"))
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        cards.append(
            f'<div class="card status-{_esc(run.status)}"><h3><span class="swatch" style="background:'
            f'{colours[run.name]}"></span>{_esc(names[run.name])}</h3><div class="job">{_esc(run.name)}</div>'
            f"<table>{table}</table></div>"
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{margin:0 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}
.badge{color:#fff;border-radius:9px;padding:1px 8px;font-size:12px;white-space:nowrap}
table.sortable{border-collapse:collapse;font-size:13px}
table.sortable th{cursor:pointer;background:#f3f3f3;position:sticky;top:0;user-select:none}
table.sortable th,table.sortable td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.sortable td:first-child,table.sortable td:nth-child(2),table.sortable td:last-child{text-align:left}
table.sortable th.asc::after{content:" ▲"}table.sortable th.desc::after{content:" ▼"}
td.paper{color:#777;background:#fafafa}
table.plain{border-collapse:collapse;font-size:13px}table.plain th,table.plain td{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.plain td:first-child{text-align:left}
tr.status-failed td,tr.status-stopped td,tr.status-running td,tr.status-missing td{background:#fff6f4}
.chart{width:100%;min-height:300px}
.notes{color:#a33;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;font-size:13px}
.card.status-failed,.card.status-stopped,.card.status-running,.card.status-missing{border-color:#e0a090}
.card h3{margin:0;font-size:15px}.card .job{color:#777;font-family:monospace;margin-bottom:6px}
.card>table{width:100%;table-layout:fixed}.card>table>tbody>tr>th{width:150px}
.card th{text-align:left;vertical-align:top;padding-right:10px;color:#555}
.card td{overflow-wrap:anywhere}
.card code{font-size:12px;word-break:break-all}.error{color:#c62828}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px}
table.kv td{padding:0 8px 0 0;font-family:monospace;font-size:12px}
#js-errors{color:#c62828;white-space:pre-wrap}
"""

# Runs in the page: records errors into the DOM (the browser test reads them back), sorts the
# table on header clicks or a #sort=<col>[:desc] address, draws the charts (x axis from #x=), then marks the body
# with data-rendered="<count>" so a headless browser can tell the page has finished.
_JS = """
window.addEventListener("error", e => {
  document.getElementById("js-errors").textContent += "Uncaught " + e.message + "\\n";
});
function sortTable(table, col, desc) {
  const ths = [...table.tHead.rows[0].cells];
  const index = ths.findIndex(th => th.dataset.col === col);
  if (index < 0) return false;
  const rows = [...table.tBodies[0].rows];
  const key = r => r.cells[index].dataset.sort;
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // blanks last either way
    const nx = Number(x), ny = Number(y);
    const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return desc ? -c : c;
  });
  rows.forEach(r => table.tBodies[0].appendChild(r));
  ths.forEach(th => th.classList.remove("asc", "desc"));
  ths[index].classList.add(desc ? "desc" : "asc");
  return true;
}
for (const table of document.querySelectorAll("table.sortable")) {
  for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", () => sortTable(table, th.dataset.col, th.classList.contains("asc")));
  }
}
const wanted = /#sort=([^:&]+)(:desc)?/.exec(decodeURIComponent(location.hash));
if (wanted && document.getElementById("table1")) sortTable(document.getElementById("table1"), wanted[1], !!wanted[2]);
const config = {responsive: true, displaylogo: false};
// #x=tokens (or time, step): open with the curves against that axis, as its button does.
function switchX() {
  const wantedX = /[#&]x=(\\w+)/.exec(location.hash);
  const menu = FIGURES.curves && FIGURES.curves.layout.updatemenus[0];
  const index = wantedX && menu ? menu.buttons.findIndex(b => b.label === "x: " + wantedX[1]) : -1;
  if (index < 0) return null;
  const [data, layout] = menu.buttons[index].args;
  return Plotly.update("curves", data, {...layout, "updatemenus[0].active": index});
}
Promise.all(Object.entries(FIGURES).map(([id, fig]) => Plotly.newPlot(id, fig.data, fig.layout, config)))
  .then(switchX)
  .then(() => { document.body.dataset.rendered = String(Object.keys(FIGURES).length); })
  .catch(e => { document.getElementById("js-errors").textContent += "Uncaught " + e + "\\n"; });
"""


def runs_sections(runs: list[Run], df: pd.DataFrame, figures: dict[str, dict]) -> str:
    """Table, curves, trade-off and run cards; adds the charts it places to ``figures``."""
    names = _names(runs)
    colours = {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}
    figures["curves"] = curves_figure(runs, names, colours)
    figures["tradeoff"], notes = tradeoff_figure(runs, names, colours)
    unfinished = [r for r in runs if not r.completed]
    unfinished_html = ""
    if unfinished:
        items = "".join(f"<li>{_badge(r.status)} <code>{_esc(r.name)}</code>: "
                        f"{_esc(r.summary.get('error') or 'no error recorded')}</li>" for r in unfinished)  # fmt: skip
        unfinished_html = f"<h3>Not completed</h3><ul>{items}</ul>"
    notes_html = f'<p class="notes">Not in this chart: {_esc("; ".join(notes))}.</p>' if notes else ""
    groups = seeds.seed_groups(runs)
    return f"""<h2>Table 1</h2>
<p class="meta">TPS in tokens/s, MFU and accuracies in %; grey columns are the paper's Table 1 for the
same row and scale. Click a header to sort.</p>
{table_html(df)}
{unfinished_html}
{seeds_table_html(groups) if groups else ""}
<h2>Curves</h2>
<p class="meta">Click a run in the legend to hide it (double-click: only it); dotted lines are runs that
did not complete. The buttons switch every x axis.</p>
<div id="curves" class="chart"></div>
<h2>Quality vs throughput</h2>
<p class="meta">Each run's median TPS against its final validation loss (lower is better) and, when
evaluated, zero-shot average accuracy; dashed: the Pareto front. Open circles: runs not completed
(their logged values so far).</p>
<div id="tradeoff" class="chart"></div>
{notes_html}
<h2>Runs</h2>
{run_cards(runs, names, colours)}
"""


def page(runs: list[Run], df: pd.DataFrame, title: str, ladder: pd.DataFrame | None = None) -> str:
    """The whole page as a string: the runs' sections when there are runs, the ladder's when given."""
    import plotly.offline

    runs = sorted(runs, key=order_key)
    figures: dict[str, dict] = {}
    body = runs_sections(runs, df, figures) if runs else ""
    if ladder is not None:
        figures["seqlen"] = seqlen_figure(ladder)
        body += (f'<h2>Throughput vs sequence length</h2><div id="seqlen" class="chart"></div>'
                 f"{seqlen_table_html(ladder)}")  # fmt: skip
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", *NOT_COMPLETED)}
    counts.update({s: sum(r.status == s for r in runs) for s in sorted({r.status for r in runs} - set(counts))})
    summary = " ".join(f"{_badge(s)} {n}" for s, n in counts.items() if n)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}: FlowHN report</title>
<style>{_CSS}</style>
<script>{plotly.offline.get_plotlyjs()}</script></head>
<body>
<h1>{_esc(title)}</h1>
<div class="meta">{len(runs)} runs {summary} · generated {generated} by <code>python -m flowhn.report</code></div>
<div id="js-errors"></div>
{body}
<script>const FIGURES = {_json(figures)};
{_JS}</script>
</body></html>
"""


def write_html(runs: list[Run], df: pd.DataFrame, path: Path, title: str, ladder: pd.DataFrame | None = None) -> Path:
    Path(path).write_text(page(runs, df, title, ladder), encoding="utf-8")
    return Path(path)
