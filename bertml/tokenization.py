"""Tokenization stage: text -> token ids. Pure batch functions, usable in Ray Data and training.

Null, empty and whitespace-only texts are handled explicitly (`status="empty"`, no ids).
Text that cannot be encoded (lone surrogates from upstream decoding) is repaired with
U+FFFD rather than crashing the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    if not text.strip():
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
) -> dict[str, np.ndarray]:
    """Tokenize a batch without padding.

    Returns, per input row:
      input_ids: object array of int32 arrays, one per window (a row of N windows is a
                 list of N arrays; truncate mode has exactly one window, empty rows none)
      status:    ok | empty | truncated | chunked
    """
    cleaned = [clean_text(t) for t in texts]
    keep = [i for i, t in enumerate(cleaned) if t is not None]
    windows: list[list[np.ndarray]] = [[] for _ in cleaned]
    status = np.array([EMPTY] * len(cleaned), dtype=object)
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
        owners = enc["overflow_to_sample_mapping"]
        for ids, owner in zip(enc["input_ids"], owners):
            windows[keep[owner]].append(np.asarray(ids, dtype=np.int32))
        for j, i in enumerate(keep):
            n = len(windows[i])
            if n > 1 and chunk and n <= max_chunks:
                status[i] = CHUNKED
            elif n > 1 or len(todo[j]) < len(cleaned[i]):
                status[i] = TRUNCATED
            else:
                status[i] = OK
            if chunk:
                windows[i] = windows[i][:max_chunks]
            else:
                windows[i] = windows[i][:1]
    ids = np.empty(len(cleaned), dtype=object)
    for i, w in enumerate(windows):
        ids[i] = w
    return {"input_ids": ids, "status": status}


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
