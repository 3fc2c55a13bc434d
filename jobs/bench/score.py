"""Scoring benchmark (issue 4): bertml vs a naive `transformers.pipeline`, side by side.

    .venv/bin/python -m jobs.bench.score                       # ~3-4 min on 2 idle CPU cores
    .venv/bin/python -m jobs.bench.score --rows 200 --pipeline-rows 64   # quick look

Model: MiniLM-L6 (the packaged all-MiniLM-L6-v2) with a fresh 10-label multi-label head,
thresholds 0.5, max_length 256 (flag), saved as a bertml checkpoint in a temp folder.
Corpus: length-skewed English cut from the BBC articles (80% 10-40 words, 20% 200-600
words; seeded), written as Parquet shards with an `id` column.

Paths timed, all on the same texts:
  (a) hf pipeline       transformers.pipeline("text-classification", top_k=None), batch 32,
                        on the first --pipeline-rows rows of the corpus (it is slow)
  (c) Scorer alone      bertml.scorer.Scorer called in-process on pre-tokenized Arrow
                        batches (--batch-size rows each), no Ray: the in-actor speed
  (b) bertml.score      end to end through Ray Data (read -> tokenize -> Scorer actor ->
                        Parquet commit) on N and 10*N rows. Ray is started by a warm-up
                        run on a tiny shard set (reported as cold). Every score() call
                        starts its own actor (import torch + load the model), so:
                        "incl. actor start" = rows / wall time of the call;
                        "warm" = marginal rate 9N / (T(10N) - T(N)): the fixed per-call
                        cost cancels; this is the number in speedup_vs_hf_pipeline.
Memory: peak summed PSS of the whole process tree (driver + this Ray session's raylet,
gcs and workers), sampled every 2 s (every 0.5 s cost 0.05 core here) during the N and
10*N runs; must stay flat (10N/N <= 1.2).
Shared machines: before each timed part the script waits (--wait-quiet) for the box to be
idle, and every row reports the share of the cores other processes used meanwhile.
GPU figures (BERT-base rows/s and MFU, end to end on a GPU actor): jobs/bench/gpu.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from jobs.bench import common as bc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=600, help="N: corpus rows for the Ray run (10*N for the memory check)")
    p.add_argument("--pipeline-rows", type=int, default=256, help="rows timed through the hf pipeline (a prefix of the corpus)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text (checkpoint max_length)")
    p.add_argument("--long-frac", type=float, default=0.2, help="fraction of long (200-600 word) texts")
    p.add_argument("--rows-per-shard", type=int, default=200, help="rows per input Parquet shard")
    p.add_argument("--batch-size", type=int, default=256, help="ScoreConfig.batch_size (rows per Scorer call)")
    p.add_argument("--max-tokens", type=int, default=16384, help="ScoreConfig.max_tokens (token budget per forward pass)")
    p.add_argument("--warmup-rows", type=int, default=32, help="rows of the Ray warm-up (cold) run")
    p.add_argument("--no-10x", action="store_true", help="skip the 10*N run (no memory ratio, no warm rate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=60, help="before each timed part, wait up to this many s "
                   "for the machine to be idle (shared boxes); 0: don't wait")
    p.add_argument("--workdir", default=None, help="keep checkpoint/corpus/outputs here (default: a temp folder, deleted)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- pieces


def token_lengths(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)
    return np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)


def time_pipeline(ckpt: str, texts: list[str], max_length: int, batch: int = 32) -> bc.MemoryPeak:
    """The naive hf pipeline over `texts` (after a 2-row warm-up); .wall_s is its time."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=ckpt, top_k=None, device=-1, truncation=True, max_length=max_length)
    pipe(texts[:2], batch_size=2)
    with bc.TreeMemory() as mon:
        out = pipe(texts, batch_size=batch)
    assert len(out) == len(texts) and len(out[0]) == 10, "pipeline returned an unexpected shape"
    del pipe
    gc.collect()
    return mon.peak


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


def time_scorer(scorer, batches) -> bc.MemoryPeak:
    scorer(batches[0].slice(0, 4))  # warm-up
    with bc.TreeMemory() as mon:
        n = sum(scorer(b).num_rows for b in batches)
    assert n == sum(b.num_rows for b in batches)
    return mon.peak


def run_score(ckpt: str, data: str, out: str, args) -> tuple[bc.MemoryPeak, object]:
    """One bertml.score.score() call: peak tree memory (.wall_s: its time), summary."""
    from bertml.config import ScoreConfig
    from bertml.score import score

    cfg = ScoreConfig(checkpoint=ckpt, input=data, output=out, overwrite=True,
                      batch_size=args.batch_size, max_tokens=args.max_tokens)
    with bc.TreeMemory() as mon:
        summary = score(cfg)
    return mon.peak, summary


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    import ray.data

    from bertml.demo import resolve_model
    from bertml.model import load_tokenizer
    from bertml.runtime import init_ray
    from bertml.scorer import Scorer

    work = args.workdir or tempfile.mkdtemp(prefix="bench_score_")
    os.makedirs(work, exist_ok=True)
    print(f"machine: {bc.machine()}")
    print(f"start:   {bc.load_line()}")
    encoder = resolve_model("minilm")
    ckpt = bc.pretrained_checkpoint(os.path.join(work, "ckpt"), encoder, 10, args.max_length)

    n, n10 = args.rows, 10 * args.rows
    texts = bc.skewed_texts(n10, args.seed, args.long_frac)
    sets = {"warmup": texts[: args.warmup_rows], "n": texts[:n], "n10": texts}
    for name, rows in sets.items():
        bc.write_shards(rows, os.path.join(work, "data", name), args.rows_per_shard)
    tok = load_tokenizer(ckpt)
    lengths = token_lengths(tok, texts, args.max_length)
    from transformers import AutoConfig

    hf_cfg = AutoConfig.from_pretrained(ckpt)
    print(f"corpus:  {n10} rows, {args.long_frac:.0%} long; tokens/row mean {lengths[:n].mean():.0f}, "
          f"median {np.median(lengths[:n]):.0f}, {np.mean(lengths[:n] >= args.max_length):.0%} truncated at "
          f"{args.max_length}; checkpoint MiniLM-L6 + 10-label head at {ckpt}")

    # (b) bertml.score through Ray Data: cold warm-up, then N and 10N.
    quiet_log = {"ray": bc.wait_quiet(args.wait_quiet)}
    init_t0 = time.perf_counter()
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    cold, _ = run_score(ckpt, os.path.join(work, "data", "warmup"), os.path.join(work, "out", "warmup"), args)
    cold_total = time.perf_counter() - init_t0
    mon_n, sum_n = run_score(ckpt, os.path.join(work, "data", "n"), os.path.join(work, "out", "n"), args)
    assert sum_n.rows == n, sum_n.format()
    mon_n10 = None
    if not args.no_10x:
        mon_n10, sum_n10 = run_score(ckpt, os.path.join(work, "data", "n10"), os.path.join(work, "out", "n10"), args)
        assert sum_n10.rows == n10, sum_n10.format()
    ray.shutdown()

    # (a) hf pipeline and (c) Scorer alone, in this process, on the same texts.
    sub = texts[: args.pipeline_rows]
    quiet_log["pipeline"] = bc.wait_quiet(args.wait_quiet)
    mon_pipe = time_pipeline(ckpt, sub, args.max_length)
    sub_batches, _ = pretokenize(ckpt, sub, args.max_length, args.batch_size)
    n_batches, t_tok = pretokenize(ckpt, texts[:n], args.max_length, args.batch_size)
    scorer = Scorer(ckpt, max_tokens=args.max_tokens, torch_threads=os.cpu_count())
    quiet_log["scorer"] = bc.wait_quiet(args.wait_quiet)
    mon_sc_sub = time_scorer(scorer, sub_batches)
    mon_sc_n = time_scorer(scorer, n_batches)
    del scorer
    print(f"end:     {bc.load_line()}; before each part: " + ", ".join(f"{k} {v}" for k, v in quiet_log.items()))

    # FLOPs: useful = every row at its own length; executed = what the padded batches compute.
    ls, ln = lengths[: len(sub)], lengths[:n]
    useful_sub, useful_n = bc.forward_flops(hf_cfg, ls), bc.forward_flops(hf_cfg, ln)
    pipe_exec = sum(bc.forward_flops(hf_cfg, ls[i : i + 32], padded=int(ls[i : i + 32].max())) for i in range(0, len(ls), 32))
    sc_exec_sub = bc.packed_flops(hf_cfg, ls, args.batch_size, args.max_tokens)
    sc_exec_n = bc.packed_flops(hf_cfg, ln, args.batch_size, args.max_tokens)

    pipe_rps = len(sub) / mon_pipe.wall_s
    rows = []

    def add(path: str, n_rows: int, seconds: float, others: float | None, useful: float | None = None,
            executed: float | None = None) -> float:
        rps = n_rows / seconds
        rows.append([path, str(n_rows), f"{seconds:.1f}", f"{rps:.1f}", f"{rps / pipe_rps:.2f}x",
                     f"{useful / seconds / 1e9:.1f}" if useful else "-",
                     f"{executed / useful:.2f}" if useful and executed else "-",
                     f"{100 * others:.0f}%" if others is not None else "-"])
        return rps

    add("(a) hf pipeline, batch 32", len(sub), mon_pipe.wall_s, mon_pipe.foreign_share, useful_sub, pipe_exec)
    add("(c) Scorer alone, same rows", len(sub), mon_sc_sub.wall_s, mon_sc_sub.foreign_share, useful_sub, sc_exec_sub)
    add("(c) Scorer alone, N rows", n, mon_sc_n.wall_s, mon_sc_n.foreign_share, useful_n, sc_exec_n)
    add("    tokenize alone (encode_batch), N rows", n, t_tok, None)
    add("(b) bertml.score, N, incl. actor start", n, mon_n.wall_s, mon_n.foreign_share)
    warm_rps = None
    if mon_n10 is not None:
        add("(b) bertml.score, 10N, incl. actor start", n10, mon_n10.wall_s, mon_n10.foreign_share)
        others = (mon_n10.foreign_cpu_s - mon_n.foreign_cpu_s) / max(1e-9, (mon_n10.wall_s - mon_n.wall_s) * os.cpu_count())
        warm_rps = add("(b) bertml.score warm: 9N/(T10N-TN)", n10 - n, mon_n10.wall_s - mon_n.wall_s, others)
    header = [f"path (MiniLM-L6, max_length {args.max_length}, fp32, {os.cpu_count()} threads)",
              "rows", "s", "rows/s", "vs pipeline", "useful GFLOP/s", "exec/useful", "others' CPU"]

    print()
    print(bc.table(rows, header))
    print(f"cold: Ray start + first score() on {args.warmup_rows} rows = {cold_total:.1f} s (score() alone {cold.wall_s:.1f} s)")
    if warm_rps:
        print(f"fixed cost per score() call (actor start, model load, planning) ~ {mon_n.wall_s - n / warm_rps:.1f} s")
    print("(others' CPU: share of the machine's cores used by processes outside this run while it was timed)")
    last = mon_n10 or mon_n
    print(f"cores busy per process during the {'10N' if mon_n10 else 'N'} run: {last.cpu_line()}")
    print()
    mem_rows = [["N", str(n), bc.gib(mon_n.pss), "1.00", bc.gib(mon_n.hwm), "1.00", str(mon_n.procs)]]
    if mon_n10 is not None:
        mem_rows.append(["10N", str(n10), bc.gib(mon_n10.pss), f"{mon_n10.pss / mon_n.pss:.2f}",
                         bc.gib(mon_n10.hwm), f"{mon_n10.hwm / mon_n.hwm:.2f}", str(mon_n10.procs)])
    print(bc.table(mem_rows, ["bertml.score run", "rows", "peak PSS (tree, sampled)", "PSS ratio",
                              "sum of peak RSS (VmHWM)", "ratio", "procs"]))
    for name, mon in (("N", mon_n), ("10N", mon_n10)):
        if mon is not None:
            print(f"  at the {name} peak: " + ", ".join(f"{p} {q / 2**20:.0f} MiB" for p, q in mon.top[:4]))
    if mon_n10 is not None:
        ratio = mon_n10.pss / mon_n.pss
        print(f"memory_ratio_10n_vs_n={ratio:.2f} ({'flat, <= 1.2' if ratio <= 1.2 else 'NOT flat, > 1.2'}; "
              f"peak-RSS bound {mon_n10.hwm / mon_n.hwm:.2f})")
    print()
    print("GPU figures: jobs/bench/gpu.py")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    timed = [mon_pipe, mon_sc_sub, mon_sc_n, mon_n] + ([mon_n10] if mon_n10 else [])
    worst = max(m.foreign_share for m in timed)
    if worst > 0.10:
        print(f"WARNING: other processes used up to {worst:.0%} of the cores during a timed part; "
              "the ratios are skewed: rerun on a quiet machine")
    headline = warm_rps if warm_rps else n / mon_n.wall_s
    print(f"speedup_vs_hf_pipeline={headline / pipe_rps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
