"""Run reports: one JSON and one self-contained HTML file per run, written atomically.

Every report carries its provenance: dataset hash, models, prompt versions,
policy version (the gateway's ``x-gatehouse-policy`` header when present),
created_at and the command line. Charts are matplotlib (Agg) PNGs inlined as
base64, so the HTML opens anywhere without other files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse_core.files import atomic_write as atomic_write  # re-exported for reports


@dataclass
class Provenance:
    kind: str  # run | metrics | sxs | bias | hh-agreement
    dataset_hash: str | None = None
    models: list[str] = field(default_factory=list)
    prompt_versions: list[str] = field(default_factory=list)
    policy_version: str | None = None
    command: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.created_at:
            self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if not self.command:
            self.command = " ".join(["gatehouse", *sys.argv[1:]]) if sys.argv else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dataset_hash": self.dataset_hash,
            "models": self.models,
            "prompt_versions": self.prompt_versions,
            "policy_version": self.policy_version,
            "created_at": self.created_at,
            "command": self.command,
            **self.extra,
        }


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _clean(o: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, str | bytes):
        return _clean(o.item())
    return o


# --------------------------------------------------------------------------- charts


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def value_range(values: Sequence[float], cis: Sequence[Sequence[float | None]] | None, bounds: tuple[float, float] | None,
                ref_line: float | None = None) -> tuple[float, float]:
    """An axis range that shows the differences: the span of the values and CIs (and the reference
    line) with 10% padding, clipped to the scale's bounds; never a 0–100 axis for values at 0.95–1.0."""
    pts = [v for v in values if math.isfinite(v)]
    for c in cis or []:
        pts += [float(x) for x in c if x is not None and math.isfinite(float(x))]
    if ref_line is not None:
        pts.append(ref_line)
    if not pts:
        return bounds or (0.0, 1.0)
    lo, hi = min(pts), max(pts)
    pad = max((hi - lo) * 0.1, 0.01 * ((bounds[1] - bounds[0]) if bounds else max(abs(hi), 1.0)))
    lo, hi = lo - pad, hi + pad
    if bounds:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return lo, hi


def bar_chart_with_ci(
    labels: Sequence[str], values: Sequence[float | None], cis: Sequence[Sequence[float | None]] | None, *,
    title: str, xlabel: str = "", ref_line: float | None = None, ref_label: str | None = None,
    bounds: tuple[float, float] | None = None,
) -> str:
    """Point estimates with 95% CI whiskers on one scale, one row per label; base64 PNG.

    Points rather than bars, so the axis can start where the values are (``value_range``); ``bounds``
    is the scale's natural range (0–1 for rates and AUCs, 0–100 for BLEU/chrF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [float("nan") if v is None else float(v) for v in values]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.4))
    ypos = list(range(len(labels)))
    xerr = None
    if cis:
        lo = [max(0.0, v - (c[0] if c[0] is not None else v)) if math.isfinite(v) else 0 for v, c in zip(vals, cis, strict=True)]
        hi = [max(0.0, (c[1] if c[1] is not None else v) - v) if math.isfinite(v) else 0 for v, c in zip(vals, cis, strict=True)]
        xerr = [lo, hi]
    ax.errorbar(vals, ypos, xerr=xerr, fmt="o", color="#4c72b0", ecolor="#333", capsize=3)
    for y, v in zip(ypos, vals, strict=True):
        if math.isfinite(v):
            ax.annotate(f"{v:.3g}", (v, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_yticks(ypos, labels=list(labels))
    ax.set_ylim(len(labels) - 0.5, -0.7)
    ax.set_xlim(*value_range(vals, cis, bounds, ref_line))
    ax.grid(axis="x", color="#ddd", linewidth=0.6)
    if ref_line is not None:
        ax.axvline(ref_line, color="#c44", linestyle="--", linewidth=1, label=ref_label or f"reference {ref_line:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel or "value")
    return _png(fig)


def histogram(series: dict[str, Sequence[float]], *, title: str, xlabel: str = "per-item score", bins: int = 20) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, vals in series.items():
        v = [x for x in vals if x is not None and math.isfinite(x)]
        if v:
            ax.hist(v, bins=bins, alpha=0.55, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    if len(series) > 1:
        ax.legend()
    return _png(fig)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:980px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}
th{background:#f3f3f3}code{background:#f6f6f6;padding:1px 4px}img{max-width:100%}.muted{color:#777}
details{border:1px solid #ddd;margin:2px 0;padding:2px 8px}summary{cursor:pointer}
pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:4px 0}dt{font-weight:bold}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    if v is None:
        return "–"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, float | int | type(None)) for x in v):
        return f"[{_fmt(v[0])}, {_fmt(v[1])}]"
    if isinstance(v, dict | list):
        return html.escape(json.dumps(_clean(v), default=_json_default)[:300])
    return html.escape(str(v))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, limit: int = 200) -> str:
    if not rows:
        return "<p class=muted>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p class=muted>{len(rows) - limit} more rows in the JSON report</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


@dataclass
class Section:
    title: str
    html: str


def image(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(title: str, prov: Provenance, sections: Sequence[Section]) -> str:
    p = prov.to_dict()
    prov_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in p.items())
    body = "".join(f"<h2>{html.escape(s.title)}</h2>{s.html}" for s in sections)
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table>{prov_rows}</table>{body}</body></html>"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    name: str,
    prov: Provenance,
    payload: dict[str, Any],
    sections: Sequence[Section],
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.html`` into ``out_dir`` (atomically). Returns both paths.

    Never overwrites: an existing report of that name is a ``ReportExists`` error."""
    out = Path(out_dir)
    for ext in ("json", "html"):
        if (out / f"{name}.{ext}").exists():
            raise ReportExists(f"report {out / name}.{ext} already exists; reports are never overwritten: pick another --name")
    doc = {"provenance": {"name": name, **prov.to_dict()}, **payload}
    j = atomic_write(out / f"{name}.json", json.dumps(_clean(doc), indent=2, ensure_ascii=False, default=_json_default))
    h = atomic_write(out / f"{name}.html", render_html(title or name, prov, sections))
    return j, h


class ReportExists(FileExistsError):
    pass


def report_name(kind: str, *parts: str | None, when: float | None = None) -> str:
    """Default report name: the job, what it ran on, and the UTC time to the second, e.g.
    ``metrics-terse-20261203T142501Z`` (two runs of one results file never collide)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if when is None else when))
    words = [kind, *(p for p in parts if p), stamp]
    return "-".join(w.replace("/", "_").replace(":", "_").replace(" ", "_") for w in words)


def unique_name(out_dir: str | os.PathLike[str], name: str) -> str:
    """``name``, or ``name-2``, ``name-3``… when a report of that name exists (for derived names only)."""
    out, k, cand = Path(out_dir), 1, name
    while (out / f"{cand}.json").exists() or (out / f"{cand}.html").exists():
        k += 1
        cand = f"{name}-{k}"
    return cand


def item_rows(items: Sequence[dict[str, Any]], *, limit: int = 500) -> str:
    """Collapsible per-item rows: the summary line shows id and score, the body prompt, outputs, reference."""
    out = []
    for it in items[:limit]:
        head = html.escape(str(it.get("id"))) + " — " + html.escape(it.get("headline", ""))
        body = "".join(f"<dt>{html.escape(k)}</dt><dd><pre>{html.escape(v if isinstance(v, str) else json.dumps(_clean(v), ensure_ascii=False, default=_json_default))}</pre></dd>"
                       for k, v in it.get("fields", {}).items())
        out.append(f"<details><summary>{head}</summary><dl>{body}</dl></details>")
    more = f"<p class=muted>{len(items) - limit} more items in the JSON report</p>" if len(items) > limit else ""
    return "".join(out) + more


def definitions(d: dict[str, Any]) -> str:
    """Key → readable text (tokenizers, sacreBLEU signatures) as a definition list, not a JSON blob."""
    if not d:
        return ""
    return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd><code>{html.escape(str(v))}</code></dd>" for k, v in d.items()) + "</dl>"


# --------------------------------------------------------------------------- report builders per job


def sxs_sections(result: dict[str, Any], label_a: str, label_b: str) -> list[Section]:
    s = result["summary"]
    rates = [
        (f"{label_a} win rate (ties ½)", s["win_rate_a_ties_half"]),
        (f"{label_a} win rate (ties excluded)", s["win_rate_a_ties_excluded"]),
        ("longer answer win rate", s["length_bias"]["longer_win_rate"]),
    ]
    chart = bar_chart_with_ci([r[0] for r in rates], [r[1]["value"] for r in rates], [r[1]["ci95"] for r in rates],
                              title=f"{label_a} vs {label_b} (95% bootstrap CI)", xlabel="rate", ref_line=0.5,
                              ref_label="0.5 = no preference", bounds=(0.0, 1.0))
    summary_rows = [
        {"": k, "value": v["value"], "ci95": v["ci95"], "n": v["n"]} for k, v in rates
    ]
    counts = {k: s[k] for k in ("n", "wins_a", "wins_b", "ties", "order_disagreements", "parse_errors")}
    counts = {**counts, "parse_error_rate": s.get("parse_error_rate")}
    rows = [{"id": it["id"], "headline": f"{it['choice']}" + ("" if it["consistent"] else " (orders disagreed)"),
             "fields": {k: v for k, v in {"prompt": it.get("prompt"), f"A ({label_a})": it.get("answer_a"), f"B ({label_b})": it.get("answer_b"),
                                          "reference(s)": it.get("references"), "choice": it["choice"], "confidence": it["confidence"],
                                          "explanation (A first)": it.get("explanation"), "explanation (B first)": it.get("explanation_reversed"),
                                          "parse errors": [e for e in ((it.get("forward") or {}).get("parse_error"), (it.get("backward") or {}).get("parse_error")) if e]}.items() if v not in (None, "", [])}}
            for it in result["items"]]
    return [
        Section("Win rates", image(chart, "win rates") + table(summary_rows) + table([counts])
                + f"<p>Length bias: correlation of A's score with len(A)−len(B) = {_fmt(s['length_bias']['corr_win_vs_len_diff'])}</p>"),
        Section("Per item", item_rows(rows)),
    ]


def ranking_sections(tournament: dict[str, Any]) -> list[Section]:
    r = tournament["ranking"]
    chart = bar_chart_with_ci([x["name"] for x in r], [x["score"] for x in r], [x["ci95"] for x in r],
                              title="Bradley–Terry score (Elo scale, 95% CI)", xlabel="Elo-scale score", ref_line=1000,
                              ref_label="1000 = average")
    return [Section("Ranking", image(chart, "ranking") + table(r, ["rank", "name", "score", "ci95", "win_rate", "games"]))]


def bias_sections(rep: dict[str, Any], hatecheck: dict[str, Any] | None = None) -> list[Section]:
    g = rep["groups"]
    out = []
    chart = bar_chart_with_ci([x["identity"] for x in g], [x["subgroup_auc"] for x in g], [x["subgroup_auc_ci95"] for x in g],
                              title="Subgroup AUC per identity (95% CI)", xlabel="subgroup AUC", ref_line=rep["overall_auc"],
                              ref_label=f"overall AUC {rep['overall_auc']:.3f}", bounds=(0.0, 1.0))
    summary = {"overall_auc": rep["overall_auc"], "final_bias_score": rep["final_bias_score"], **{f"pm_{k}": v for k, v in rep["power_means"].items()}}
    out.append(Section("Identity bias (Borkan et al. 2019)", image(chart, "subgroup AUC") + table([summary])
                       + table(g, ["identity", "n", "subgroup_auc", "subgroup_auc_ci95", "bpsn_auc", "bnsp_auc", "fpr", "fnr"])))
    if hatecheck:
        funcs = hatecheck["per_functionality"]
        chart2 = bar_chart_with_ci(list(funcs), [v["accuracy"] for v in funcs.values()], None, title="HateCheck accuracy per functionality",
                                   xlabel="accuracy", ref_line=hatecheck["accuracy"], ref_label=f"overall {hatecheck['accuracy']:.3f}", bounds=(0.0, 1.0))
        out.append(Section("HateCheck", image(chart2, "hatecheck") + f"<p>overall accuracy {_fmt(hatecheck['accuracy'])}</p>"
                           + table([{"target": k, **v} for k, v in hatecheck["per_target"].items()])))
    return out


def output_bias_sections(rep: dict[str, Any]) -> list[Section]:
    g = rep["groups"]
    chart = bar_chart_with_ci([x["identity"] for x in g], [x["mean"] for x in g], [x["ci95"] for x in g],
                              title="Mean safety score of outputs per identity (95% CI)", xlabel="mean safety score of the replies",
                              bounds=(0.0, 1.0))
    parts = image(chart, "output bias")
    if any(x.get("block_rate") for x in g):
        chart2 = bar_chart_with_ci([x["identity"] for x in g], [x["block_rate"] for x in g], [x.get("block_rate_ci95") for x in g],
                                   title="Share of prompts blocked per identity (95% CI)", xlabel="block rate",
                                   ref_line=rep.get("overall_block_rate"), ref_label="overall block rate", bounds=(0.0, 1.0))
        parts += image(chart2, "block rate")
    return [Section("Model output scores by identity", parts
                    + table([{k: rep.get(k) for k in ("max_gap", "paired_gap", "kruskal_p", "overall_block_rate", "block_rate_gap", "block_rate_chi2_p")}])
                    + table(g))]


SCALE_0_100 = ("bleu", "chrf")


def metrics_sections(tasks: Sequence[dict[str, Any]]) -> list[Section]:
    """One section per task; one chart per scale (ROUGE/EM/F1/accuracy 0–1, BLEU/chrF 0–100)."""
    out = []
    for result in tasks:
        m = result["metrics"]
        parts = ""
        for unit, names, bounds in (("score (0–1)", [k for k in m if k not in SCALE_0_100], (0.0, 1.0)),
                                    ("score (0–100)", [k for k in m if k in SCALE_0_100], (0.0, 100.0))):
            if names:
                chart = bar_chart_with_ci(names, [m[k]["value"] for k in names], [m[k]["ci95"] for k in names],
                                          title=f"{result['task']}: metrics with 95% bootstrap CI", xlabel=unit, bounds=bounds)
                parts += image(chart, f"{result['task']} metrics {unit}")
        parts += table([{"metric": k, **v} for k, v in m.items()], ["metric", "value", "ci95"])
        per_item = {k: v["per_item"] for k, v in m.items() if v.get("per_item")}
        if per_item:
            parts += image(histogram(per_item, title=f"{result['task']}: per-item score distribution"), "distribution")
        if result.get("tokenizers") or result.get("signatures"):
            parts += "<h3>Tokenizers and signatures</h3>" + definitions({**result.get("tokenizers", {}), **{f"{k} signature": v for k, v in result.get("signatures", {}).items()}})
        rows = [{"id": it["id"], "headline": ", ".join(f"{k} {v:.3g}" for k, v in it["scores"].items()),
                 "fields": {"prompt": it["prompt"], "output": it["output"], "reference(s)": "\n---\n".join(it["references"]), "scores": it["scores"]}}
                for it in result.get("items", [])]
        if rows:
            parts += "<h3>Per item</h3>" + item_rows(rows)
        out.append(Section(f"{result['task']} (n={result['n']}, missing {result.get('missing', 0)})", parts))
    return out
