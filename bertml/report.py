"""The evaluation report folder: numbers a program can read and pictures a person can look at.

    metrics.json     averages at the checkpoint's thresholds and at 0.5, per-label rows, row counts
    per_label.csv    one row per label: support, P/R/F1 tuned and at 0.5, threshold, AUC, AP
    *.png            precision-recall curves, F1 vs threshold, label frequency vs F1,
                     label co-occurrence (multi-label); confusion matrix (single-label)
    report.html      one self-contained page (PNGs embedded, no scripts, no CDN): opens offline

The pictures are drawn by `bertml.plots`.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import time

import numpy as np

from bertml import metrics
from bertml.coverage import UNK_WARN
from bertml.labels import to_multi_hot
from bertml.metrics import Scored
from bertml.plots import LabelFont, plot_multi_label, plot_single_label

PLOTS_MULTI = ("pr_curves.png", "f1_threshold.png", "frequency_f1.png", "cooccurrence.png")
PLOTS_SINGLE = ("confusion_matrix.png", "frequency_f1.png")


REPORT_FILES = ("metrics.json", "per_label.csv", "report.html", *PLOTS_MULTI, *PLOTS_SINGLE[:1])


def check_report_folder(folder: str) -> None:
    """Refuse, before any scoring, a local report folder whose report files would replace
    someone else's: one is there (say a `metrics.json` of the user's) and the folder holds
    no earlier bertml report; or the folder is a file, or is or contains the working or
    home folder. Other files in the folder are never touched."""
    from bertml.output import OutputError
    from bertml.paths import resolved, within

    if "://" in folder and not folder.startswith("file://"):
        return  # object storage: nothing there to be replaced by name without a fingerprint check
    real = resolved(folder[len("file://"):] if folder.startswith("file://") else folder)
    for name, other in (("the working folder", os.getcwd()), ("your home folder", os.path.expanduser("~"))):
        if within(resolved(other), real):
            raise OutputError(f"report {folder} is or contains {name} ({other}); choose a folder of its own, "
                              "e.g. report=reports/eval")
    if not os.path.lexists(real):
        return
    if not os.path.isdir(real):
        raise OutputError(f"report {folder} exists and is not a folder; choose a folder path")
    taken = [n for n in REPORT_FILES if os.path.lexists(os.path.join(real, n))]
    if taken and not _is_report(os.path.join(real, "metrics.json")):
        raise OutputError(f"report {folder} holds {taken[0]!r}, which is not from a bertml report; bertml never "
                          "overwrites files it did not write: choose a new or empty folder")


def _is_report(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"fingerprint", "problem_type", "rows"} <= set(m)


def write_report(folder: str, summary: dict, per_label: dict, s: Scored, max_plot_labels: int = 20) -> list[str]:
    """Write every report file into `folder`; returns their names."""
    os.makedirs(folder, exist_ok=True)
    for old in {*PLOTS_MULTI, *PLOTS_SINGLE}:  # a previous run's plots must not pass for this one's
        if os.path.exists(os.path.join(folder, old)):
            os.remove(os.path.join(folder, old))
    with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(_clean({**summary, "per_label": per_label}), f, indent=2, ensure_ascii=False)
    rows = per_label_rows(per_label, s)
    _write_csv(os.path.join(folder, "per_label.csv"), rows)
    fonts = LabelFont(s.labels)
    plots = plot_multi_label(folder, s, fonts, max_plot_labels) if s.multi_label else \
        plot_single_label(folder, s, fonts, max_plot_labels)
    page = render_html(summary, rows, plots, fonts, mistakes(s), folder)
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as f:
        f.write(page)
    return ["metrics.json", "per_label.csv", *plots, "report.html"]


def _clean(obj):
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- tables


def per_label_rows(per_label: dict, s: Scored) -> list[dict]:
    """One dict per label (checkpoint order) for per_label.csv and the page."""
    rows = []
    grid = np.linspace(0.0, 1.0, 101)
    y = s.targets if s.multi_label else to_multi_hot(s.targets, len(s.labels))
    for j, name in enumerate(s.labels):
        if s.multi_label:
            t, d = per_label["tuned"][name], per_label["at_0.5"][name]
            f1s = metrics.f1_by_threshold(y[:, j], s.probs[:, j], grid)
            best = int(np.argmax(f1s))
            rows.append({
                "label": name, "support": t["support"], "threshold": t["threshold"],
                "precision": t["precision"], "recall": t["recall"], "f1": t["f1"],
                "precision_at_0.5": d["precision"], "recall_at_0.5": d["recall"], "f1_at_0.5": d["f1"],
                "roc_auc": t.get("roc_auc"), "average_precision": t.get("average_precision"),
                "best_threshold_on_data": float(grid[best]), "best_f1_on_data": float(f1s[best]),
            })
        else:
            m = per_label["argmax"][name]
            rows.append({"label": name, "support": m["support"], "predicted": int((s.probs.argmax(1) == j).sum()),
                         "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                         "roc_auc": m.get("roc_auc"), "average_precision": m.get("average_precision")})
    return rows


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def mistakes(s: Scored, k: int = 10) -> dict[str, list[dict]]:
    """The most confident wrong answers: the rows worth reading first."""
    names = s.labels
    if not s.multi_label:
        pred = s.probs.argmax(1)
        conf = s.probs[np.arange(len(pred)), pred]
        wrong = np.flatnonzero(pred != s.targets)
        order = wrong[np.argsort(-conf[wrong], kind="stable")][: 2 * k]
        return {"confidently wrong": [{"row": s.keys[i], "true": names[s.targets[i]], "predicted": names[pred[i]],
                                       "prob": float(conf[i])} for i in order]}
    y = s.targets > 0.5
    pred = s.probs >= s.thresholds
    out = {}
    for title, mask, sign in (("false positives (highest scores)", pred & ~y, -1),
                              ("false negatives (lowest scores)", ~pred & y, 1)):
        rows, cols = np.nonzero(mask)
        order = np.argsort(sign * s.probs[rows, cols], kind="stable")[:k]
        out[title] = [{"row": s.keys[rows[i]], "label": names[cols[i]], "prob": float(s.probs[rows[i], cols[i]]),
                       "threshold": float(s.thresholds[cols[i]]),
                       "true": ", ".join(n for n, v in zip(names, y[rows[i]]) if v) or "(none)"} for i in order]
    return out


# ----------------------------------------------------------------------------- plots


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;
margin:0 auto;max-width:1180px;padding:24px;color:#1d2430;background:#fff}
h1{margin:0 0 4px;font-size:24px}h2{margin:32px 0 8px;font-size:18px;border-bottom:1px solid #e3e7ee;padding-bottom:4px}
.meta{color:#5a6576;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3e7ee;border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:26px}.card span{color:#5a6576;font-size:12px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eef1f5;text-align:right}th{background:#f6f8fb;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eef1f5;border-radius:6px}
td.t{text-align:left}.note{color:#5a6576;font-size:12px}.warn{color:#b42318}.up{color:#1a7f37}.down{color:#b42318}
"""


_SHORT = {"threshold": "thr", "precision": "P", "recall": "R", "f1": "F1", "f1_at_0.5": "F1 @0.5",
          "roc_auc": "AUC", "average_precision": "AP", "best_threshold_on_data": "best thr here",
          "best_f1_on_data": "best F1 here"}
_CSV_ONLY = ("precision_at_0.5", "recall_at_0.5")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _bar(v) -> str:
    """A table cell with a bar behind the number (F1-like values in [0, 1])."""
    if v is None:
        return "<td>–</td>"
    pct = max(0.0, min(100.0, 100 * float(v)))
    return f'<td style="background:linear-gradient(90deg,#d6e6ff {pct:.0f}%,transparent {pct:.0f}%)">{v:.3f}</td>'


def _cell(v) -> str:
    return f'<td class="t">{_fmt(v)}</td>' if isinstance(v, str) else f"<td>{_fmt(v)}</td>"


def _table(rows: list[dict], bars: tuple[str, ...] = ()) -> str:
    if not rows:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(_bar(r[k]) if k in bars else _cell(r[k]) for k in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(folder_name: str, b64: str, alt: str) -> str:
    return (f'<a href="{html.escape(folder_name)}"><img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{b64}"></a>')


def _coverage_note(summary: dict) -> list[str]:
    """A warning paragraph when the encoder could not read much of the evaluated text."""
    cov = (summary.get("coverage") or {}).get("data") or {}
    if not (cov.get("tokens") and cov["unk_rate"] > UNK_WARN):
        return []
    unknown = ", ".join(u for u, _ in cov.get("top_unknown", [])[:10])
    return [f'<p class="note warn">{cov["unk_rate"]:.1%} of the tokens of a sample of this data are [UNK] '
            f'(e.g. {html.escape(unknown)}): the encoder cannot read much of this text. Use an encoder whose '
            'vocabulary covers the language, or train with model.extend_vocab=true.</p>']


def render_html(summary: dict, rows: list[dict], plots: list[str], font: LabelFont, wrong: dict,
                folder: str | None = None) -> str:
    """The whole page as one string; PNGs are read from the report folder and embedded."""
    from bertml.shards import spec_text

    multi = summary["problem_type"] == "multi_label"
    r = summary["rows"]
    parts = [f"<h1>Evaluation: {html.escape(os.path.basename(summary['checkpoint'].rstrip('/')))}</h1>",
             f'<p class="meta">checkpoint <code>{html.escape(summary["checkpoint"])}</code> · data '
             f'<code>{html.escape(spec_text(summary["data"]))}</code> · {summary["problem_type"]} · '
             f'{r["evaluated"]} rows evaluated of {r["total"]} · {time.strftime("%Y-%m-%d %H:%M")}</p>',
             f'<p class="note">{html.escape(summary["excluded"])}.</p>']
    parts += _coverage_note(summary)
    if multi:
        t, d = summary["tuned"], summary["at_0.5"]
        cards = [("micro F1", t["micro_f1"], d["micro_f1"]), ("macro F1", t["macro_f1"], d["macro_f1"]),
                 ("samples F1", t["samples_f1"], d["samples_f1"]), ("subset accuracy", t["subset_accuracy"],
                                                                     d["subset_accuracy"])]
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><span>{n} (tuned)</span><b>{a:.3f}</b><span class="{"up" if a >= b else "down"}">'
            f'{a - b:+.3f} vs 0.5 ({b:.3f})</span></div>' for n, a, b in cards) + "</div>")
        keys = [k for k in t if isinstance(t[k], float)]
        parts += ["<h2>Averages</h2>", _table([{"metric": k, "tuned thresholds": t[k], "at 0.5": d[k]} for k in keys]),
                  f'<p class="note">Thresholds: {html.escape(summary["thresholds"]["source"])}. '
                  "ROC-AUC and average precision do not depend on thresholds.</p>"]
        bars = ("f1", "f1_at_0.5", "best_f1_on_data")
    else:
        a = summary["argmax"]
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><span>{n}</span><b>{a[k]:.3f}</b></div>'
            for n, k in (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("weighted F1", "weighted_f1"))
            if k in a) + "</div>")
        parts += ["<h2>Averages</h2>", _table([{"metric": k, "argmax": v} for k, v in a.items() if isinstance(v, float)])]
        bars = ("f1",)
    shown = [{"#": j, **{_SHORT.get(k, k): v for k, v in r.items() if k not in _CSV_ONLY}}
             for j, r in sorted(enumerate(rows), key=lambda jr: -jr[1]["support"])]
    parts += ["<h2>Per label</h2>", '<p class="note">Sorted by support; every column is in per_label.csv.'
              + (" \"best thr here\": the threshold that would be best on this very data (optimistic)." if multi else "")
              + "</p>", _table(shown, tuple(_SHORT.get(b, b) for b in bars))]
    titles = {"pr_curves.png": "Precision-recall curves", "f1_threshold.png": "F1 vs threshold",
              "frequency_f1.png": "Label frequency vs F1", "cooccurrence.png": "Label co-occurrence",
              "confusion_matrix.png": "Confusion matrix"}
    for name in plots:
        path = os.path.join(folder, name) if folder else name
        with open(path, "rb") as f:
            b64 = base64.b64encode(f.read()).decode("ascii")
        parts += [f"<h2>{titles.get(name, name)}</h2>", _img(name, b64, titles.get(name, name))]
    if font.indexed:
        parts += ["<h2>Label index</h2>", '<p class="note">No installed font has these labels\' glyphs, so plots '
                  "show them as #index.</p>", _table([{"#": j, "label": font.names[j]} for j in sorted(font.missing)])]
    parts.append("<h2>Most confident mistakes</h2>")
    for title, items in wrong.items():
        parts += [f"<h3>{html.escape(title)}</h3>", _table(items)]
    parts.append('<p class="note">Files: metrics.json, per_label.csv, ' + ", ".join(plots) + ", scored/ (Parquet).</p>")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>bertml evaluation</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
