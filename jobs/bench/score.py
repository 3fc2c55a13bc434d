"""Scoring benchmark (issue 4): bertml vs a naive `transformers.pipeline`, side by side.

    .venv/bin/python -m jobs.bench.score                       # ~3-4 min on 2 idle CPU cores
    .venv/bin/python -m jobs.bench.score --rows 200 --pipeline-rows 64   # quick look
    .venv/bin/python -m jobs.bench.score --rows 8 --pipeline-rows 8 --warmup-rows 0 --wait-quiet 0  # smoke

Model: MiniLM-L6 (the packaged all-MiniLM-L6-v2) with a fresh 10-label multi-label head,
thresholds 0.5, max_length 256 (flag), saved as a bertml checkpoint in a temp folder.
Corpus: length-skewed English cut from the BBC articles (80% 10-40 words, 20% 200-600
words; seeded), written as Parquet shards with an `id` column.

Paths timed, all on the same texts:
  (a) hf pipeline       transformers.pipeline("text-classification", top_k=None), batch 32,
                        on the first --pipeline-rows rows of the corpus (it is slow)
  (c) Scorer alone      bertml.scoring.infer.Scorer called in-process on pre-tokenized Arrow
                        batches (--batch-size rows each), no Ray: the in-actor speed
  (b) bertml score      end to end through Ray Data (read -> tokenize -> Scorer actor ->
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
from jobs.bench import inputs
from jobs.bench.memory import MemoryPeak, TreeMemory


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=600, help="N: corpus rows for the Ray run (10*N for the memory check)")
    p.add_argument("--pipeline-rows", type=int, default=256, help="rows timed through the hf pipeline (a prefix of the corpus)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text (checkpoint max_length)")
    p.add_argument("--long-frac", type=float, default=0.2, help="fraction of long (200-600 word) texts")
    p.add_argument("--rows-per-shard", type=int, default=200, help="rows per input Parquet shard")
    p.add_argument("--batch-size", type=int, default=256, help="ScoreConfig.batch_size (rows per Scorer call)")
    p.add_argument("--max-tokens", type=int, default=16384, help="ScoreConfig.max_tokens (token budget per forward pass)")
    p.add_argument("--warmup-rows", type=int, default=32, help="rows of the Ray warm-up (cold) run; 0: no warm-up "
                   "run (the Ray start and first actor are then inside N's time)")
    p.add_argument("--no-10x", action="store_true", help="skip the 10*N run (no memory ratio, no warm rate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=60, help="before each timed part, wait up to this many s "
                   "for the machine to be idle (shared boxes); 0: don't wait")
    p.add_argument("--workdir", default=None, help="keep checkpoint/corpus/outputs here (default: a temp folder, deleted)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- pieces


def time_pipeline(ckpt: str, texts: list[str], max_length: int, batch: int = 32) -> MemoryPeak:
    """The naive hf pipeline over `texts` (after a 2-row warm-up); .wall_s is its time."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=ckpt, top_k=None, device=-1, truncation=True, max_length=max_length)
    pipe(texts[:2], batch_size=2)
    with TreeMemory() as mon:
        out = pipe(texts, batch_size=batch)
    assert len(out) == len(texts) and len(out[0]) == 10, "pipeline returned an unexpected shape"
    del pipe
    gc.collect()
    return mon.peak


def time_scorer(scorer, batches) -> MemoryPeak:
    scorer(batches[0].slice(0, 4))  # warm-up
    with TreeMemory() as mon:
        n = sum(scorer(b).num_rows for b in batches)
    assert n == sum(b.num_rows for b in batches)
    return mon.peak


def run_score(ckpt: str, data: str, out: str, args) -> tuple[MemoryPeak, object]:
    """One bertml.scoring.score() call: peak tree memory (.wall_s: its time), summary."""
    from bertml.config import ScoreConfig
    from bertml.scoring import score

    cfg = ScoreConfig(checkpoint=ckpt, input=data, output=out, overwrite=True,
                      batch_size=args.batch_size, max_tokens=args.max_tokens)
    with TreeMemory() as mon:
        summary = score(cfg)
    return mon.peak, summary


# ----------------------------------------------------------------------------- the three paths


def build_inputs(args, work: str) -> tuple[str, list[str], np.ndarray]:
    """The checkpoint, the 10N texts as Parquet sets (warmup, n, n10) and their token lengths."""
    from bertml.demo import resolve_model
    from bertml.model import load_tokenizer

    ckpt = inputs.pretrained_checkpoint(os.path.join(work, "ckpt"), resolve_model("minilm"), 10, args.max_length)
    n = args.rows
    texts = inputs.skewed_texts(10 * n, args.seed, args.long_frac)
    sets = {"warmup": texts[: args.warmup_rows], "n": texts[:n], "n10": texts}
    for name, rows in sets.items():
        if rows:
            inputs.write_shards(rows, os.path.join(work, "data", name), args.rows_per_shard)
    lengths = inputs.token_lengths(load_tokenizer(ckpt), texts, args.max_length)
    print(f"corpus:  {10 * n} rows, {args.long_frac:.0%} long; tokens/row mean {lengths[:n].mean():.0f}, "
          f"median {np.median(lengths[:n]):.0f}, {np.mean(lengths[:n] >= args.max_length):.0%} truncated at "
          f"{args.max_length}; checkpoint MiniLM-L6 + 10-label head at {ckpt}")
    return ckpt, texts, lengths


def ray_path(args, work: str, ckpt: str, quiet_log: dict) -> dict:
    """(b) bertml score through Ray Data: the cold warm-up, then N and 10N. Peaks by name."""
    quiet_log["ray"] = bc.wait_quiet(args.wait_quiet)
    one = lambda name: run_score(ckpt, os.path.join(work, "data", name), os.path.join(work, "out", name), args)  # noqa: E731
    runs: dict = {"n10": None}
    init_t0 = time.perf_counter()
    with bc.ray_session():
        if args.warmup_rows:
            runs["cold"], _ = one("warmup")
            runs["cold_total_s"] = time.perf_counter() - init_t0
        runs["n"], sum_n = one("n")
        assert sum_n.rows == args.rows, sum_n.format()
        if not args.no_10x:
            runs["n10"], sum_n10 = one("n10")
            assert sum_n10.rows == 10 * args.rows, sum_n10.format()
    return runs


def in_process_paths(args, ckpt: str, texts: list[str], quiet_log: dict) -> dict:
    """(a) the hf pipeline and (c) the Scorer alone, in this process, on the same texts."""
    from bertml.scoring.infer import Scorer

    sub = texts[: args.pipeline_rows]
    quiet_log["pipeline"] = bc.wait_quiet(args.wait_quiet)
    runs = {"pipe": time_pipeline(ckpt, sub, args.max_length)}
    sub_batches, _ = inputs.pretokenize(ckpt, sub, args.max_length, args.batch_size)
    n_batches, runs["tokenize_s"] = inputs.pretokenize(ckpt, texts[: args.rows], args.max_length, args.batch_size)
    scorer = Scorer(ckpt, max_tokens=args.max_tokens, torch_threads=os.cpu_count())
    quiet_log["scorer"] = bc.wait_quiet(args.wait_quiet)
    runs["sc_sub"] = time_scorer(scorer, sub_batches)
    runs["sc_n"] = time_scorer(scorer, n_batches)
    return runs


# ----------------------------------------------------------------------------- report


def speed_table(args, ckpt: str, lengths: np.ndarray, ray: dict, local: dict) -> tuple[float, float | None]:
    """Print the rows/s table (FLOPs: useful = every row at its own length; executed = what the
    padded batches compute); returns the pipeline's rows/s and bertml score's warm rate (None
    without 10N)."""
    from transformers import AutoConfig

    hf_cfg = AutoConfig.from_pretrained(ckpt)
    n, n_sub, pipe = args.rows, min(args.pipeline_rows, len(lengths)), local["pipe"]
    ls, ln = lengths[:n_sub], lengths[:n]
    useful_sub = bc.forward_flops(hf_cfg, ls)
    pipe_exec = sum(bc.forward_flops(hf_cfg, ls[i : i + 32], padded=int(ls[i : i + 32].max())) for i in range(0, len(ls), 32))
    pipe_rps, rows = n_sub / pipe.wall_s, []

    def add(path: str, n_rows: int, seconds: float, others: float | None, useful: float | None = None,
            executed: float | None = None) -> float:
        rps = n_rows / seconds
        rows.append([path, str(n_rows), f"{seconds:.1f}", f"{rps:.1f}", f"{rps / pipe_rps:.2f}x",
                     f"{useful / seconds / 1e9:.1f}" if useful else "-",
                     f"{executed / useful:.2f}" if useful and executed else "-",
                     f"{100 * others:.0f}%" if others is not None else "-"])
        return rps

    add("(a) hf pipeline, batch 32", n_sub, pipe.wall_s, pipe.foreign_share, useful_sub, pipe_exec)
    for label, mon, k, ln_k in (("same rows", local["sc_sub"], n_sub, ls), ("N rows", local["sc_n"], n, ln)):
        add(f"(c) Scorer alone, {label}", k, mon.wall_s, mon.foreign_share, bc.forward_flops(hf_cfg, ln_k),
            bc.packed_flops(hf_cfg, ln_k, args.batch_size, args.max_tokens))
    add("    tokenize alone (encode_batch), N rows", n, local["tokenize_s"], None)
    mon_n, mon_n10 = ray["n"], ray["n10"]
    add("(b) bertml score, N, incl. actor start", n, mon_n.wall_s, mon_n.foreign_share)
    warm_rps = None
    if mon_n10 is not None:
        add("(b) bertml score, 10N, incl. actor start", 10 * n, mon_n10.wall_s, mon_n10.foreign_share)
        others = (mon_n10.foreign_cpu_s - mon_n.foreign_cpu_s) / max(1e-9, (mon_n10.wall_s - mon_n.wall_s) * os.cpu_count())
        warm_rps = add("(b) bertml score warm: 9N/(T10N-TN)", 9 * n, mon_n10.wall_s - mon_n.wall_s, others)
    header = [f"path (MiniLM-L6, max_length {args.max_length}, fp32, {os.cpu_count()} threads)",
              "rows", "s", "rows/s", "vs pipeline", "useful GFLOP/s", "exec/useful", "others' CPU"]
    print()
    print(bc.table(rows, header))
    return pipe_rps, warm_rps


def memory_lines(args, ray: dict, warm_rps: float | None) -> None:
    """Print the cold start, the fixed cost per call, CPU per process, and the memory table."""
    n, mon_n, mon_n10 = args.rows, ray["n"], ray["n10"]
    if "cold" in ray:
        print(f"cold: Ray start + first score() on {args.warmup_rows} rows = {ray['cold_total_s']:.1f} s "
              f"(score() alone {ray['cold'].wall_s:.1f} s)")
    if warm_rps:
        print(f"fixed cost per score() call (actor start, model load, planning) ~ {mon_n.wall_s - n / warm_rps:.1f} s")
    print("(others' CPU: share of the machine's cores used by processes outside this run while it was timed)")
    last = mon_n10 or mon_n
    print(f"cores busy per process during the {'10N' if mon_n10 else 'N'} run: {last.cpu_line()}")
    print()
    mem_rows = [["N", str(n), bc.gib(mon_n.pss), "1.00", bc.gib(mon_n.hwm), "1.00", str(mon_n.procs)]]
    if mon_n10 is not None:
        mem_rows.append(["10N", str(10 * n), bc.gib(mon_n10.pss), f"{mon_n10.pss / mon_n.pss:.2f}",
                         bc.gib(mon_n10.hwm), f"{mon_n10.hwm / mon_n.hwm:.2f}", str(mon_n10.procs)])
    print(bc.table(mem_rows, ["bertml score run", "rows", "peak PSS (tree, sampled)", "PSS ratio",
                              "sum of peak RSS (VmHWM)", "ratio", "procs"]))
    for name, mon in (("N", mon_n), ("10N", mon_n10)):
        if mon is not None:
            print(f"  at the {name} peak: " + ", ".join(f"{p} {q / 2**20:.0f} MiB" for p, q in mon.top[:4]))
    if mon_n10 is not None:
        ratio = mon_n10.pss / mon_n.pss
        print(f"memory_ratio_10n_vs_n={ratio:.2f} ({'flat, <= 1.2' if ratio <= 1.2 else 'NOT flat, > 1.2'}; "
              f"peak-RSS bound {mon_n10.hwm / mon_n.hwm:.2f})")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_score_")
    os.makedirs(work, exist_ok=True)
    print(f"machine: {bc.machine()}")
    print(f"start:   {bc.load_line()}")
    try:
        ckpt, texts, lengths = build_inputs(args, work)
        quiet_log: dict = {}
        ray = ray_path(args, work, ckpt, quiet_log)
        local = in_process_paths(args, ckpt, texts, quiet_log)
        print(f"end:     {bc.load_line()}; before each part: " + ", ".join(f"{k} {v}" for k, v in quiet_log.items()))
        pipe_rps, warm_rps = speed_table(args, ckpt, lengths, ray, local)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    memory_lines(args, ray, warm_rps)
    print()
    print("GPU figures: jobs/bench/gpu.py")
    timed = [local["pipe"], local["sc_sub"], local["sc_n"], ray["n"]] + ([ray["n10"]] if ray["n10"] else [])
    worst = max(m.foreign_share for m in timed)
    if worst > 0.10:
        print(f"WARNING: other processes used up to {worst:.0%} of the cores during a timed part; "
              "the ratios are skewed: rerun on a quiet machine")
    headline = warm_rps if warm_rps else args.rows / ray["n"].wall_s
    print(f"speedup_vs_hf_pipeline={headline / pipe_rps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
