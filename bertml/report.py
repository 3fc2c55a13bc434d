"""The evaluation report folder: numbers a program can read and pictures a person can look at.

    metrics.json     averages at the checkpoint's thresholds and at 0.5, per-label rows, row counts
    per_label.csv    one row per label: support, P/R/F1 tuned and at 0.5, threshold, AUC, AP
    *.png            precision-recall curves, F1 vs threshold, label frequency vs F1,
                     label co-occurrence (multi-label); confusion matrix (single-label)
    report.html      one self-contained page (PNGs embedded, no scripts, no CDN): opens offline

Plots use matplotlib's Agg canvas per figure (no pyplot, no global backend switch). Label
names may be any script: when no installed font has their glyphs (matplotlib's default
lacks CJK), plots show `#index` and the page lists index -> name.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import time
import warnings

import numpy as np

from bertml import metrics
from bertml.labels import to_multi_hot
from bertml.metrics import Scored

PLOTS_MULTI = ("pr_curves.png", "f1_threshold.png", "frequency_f1.png", "cooccurrence.png")
PLOTS_SINGLE = ("confusion_matrix.png", "frequency_f1.png")
_CJK_FONT_HINTS = ("cjk", "hansans", "hanserif", "hei", "song", "ming", "kai", "wenquanyi", "wqy",
                   "droidsansfallback", "uming", "ukai", "unifont")


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


class LabelFont:
    """Label names as plots can draw them: with a font that has their glyphs, else `#index`."""

    def __init__(self, names: list[str]):
        self.names, self.prop = list(names), None
        need = [{ord(c) for c in n if not c.isspace()} for n in self.names]
        have = _default_charmap()
        self.missing = {j for j, chars in enumerate(need) if not chars <= have}
        if self.missing:
            path = _find_font(set().union(*need))
            if path:
                from matplotlib.font_manager import FontProperties

                self.prop, self.missing = FontProperties(fname=path), set()

    @property
    def indexed(self) -> bool:
        return bool(self.missing)

    def __getitem__(self, j: int) -> str:
        return f"#{j}" if j in self.missing else self.names[j]

    def kw(self, **extra) -> dict:
        return {"fontproperties": self.prop, **extra} if self.prop is not None else extra


def _charmap(path: str) -> set[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return set(FT2Font(path).get_charmap())
    except Exception:  # noqa: BLE001 - an unreadable font file is just not a candidate
        return set()


def _default_charmap() -> set[int]:
    from matplotlib import font_manager as fm

    return _charmap(fm.findfont(fm.FontProperties(), fallback_to_default=True))


def _find_font(need: set[int]) -> str | None:
    """An installed font with every glyph in `need` (CJK-looking names tried first)."""
    from matplotlib import font_manager as fm

    paths = sorted({f.fname for f in fm.fontManager.ttflist},
                   key=lambda p: not any(h in os.path.basename(p).lower() for h in _CJK_FONT_HINTS))
    for path in paths[:200]:
        if "lastresort" in os.path.basename(path).lower():
            continue  # matplotlib's LastResort maps every code point to a placeholder box
        if need <= _charmap(path):
            return path
    return None


def _figure(w: float, h: float):
    """A Figure drawn by the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, folder: str, name: str) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing")
        warnings.filterwarnings("ignore", message=".*constrained_layout.*")
        fig.savefig(os.path.join(folder, name))
    return name


def _grid(n: int, ncols: int = 4, w: float = 3.3, h: float = 2.7):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(ncols * w, nrows * h)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _top(support: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-support, kind="stable")[:k]


def plot_multi_label(folder: str, s: Scored, font: LabelFont, max_labels: int) -> list[str]:
    y, p, thr = s.targets > 0.5, s.probs, s.thresholds
    support = y.sum(0)
    top = _top(support, max_labels)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing")
        return [_pr_curves(folder, y, p, thr, top, font), _f1_threshold(folder, y, p, thr, top, font),
                _frequency_f1(folder, s, font), _cooccurrence(folder, y, _top(support, max(max_labels, 30)), font)]


def _pr_curves(folder, y, p, thr, top, font) -> str:
    from sklearn.metrics import average_precision_score

    fig, axes = _grid(len(top))
    for ax, j in zip(axes, top):
        n = int(y[:, j].sum())
        ax.set_xlim(0, 1.02), ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8), ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        if n == 0 or n == len(y):
            ax.set_title(f"{font[j]}  n={n}", **font.kw(fontsize=9))
            ax.text(0.5, 0.5, "no positives" if n == 0 else "no negatives", ha="center", va="center")
            continue
        prec, rec, _ = metrics.pr_curve(y[:, j], p[:, j])
        ax.plot(rec, prec, color="C0", lw=1.4, drawstyle="steps-post")
        ax.axhline(n / len(y), color="0.7", ls="--", lw=0.8)  # a random ranking's precision
        pt, rt, ft = metrics.point_at(y[:, j], p[:, j], thr[j])
        p5, r5, f5 = metrics.point_at(y[:, j], p[:, j], 0.5)
        ax.plot([rt], [pt], "o", color="C3", ms=7, label=f"tuned {thr[j]:.2f}: F1 {ft:.2f}")
        ax.plot([r5], [p5], "x", color="k", ms=7, mew=2, label=f"0.5: F1 {f5:.2f}")
        ap = average_precision_score(y[:, j], p[:, j])
        ax.set_title(f"{font[j]}  n={n}  AP={ap:.2f}", **font.kw(fontsize=9))
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Precision-recall per label (dot: tuned threshold, x: 0.5, dashed: base rate)", fontsize=11)
    return _save(fig, folder, "pr_curves.png")


def _f1_threshold(folder, y, p, thr, top, font) -> str:
    grid = np.linspace(0.0, 1.0, 101)
    fig, axes = _grid(len(top))
    for ax, j in zip(axes, top):
        f1 = metrics.f1_by_threshold(y[:, j], p[:, j], grid)
        best = int(np.argmax(f1))
        ax.plot(grid, f1, color="C0", lw=1.4)
        ax.axvline(thr[j], color="C3", lw=1.2, label=f"tuned {thr[j]:.2f}")
        ax.axvline(0.5, color="k", ls=":", lw=1, label="0.5")
        ax.plot([grid[best]], [f1[best]], "*", color="C2", ms=10, label=f"best here {grid[best]:.2f}")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.set_xlabel("threshold", fontsize=8), ax.set_ylabel("F1", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{font[j]}  n={int(y[:, j].sum())}", **font.kw(fontsize=9))
        ax.legend(fontsize=7, loc="lower center")
    fig.suptitle("F1 against the decision threshold, per label", fontsize=11)
    return _save(fig, folder, "f1_threshold.png")


def _frequency_f1(folder, s: Scored, font: LabelFont) -> str:
    y = s.targets > 0.5 if s.multi_label else to_multi_hot(s.targets, len(s.labels)) > 0
    support = y.sum(0)
    pred = s.probs >= s.thresholds if s.multi_label else to_multi_hot(s.probs.argmax(1), len(s.labels)) > 0
    f1 = np.array([metrics.point_at(y[:, j], pred[:, j].astype(float), 0.5)[2] for j in range(len(s.labels))])
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    ax.scatter(support, f1, s=40, color="C0", label="tuned thresholds" if s.multi_label else "argmax", zorder=3)
    if s.multi_label:
        f05 = np.array([metrics.point_at(y[:, j], s.probs[:, j], 0.5)[2] for j in range(len(s.labels))])
        ax.scatter(support, f05, s=40, facecolors="none", edgecolors="C1", label="0.5", zorder=2)
    for j in _top(support, 40):
        ax.annotate(font[j], (support[j], f1[j]), xytext=(4, 3), textcoords="offset points", **font.kw(fontsize=8))
    if support.min() > 0 and support.max() / support.min() > 20:
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("label frequency (rows carrying the label)")
    ax.set_ylabel("F1")
    ax.set_title("Label frequency vs F1 (rare labels are often the weak ones)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, "frequency_f1.png")


def _heat(fig, ax, share, counts, idx, font, xlabel, ylabel, title):
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = [font[j] for j in idx]
    ax.set_xticks(range(len(idx)), ticks, rotation=60, ha="right", **font.kw(fontsize=8))
    ax.set_yticks(range(len(idx)), ticks, **font.kw(fontsize=8))
    if len(idx) <= 20:
        for a in range(len(idx)):
            for b in range(len(idx)):
                v = counts[a, b]
                if v:
                    ax.text(b, a, str(int(v)), ha="center", va="center", fontsize=7,
                            color="white" if share[a, b] > 0.6 else "black")
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


def _cooccurrence(folder, y, idx, font) -> str:
    c = metrics.cooccurrence(y)[np.ix_(idx, idx)]
    diag = np.diag(c).astype(float)
    share = np.divide(c, diag[:, None], out=np.zeros(c.shape, dtype=float), where=diag[:, None] > 0)
    side = max(5.0, 0.45 * len(idx) + 2.5)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    _heat(fig, ax, share, c, idx, font, "label j", "label i",
          "True-label co-occurrence\ncolour: share of label i's rows that also carry j; numbers: rows")
    return _save(fig, folder, "cooccurrence.png")


def plot_single_label(folder: str, s: Scored, font: LabelFont, max_labels: int) -> list[str]:
    cm = metrics.confusion(s.targets, s.probs)
    idx = _top(cm.sum(1), max(max_labels, 30))
    sub = cm[np.ix_(idx, idx)]
    rows = sub.sum(1).astype(float)
    share = np.divide(sub, rows[:, None], out=np.zeros(sub.shape, dtype=float), where=rows[:, None] > 0)
    side = max(5.0, 0.45 * len(idx) + 2.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing")
        fig = _figure(side + 1, side)
        ax = fig.subplots()
        _heat(fig, ax, share, sub, idx, font, "predicted", "true",
              "Confusion matrix\ncolour: share of the true class's rows; numbers: rows")
        return [_save(fig, folder, "confusion_matrix.png"), _frequency_f1(folder, s, font)]


# ----------------------------------------------------------------------------- page

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
td.t{text-align:left}.note{color:#5a6576;font-size:12px}.up{color:#1a7f37}.down{color:#b42318}
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
