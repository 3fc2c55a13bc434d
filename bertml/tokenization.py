"""Tokenization stage: text -> token ids. Pure batch functions, usable in Ray Data and training.

Null, empty and whitespace-only texts are handled explicitly (`status="empty"`, no ids).
Text that cannot be encoded (lone surrogates from upstream decoding) is repaired with
U+FFFD rather than crashing the batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# Anything but whitespace, C0/C1 control characters and zero-width marks.
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2060\ufeff]")

# Status values written per row by scoring (one name for one thing, end to end).
OK, EMPTY, TRUNCATED, CHUNKED = "ok", "empty", "truncated", "chunked"

# A token covers at most ~100 characters (WordPiece's max word length), so characters
# past this many per token cannot change a truncated encoding; cutting them first keeps
# memory and time bounded on pathological (e.g. 100 MB) texts.
_CHARS_PER_TOKEN_CAP = 128


def clean_text(text: object) -> str | None:
    """A text cell -> str, or None when null/empty/whitespace-only."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    if not _VISIBLE.search(text):  # whitespace, control or zero-width characters only
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def encode_batch(
    tokenizer,
    texts: Sequence[object],
    max_length: int,
    *,
    chunk: bool = False,
    stride: int = 0,
    max_chunks: int = 64,
) -> tuple[pa.Array, np.ndarray]:
    """Tokenize a batch without padding.

    Returns (input_ids, status) per input row:
      input_ids: list<list<int32>>, the row's windows (truncate: one; chunk: up to
                 max_chunks overlapping windows; empty text: none)
      status:    ok | empty | truncated | chunked  (object array of str)
    """
    cleaned = [clean_text(t) for t in texts]
    keep = [i for i, t in enumerate(cleaned) if t is not None]
    status = np.full(len(cleaned), EMPTY, dtype=object)
    per_row = np.zeros(len(cleaned), dtype=np.int64)
    kept: list[list[int]] = []
    if keep:
        todo = [cleaned[i] for i in keep]
        if not chunk:
            cap = max_length * _CHARS_PER_TOKEN_CAP
            todo = [t[:cap] for t in todo]
        enc = tokenizer(
            todo,
            truncation=True,
            max_length=max_length,
            stride=stride if chunk else 0,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        produced = np.zeros(len(cleaned), dtype=np.int64)
        limit = max_chunks if chunk else 1
        for ids, owner in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
            row = keep[owner]
            produced[row] += 1
            if per_row[row] < limit:
                kept.append(ids)
                per_row[row] += 1
        for j, i in enumerate(keep):
            cut = len(todo[j]) < len(cleaned[i])
            if produced[i] > limit or cut:
                status[i] = TRUNCATED
            elif produced[i] > 1:
                status[i] = CHUNKED
            else:
                status[i] = OK
    lengths = np.fromiter((len(w) for w in kept), dtype=np.int32, count=len(kept))
    values = np.fromiter((t for w in kept for t in w), dtype=np.int32, count=int(lengths.sum()))
    windows = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), pa.array(values))
    rows = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)), windows)
    return rows, status


def pad(rows: Sequence[np.ndarray], pad_id: int, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D id arrays -> input_ids [B, L], attention_mask [B, L] (int64)."""
    length = pad_to or max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def tokenize_for_training(tokenizer, texts: Sequence[object], max_length: int) -> dict[str, np.ndarray]:
    """Texts -> padded input_ids [B, L], attention_mask [B, L]; empty texts become [CLS][SEP]."""
    cleaned = [clean_text(t) or "" for t in texts]
    cap = max_length * _CHARS_PER_TOKEN_CAP
    enc = tokenizer(
        [t[:cap] for t in cleaned],
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="np",
        return_token_type_ids=False,
    )
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
