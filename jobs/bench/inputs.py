"""Inputs of the benchmarks, built offline in a temp folder: bertml checkpoints (a packaged
encoder with a fresh head, or a random-init BERT), length-skewed corpora as Parquet shards,
and Arrow batches as the tokenize stage hands them to the Scorer.
"""

from __future__ import annotations

import os
import time

import numpy as np


def label_set(n_labels: int):
    from bertml.labels import LabelSet

    return LabelSet(tuple(f"label_{i}" for i in range(n_labels)), True)


def pretrained_checkpoint(path: str, encoder: str, n_labels: int, max_length: int) -> str:
    """A bertml checkpoint: `encoder`'s weights + a fresh multi-label head, thresholds 0.5."""
    from bertml import checkpoint as ckpt_io
    from bertml.model import build_model, load_tokenizer

    labels = label_set(n_labels)
    model = build_model(encoder, labels)
    meta = ckpt_io.CheckpointMeta(labels=list(labels.names), problem_type="multi_label",
                                  max_length=max_length, thresholds=[0.5] * n_labels)
    ckpt_io.save(path, model, load_tokenizer(encoder), meta)
    return path


def random_bert_checkpoint(path: str, tokenizer_from: str, n_labels: int, max_length: int, **overrides) -> str:
    """A bertml checkpoint of a random-init BERT (BertConfig() defaults = BERT-base unless overridden)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bertml import checkpoint as ckpt_io
    from bertml.model import hf_problem_type, load_tokenizer

    labels = label_set(n_labels)
    torch.manual_seed(0)
    config = BertConfig(num_labels=n_labels, id2label=dict(enumerate(labels.names)), label2id=labels.index,
                        problem_type=hf_problem_type(True), **overrides)
    model = BertForSequenceClassification(config).eval()
    meta = ckpt_io.CheckpointMeta(labels=list(labels.names), problem_type="multi_label",
                                  max_length=max_length, thresholds=[0.5] * n_labels)
    ckpt_io.save(path, model, load_tokenizer(tokenizer_from), meta)
    return path


def random_bert_encoder(path: str, tokenizer_from: str, **overrides) -> str:
    """An encoder-only folder (no head) of a random-init BERT, usable as `model.name` for training."""
    import torch
    from transformers import BertConfig, BertModel

    from bertml.model import load_tokenizer

    torch.manual_seed(0)
    BertModel(BertConfig(**overrides), add_pooling_layer=True).save_pretrained(path, safe_serialization=True)
    load_tokenizer(tokenizer_from).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- corpus


def skewed_texts(n: int, seed: int, long_frac: float = 0.2, short_words: tuple[int, int] = (10, 40),
                 long_words: tuple[int, int] = (200, 600)) -> list[str]:
    """`n` English texts cut from the BBC articles: mostly short, `long_frac` of them long.

    Each text is a run of consecutive words from the concatenated articles (titles
    included), starting at a seeded random word; its length is uniform in the range.
    """
    from bertml.corpus import load_articles

    words: list[str] = []
    for a in load_articles():
        words += a.title.split()
        words += a.words
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_frac
    lo, hi = np.where(is_long, long_words[0], short_words[0]), np.where(is_long, long_words[1], short_words[1])
    sizes = rng.integers(lo, hi + 1)
    starts = rng.integers(0, len(words) - long_words[1] - 1, size=n)
    return [" ".join(words[s : s + k]) for s, k in zip(starts, sizes)]


def synthetic_texts(words: list[str], n: int, seed: int, long_frac: float = 0.2) -> list[str]:
    """Length-skewed texts of vocabulary words: 80% 10-40 words, `long_frac` 200-600 words."""
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_frac
    sizes = rng.integers(np.where(is_long, 200, 10), np.where(is_long, 600, 40) + 1)
    pool = np.array(words, dtype=object)
    flat = pool[rng.integers(0, len(pool), size=int(sizes.sum()))]
    ends = np.cumsum(sizes)
    return [" ".join(flat[e - k : e]) for e, k in zip(ends, sizes)]


def write_shards(texts: list[str], folder: str, rows_per_shard: int, row_group_rows: int = 128) -> list[str]:
    """`texts` as `part-NNNNN.parquet` files with columns id, text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    ids = [f"doc-{i:08d}" for i in range(len(texts))]
    paths = []
    for k, start in enumerate(range(0, len(texts), rows_per_shard)):
        t = pa.table({"id": ids[start : start + rows_per_shard], "text": texts[start : start + rows_per_shard]})
        path = os.path.join(folder, f"part-{k:05d}.parquet")
        pq.write_table(t, path, row_group_size=row_group_rows)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- tokenized batches


def token_lengths(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Tokens per text after truncation at `max_length`, [rows]."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)
    return np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)


def pretokenize(ckpt: str, texts: list[str], max_length: int, batch_rows: int):
    """Arrow batches as the Scorer receives them in Ray (id, input_ids, status); and seconds taken."""
    import pyarrow as pa

    from bertml.model import load_tokenizer
    from bertml.tokenization import encode_batch

    tok = load_tokenizer(ckpt)
    batches, t0 = [], time.perf_counter()
    for start in range(0, len(texts), batch_rows):
        part = texts[start : start + batch_rows]
        ids, status = encode_batch(tok, part, max_length)
        batches.append(pa.table({"id": pa.array(range(start, start + len(part))), "input_ids": ids,
                                 "status": pa.array(status, pa.string())}))
    return batches, time.perf_counter() - t0


def fixed_batch(rows: int, seq: int, seed: int):
    """An Arrow batch as the tokenize stage makes it: `rows` rows of one `seq`-token window."""
    import pyarrow as pa

    ids = np.random.default_rng(seed).integers(1000, 30000, size=(rows, seq), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    offsets = np.arange(rows + 1, dtype=np.int32)
    windows = pa.ListArray.from_arrays(pa.array(offsets * seq), pa.array(ids.ravel()))
    return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), windows),
                     "status": pa.array(["ok"] * rows)})
