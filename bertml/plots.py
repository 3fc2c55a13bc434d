"""The report's pictures: precision-recall curves, F1 vs threshold, label frequency vs F1,
label co-occurrence (multi-label), a confusion matrix (single-label).

Plots use matplotlib's Agg canvas per figure (no pyplot, no global backend switch). Label
names may be any script: when no installed font has their glyphs (matplotlib's default
lacks CJK), plots show `#index` and the report lists index -> name (`LabelFont`).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from bertml import metrics
from bertml.labels import to_multi_hot
from bertml.metrics import Scored

_CJK_FONT_HINTS = ("cjk", "hansans", "hanserif", "hei", "song", "ming", "kai", "wenquanyi", "wqy",
                   "droidsansfallback", "uming", "ukai", "unifont")


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
