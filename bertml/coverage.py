"""Can the encoder read this text? The share of [UNK] tokens on a sample, before any work.

An encoder whose vocabulary does not cover the corpus's script (an English vocabulary on
Chinese text, say) still trains and scores without an error, and gives a poor tagger: the
[UNK] rows carry no signal. `check` tokenizes a sample and measures

- `unk_rate`: [UNK] tokens / all tokens (special tokens not counted);
- `chars_per_token`: visible characters per token (an English WordPiece vocabulary makes
  ~4-5 of English, ~1 of Chinese where it knows the characters);
- `top_unknown`: the text the [UNK] tokens stand for, most frequent first (fast
  tokenizers only: it needs the offsets).

`warning` turns a rate above `UNK_WARN` into one line that says what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bertml.tokenization import clean_text

UNK_WARN = 0.02  # above this share of [UNK] tokens, the vocabulary does not cover the text
SAMPLE_TEXTS = 512  # texts looked at
SAMPLE_CHARS = 2000  # characters of each (the start of the text is what a truncated window reads)


@dataclass
class Coverage:
    texts: int = 0
    tokens: int = 0
    unk: int = 0
    chars: int = 0  # visible characters of the texts looked at
    top_unknown: list[tuple[str, int]] = field(default_factory=list)

    @property
    def unk_rate(self) -> float:
        return self.unk / self.tokens if self.tokens else 0.0

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens if self.tokens else 0.0

    def record(self) -> dict:
        """For bertml.json, manifests and reports."""
        return {**asdict(self), "unk_rate": round(self.unk_rate, 5),
                "chars_per_token": round(self.chars_per_token, 3),
                "top_unknown": [[u, n] for u, n in self.top_unknown]}


def check(tokenizer, texts: Sequence[object], sample: int = SAMPLE_TEXTS) -> Coverage:
    """Coverage of `tokenizer` on up to `sample` non-empty texts (each cut to SAMPLE_CHARS)."""
    cleaned = [t[:SAMPLE_CHARS] for t in map(clean_text, texts) if t is not None][:sample]
    cov = Coverage(texts=len(cleaned))
    unk_id = tokenizer.unk_token_id
    if not cleaned:
        return cov
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=fast)
    unknown: Counter[str] = Counter()
    for i, ids in enumerate(enc["input_ids"]):
        cov.tokens += len(ids)
        cov.chars += sum(not c.isspace() for c in cleaned[i])
        if unk_id is None:
            continue
        hits = [j for j, t in enumerate(ids) if t == unk_id]
        cov.unk += len(hits)
        if fast:
            spans = enc["offset_mapping"][i]
            unknown.update(cleaned[i][spans[j][0]:spans[j][1]] for j in hits)
    cov.top_unknown = [(u, n) for u, n in unknown.most_common(10) if u]
    return cov


def sample_texts(infos, column: str, n: int = SAMPLE_TEXTS) -> list:
    """Up to `n` values of `column` from the input shards (`shards.ShardInfo`s): the smallest
    non-empty row group first, then the next ones, so a small sample costs one small read."""
    import pyarrow.parquet as pq

    groups = sorted((rows, i, g) for i, info in enumerate(infos) for g, rows in enumerate(info.row_group_rows) if rows)
    texts: list = []
    for _, i, g in groups:
        if len(texts) >= n:
            break
        shard = infos[i].shard
        with shard.fs.open_input_file(shard.path) as f:
            col = pq.ParquetFile(f).read_row_group(g, columns=[column]).column(0)
        texts += col.slice(0, n - len(texts)).to_pylist()
    return texts


def warning(cov: Coverage, where: str, threshold: float = UNK_WARN) -> str | None:
    """One line when the vocabulary does not cover the text, else None."""
    if cov.tokens == 0 or cov.unk_rate <= threshold:
        return None
    top = ", ".join(f"{u!r} x{n}" for u, n in cov.top_unknown[:8])
    return (f"{cov.unk_rate:.1%} of the tokens of {where} are [UNK] (sample of {cov.texts} texts, "
            f"{cov.chars_per_token:.1f} characters per token{'; most frequent unknown: ' + top if top else ''}): "
            "the encoder's vocabulary does not cover this text, and what it cannot read it cannot tag. "
            "Use an encoder whose vocabulary covers the language (e.g. bert-base-chinese or "
            "hfl/chinese-roberta-wwm-ext for Chinese, xlm-roberta-base for many languages)")
