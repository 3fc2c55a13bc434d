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

INPUT_IDS = "input_ids"  # a row's token windows: list<list<int32>>

# Anything but whitespace, C0/C1 control characters and zero-width marks.
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2060\ufeff]")

# Status values written per row by scoring (one name for one thing, end to end).
OK, EMPTY, TRUNCATED, CHUNKED = "ok", "empty", "truncated", "chunked"

# A long text is first tokenized only up to this many characters per token it can need
# (at a whitespace), which keeps memory and time bounded on pathological (e.g. 100 MB)
# texts. Characters that make no token (whitespace runs, control characters) or a long
# word that makes one [UNK] can leave the cut short of tokens; it is then widened 8x at a
# time until the text gives every token its windows need, ends, or reaches
# _CHARS_CEILING characters (~1 s of tokenizing): past that the row is `truncated`.
_CHARS_PER_TOKEN_CAP = 128
_CHARS_CEILING = 1 << 20
# Truncating, a long text is first tokenized only up to a word boundary this many
# characters per needed token in (prose runs ~4-6 per token): a 5,000-word article cut to
# 256 tokens no longer pays for the words it drops. Too short a cut is detected and redone.
_CHARS_PER_TOKEN_GUESS = 8


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


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer puts around one text, e.g. ([CLS], [SEP]) or ([<s>], [</s>])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    raise ValueError(f"{type(tokenizer).__name__}: cannot find the text inside its special-token template {full}")


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
                 max_chunks windows sharing `stride` tokens; empty text: none), each
                 wrapped in the tokenizer's special tokens and at most max_length long
      status:    ok | empty | truncated | chunked  (object array of str)

    Windows are cut here from the text's full token ids rather than by the tokenizer's
    `return_overflowing_tokens`, whose windows differ between `tokenizers` releases
    (0.23.2 returned 2 windows where 6 were due, silently dropping the rest of the text).
    """
    prefix, suffix = special_tokens(tokenizer)
    width = max_length - len(prefix) - len(suffix)  # text tokens per window
    step = width - (stride if chunk else 0)
    if width < 1 or step < 1:
        raise ValueError(f"max_length {max_length} leaves {width} text tokens per window after the special tokens; "
                         f"it must be above {len(prefix) + len(suffix) + (stride if chunk else 0)} (stride {stride})")
    limit = max_chunks if chunk else 1
    cleaned = [clean_text(t) for t in texts]
    keep = [i for i, t in enumerate(cleaned) if t is not None]
    status = np.full(len(cleaned), EMPTY, dtype=object)
    per_row = np.zeros(len(cleaned), dtype=np.int64)
    kept: list[list[int]] = []
    if keep:
        # Tokens that decide every kept window and whether the text goes on past them.
        needed = width + (limit - 1) * step + 1
        ids, cut = _capped_token_ids(tokenizer, [cleaned[i] for i in keep], None if chunk else width, needed)
        for i, row, short in zip(keep, ids, cut):
            if not row:  # visible characters the tokenizer drops (combining marks, soft hyphens)
                continue
            n_win = 1 if len(row) <= width else 1 + -(-(len(row) - width) // step)  # ceil
            for k in range(min(n_win, limit)):
                kept.append(prefix + row[k * step : k * step + width] + suffix)
            per_row[i] = min(n_win, limit)
            status[i] = TRUNCATED if n_win > limit or short else CHUNKED if n_win > 1 else OK
    lengths = np.fromiter((len(w) for w in kept), dtype=np.int32, count=len(kept))
    values = np.fromiter((t for w in kept for t in w), dtype=np.int32, count=int(lengths.sum()))
    windows = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), pa.array(values))
    rows = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)), windows)
    return rows, status


def _capped_token_ids(tokenizer, texts: list[str], need: int | None, needed: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text's head, long enough to hold `needed` tokens (or the whole text),
    and per text whether it was cut short of that at _CHARS_CEILING characters.

    A text over `needed` x _CHARS_PER_TOKEN_CAP characters is cut at a whitespace near
    there; a cut that gave fewer than `needed` tokens is widened 8x and redone, up to the
    ceiling. A text still cut with `needed` tokens has the whole text's windows and status.
    """
    first = needed * _CHARS_PER_TOKEN_CAP
    ceiling = max(first, _CHARS_CEILING)
    caps = [first] * len(texts)
    ids = _token_ids(tokenizer, [_head(t, c) for t, c in zip(texts, caps)], need)

    def short(j: int) -> bool:
        return len(texts[j]) > caps[j] and len(ids[j]) < needed

    todo = [j for j in range(len(texts)) if short(j) and caps[j] < ceiling]
    while todo:
        for j in todo:
            caps[j] = min(caps[j] * 8, ceiling)
        for j, row in zip(todo, _token_ids(tokenizer, [_head(texts[j], caps[j]) for j in todo], need)):
            ids[j] = row
        todo = [j for j in todo if short(j) and caps[j] < ceiling]
    return ids, [short(j) for j in range(len(texts))]


def _head(text: str, cap: int) -> str:
    """text[:cap], ended at the last whitespace in its second half when there is one."""
    if len(text) <= cap:
        return text
    at = _word_cut(text, cap)
    return text[: at if at is not None else cap]


def _token_ids(tokenizer, texts: list[str], need: int | None) -> list[list[int]]:
    """Token ids of `texts` without special tokens.

    With `need` (truncation), each long text is first cut at a word boundary near
    `need` x _CHARS_PER_TOKEN_GUESS characters. Tokenizers that split words at whitespace
    (BERT, byte-level BPE, SentencePiece with whitespace splitting) give the cut text the
    same leading tokens as the whole text; a cut that yields no more than `need` tokens
    may have dropped some that fit, so that row is tokenized again in full. The leading
    `need` tokens, and whether there are more, are always those of the whole text.
    """
    kw = {"add_special_tokens": False, "return_attention_mask": False, "return_token_type_ids": False,
          "verbose": False}
    limit = (need or 0) * _CHARS_PER_TOKEN_GUESS
    cut = [_word_cut(t, limit) if need and len(t) > limit else None for t in texts]
    if not any(c is not None for c in cut) or not _splits_at_whitespace(tokenizer):
        return tokenizer(texts, **kw)["input_ids"]
    ids = tokenizer([t if c is None else t[:c] for t, c in zip(texts, cut)], **kw)["input_ids"]
    redo = [j for j, (c, row) in enumerate(zip(cut, ids)) if c is not None and len(row) <= need]
    if redo:
        for j, row in zip(redo, tokenizer([texts[j] for j in redo], **kw)["input_ids"]):
            ids[j] = row
    return ids


def _word_cut(text: str, limit: int) -> int | None:
    """Index of the last space, tab or newline in text[limit // 2 : limit] (cut there), or None."""
    at = max(text.rfind(c, limit // 2, limit) for c in " \n\t")
    return at if at > 0 else None


def _splits_at_whitespace(tokenizer) -> bool:
    """True when the tokenizer's pre-tokenizer separates words at whitespace."""
    try:
        pre = tokenizer.backend_tokenizer.pre_tokenizer
        pieces = [p for p, _ in pre.pre_tokenize_str("ab cd")] if pre is not None else []
    except Exception:  # noqa: BLE001 - an unusual tokenizer: take the always-exact path
        return False
    return len(pieces) >= 2 and not any("ab" in p and "cd" in p for p in pieces)


def tokenize_for_training(tokenizer, texts: Sequence[object], max_length: int) -> dict[str, np.ndarray]:
    """Texts -> padded input_ids [B, L], attention_mask [B, L] (L: the longest row);
    truncated to max_length as `encode_batch` truncates; empty texts become [CLS][SEP]."""
    prefix, suffix = special_tokens(tokenizer)
    width = max_length - len(prefix) - len(suffix)
    if width < 1:
        raise ValueError(f"max_length {max_length} leaves no text tokens after the special tokens")
    cleaned = [clean_text(t) or "" for t in texts]
    rows = [prefix + row[:width] + suffix for row in _capped_token_ids(tokenizer, cleaned, width, width + 1)[0]]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mask = np.arange(int(lengths.max(initial=1)))[None, :] < lengths[:, None]
    ids = np.full(mask.shape, pad, dtype=np.int64)
    ids[mask] = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
