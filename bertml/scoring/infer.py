"""The model on the scoring path: token ids -> probabilities -> tags, on an accelerator
when present (run by the actor of `bertml.scoring.actor`, and by evaluation).

`Scorer` loads a checkpoint once (in `__init__`) and maps Arrow batches in `__call__`, so
Ray Data runs it on an actor pool and a test can call it on a plain table without Ray.

Inside a batch, windows are sorted by length and packed into forward passes under a
token budget (rows x padded length <= max_tokens), so short texts never pay for long
ones; padding is built with vectorised numpy, not per-row Python. The last encoder layer
runs for the [CLS] position only where the head reads nothing else (`model.fast_forward`).
On a GPU the weights are cast to bf16/fp16 (no autocast casts per pass), passes are
queued back to back and the probabilities come back in one copy per batch.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import torch

from bertml import checkpoint as ckpt_io
from bertml.config import CPU_BATCH
from bertml.model import fast_forward, inference_dtype, logits_to_probs
from bertml.output import LABEL, PROBS, SCORE, TAGS, TOP_K
from bertml.tokenization import INPUT_IDS


def _windows(input_ids: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """list<list<int32>> column -> (flat token values, window offsets [W+1], windows per row [R])."""
    arr = input_ids.combine_chunks() if isinstance(input_ids, pa.ChunkedArray) else input_ids
    row_offsets = arr.offsets.to_numpy()
    windows = arr.values  # list<int32>, one entry per window (sliced to this batch)
    start, end = int(row_offsets[0]), int(row_offsets[-1])
    windows = windows.slice(start, end - start)
    win_offsets = windows.offsets.to_numpy()
    values = windows.values.slice(int(win_offsets[0]), int(win_offsets[-1] - win_offsets[0])).to_numpy(zero_copy_only=False)
    return values, win_offsets - win_offsets[0], np.diff(row_offsets)


def pack(lengths: np.ndarray, max_tokens: int, max_rows: int = 4096, slack: float = 1.15,
         extra: int = 8) -> list[np.ndarray]:
    """Indices of windows grouped into forward passes, shortest first.

    A group ends when it would exceed the token budget (rows x padded length) or when the
    next window is longer than `slack` x the group's shortest + `extra` tokens, so padding
    stays a small fraction of the work.
    """
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    while start < len(order):
        end = start + 1
        limit = slack * lengths[order[start]] + extra
        # Sorted ascending: the last row of a group sets its padded length.
        while (end < len(order) and end - start < max_rows and lengths[order[end]] <= limit
               and (end - start + 1) * lengths[order[end]] <= max_tokens):
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def pad_windows(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Gather windows `idx` into input_ids [B, T] and attention_mask [B, T] (vectorised)."""
    lens = (offsets[idx + 1] - offsets[idx]).astype(np.int64)
    width = int(lens.max()) if len(lens) else 1
    mask = np.arange(width)[None, :] < lens[:, None]  # [B, T]
    rel = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    src = np.repeat(offsets[idx], lens) + rel
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    ids[mask] = values[src]
    return ids, mask.astype(np.int64)


class Scorer:
    """Callable class for `map_batches`: Arrow batch with input_ids/status -> scored batch."""

    def __init__(
        self,
        checkpoint: str,
        *,
        max_tokens: int = CPU_BATCH[1],
        precision: str = "auto",
        chunk_pooling: str = "max",
        top_k: int = 0,
        torch_threads: int | None = None,
        cls_only: bool = True,
        compile: bool = False,
        trust_remote_code: bool = False,
    ):
        self.model, tokenizer, self.meta = ckpt_io.load(ckpt_io.localize(checkpoint), trust_remote_code)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu" and torch_threads:
            torch.set_num_threads(torch_threads)
        # Checked in fp32 on the CPU, before the move: shared modules follow the model.
        self.forward = fast_forward(self.model) if cls_only else self._full_forward
        self.model.to(self.device, dtype=inference_dtype(self.device, precision))
        if compile:  # one graph for all (B, T): packing makes every pass a new shape
            self.forward = torch.compile(self.forward, dynamic=True)
        self.max_tokens, self.pooling, self.top_k = max_tokens, chunk_pooling, top_k
        # `pack`'s padding slack: on a CPU padding costs its FLOPs; a GPU prefers fewer,
        # bigger passes (jobs/bench/gpu.py, section C: 1.5 was 11% faster than 1.15 on an H200).
        self.slack = 1.5 if self.device.type == "cuda" else 1.15
        self.names = np.array(self.meta.labels, dtype=object)
        self.thresholds = np.asarray(self.meta.thresholds, dtype=np.float32) if self.meta.multi_label else None

    def _full_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    # -- the hot path
    @torch.inference_mode()
    def window_probs(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Probabilities [W, L] for every window."""
        groups = pack(np.diff(offsets), self.max_tokens, slack=self.slack)
        probs = []  # on the device until every pass is queued: no sync between passes
        for idx in groups:
            ids, mask = pad_windows(values, offsets, idx, self.pad_id)
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            if self.device.type == "cuda":
                ids_t = ids_t.pin_memory().to(self.device, non_blocking=True)
                mask_t = mask_t.pin_memory().to(self.device, non_blocking=True)
            probs.append(logits_to_probs(self.forward(ids_t, mask_t), self.meta.multi_label))  # [B, L]
        out = np.empty((len(offsets) - 1, len(self.names)), dtype=np.float32)
        if groups:
            out[np.concatenate(groups)] = torch.cat(probs).cpu().numpy()
        return out

    def row_probs(self, values: np.ndarray, offsets: np.ndarray, per_row: np.ndarray) -> np.ndarray:
        """[R, L] probabilities pooled over each row's windows (NaN for rows without windows)."""
        win = self.window_probs(values, offsets)
        out = np.full((len(per_row), len(self.names)), np.nan, dtype=np.float32)
        has = per_row > 0
        if has.any():
            starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])[has]
            if self.pooling == "max":
                out[has] = np.maximum.reduceat(win, starts, axis=0)
                if not self.meta.multi_label:  # one distribution per row: classes' max over windows, renormalised
                    out[has] /= out[has].sum(axis=1, keepdims=True)
            else:
                out[has] = np.add.reduceat(win, starts, axis=0) / per_row[has, None]
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        values, offsets, per_row = _windows(batch.column(INPUT_IDS))
        probs = self.row_probs(values, offsets, per_row)
        out = self.assemble(batch.drop_columns([INPUT_IDS]), probs)
        _release_freed_memory()
        return out

    def assemble(self, rest: pa.Table, probs: np.ndarray) -> pa.Table:
        """Append probs and tags (or label/score) and top_k to the passthrough columns."""
        valid = ~np.isnan(probs).any(axis=1) if probs.size else np.zeros(len(probs), bool)
        cols = {PROBS: _probs_array(probs, valid)}
        if self.meta.multi_label:
            cols[TAGS] = _names_lists(self.names, (probs >= self.thresholds) & valid[:, None])
        else:
            best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
            cols[LABEL] = pa.array(np.where(valid, self.names[best], None), type=pa.string())
            cols[SCORE] = pa.array(np.where(valid, probs[np.arange(len(probs)), best], np.nan),
                                   type=pa.float32(), from_pandas=True)
        if self.top_k:
            cols[TOP_K] = _top_k(self.names, probs, valid, self.top_k)
        for name, arr in cols.items():
            rest = rest.append_column(name, arr)
        return rest


def _release_freed_memory() -> None:
    """Return freed heap to the OS after each batch (glibc keeps it otherwise).

    Variable-length forward passes fragment the heap; without this the actor's memory
    grew ~1.7x from N to 10N rows in jobs/bench/score.py, with it it stays flat.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _probs_array(probs: np.ndarray, valid: np.ndarray) -> pa.Array:
    """[R, L] -> list<float32>, null where the row had no text."""
    n, width = probs.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    flat = pa.array(np.nan_to_num(probs, nan=0.0).ravel(), type=pa.float32())
    arr = pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pa.array(~valid))
    return arr


def _names_lists(names: np.ndarray, chosen: np.ndarray) -> pa.Array:
    """[R, L] bool -> list<string> of chosen label names per row."""
    rows, cols = np.nonzero(chosen)
    counts = np.bincount(rows, minlength=len(chosen))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(names[cols].tolist(), type=pa.string()))


def _top_k(names: np.ndarray, probs: np.ndarray, valid: np.ndarray, k: int) -> pa.Array:
    """list<struct<label, score>>, best first; empty where the row had no text."""
    k = min(k, probs.shape[1])
    top = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1)[:, :k]  # [R, k]
    counts = np.where(valid, k, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    sel = top[valid]
    scores = np.take_along_axis(probs[valid], sel, axis=1).ravel()
    structs = pa.StructArray.from_arrays(
        [pa.array(names[sel.ravel()].tolist(), type=pa.string()), pa.array(scores, type=pa.float32())],
        names=["label", "score"],
    )
    return pa.ListArray.from_arrays(pa.array(offsets), structs)
