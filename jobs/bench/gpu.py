"""GPU benchmark (issue 4): scoring speed and MFU on one GPU, side by side, plus a training step.

    python -m jobs.bench.gpu                                  # ~4 min on one H100/H200
    python -m jobs.bench.gpu --tokenizer path/to/bert-tokenizer --compile --json out.json

Needs CUDA; nothing here downloads. Models are random-init BERT-base (BertConfig()
defaults: 12 layers, hidden 768) with a 10-label multi-label head and the uncased
WordPiece tokenizer given by --tokenizer (default: the packaged all-MiniLM-L6-v2's, the
same 30,522-token vocab as bert-base-uncased). Sections, each timed with a synchronised
clock after warm-up:

  A  correctness: the shipped bf16 path vs fp32 on the same GPU (max |diff| of probs),
     and the [CLS]-only last layer vs the full forward in fp32
  B  Scorer alone, every row 128 tokens (the issue's fixed shape): the previous path
     (fp32 weights + bf16 autocast, full forward) side by side with the shipped one
     (bf16 weights, [CLS]-only last layer) and other token budgets; F (--compile, run
     last) adds torch.compile.
     MFU = executed forward FLOPs x rows/s / --peak-flops; "model MFU" counts the full
     forward (12 layers for every token) for the same rows/s
  C  Scorer alone on a length-skewed corpus (80% 10-40 words, 20% 200-600 words,
     max_length 256) vs the naive baseline, transformers.pipeline("text-classification",
     top_k=None, dtype=bf16) in batches of 32 on the same GPU
  D  `bertml.scoring.score` end to end through Ray Data (read -> tokenize on CPU tasks ->
     one GPU actor -> Parquet commit) on N and 3N rows of that corpus, default config;
     "warm" = 2N / (T(3N) - T(N)); GPU busy = share of samples where the GPU was busy
  E  training: `bertml.train_loop.optimizer_step` (bf16 autocast, AdamW, clipping) in a plain
     loop on fixed tensors, seq 128; MFU counts 3x the forward FLOPs
The last line is `gpu_mfu_bert_base_seq128=<executed MFU of the shipped path>`.

A section that raises (or a variant of B/F that fails) prints its error and the run goes on
with the next; at the end the failures are listed again and the exit status is 1. Without
CUDA the script prints a "no GPU" line and exits 0; --cpu-dry-run runs every section at tiny
sizes on the CPU (figures meaningless: it checks the script, as tests/test_benchmarks.py does).
The sections are in `jobs.bench.gpu_sections`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

from jobs.bench import common as bc
from jobs.bench import gpu_sections as gs
from jobs.bench import inputs

NO_GPU = ("jobs.bench.gpu: no GPU (CUDA is not available on this machine): nothing measured; "
          "--cpu-dry-run runs every section at tiny sizes on the CPU")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", default=None, help="a BERT WordPiece tokenizer folder (default: the packaged MiniLM's)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s (H100/H200 SXM: 989e12)")
    p.add_argument("--rows", type=int, default=65536, help="B: rows timed per variant")
    p.add_argument("--batch", type=int, default=4096, help="B: rows per Scorer call")
    p.add_argument("--seq", type=int, default=128, help="B: tokens per row")
    p.add_argument("--skewed-rows", type=int, default=16384, help="C: rows of the length-skewed corpus")
    p.add_argument("--pipeline-rows", type=int, default=4096, help="C: rows through the hf pipeline")
    p.add_argument("--e2e-rows", type=int, default=100000, help="D: N (the second run scores 3N)")
    p.add_argument("--train-batch", type=int, default=128, help="E: rows per step")
    p.add_argument("--train-steps", type=int, default=30, help="E: timed steps")
    p.add_argument("--compile", action="store_true", help="B: also time Scorer(compile=True)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip (A,B,C,D,E)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-dry-run", action="store_true", help="check the script itself on a CPU: tiny model and "
                   "sizes, figures meaningless")
    a = p.parse_args(argv)
    if a.cpu_dry_run:
        a.rows, a.batch, a.skewed_rows, a.pipeline_rows, a.e2e_rows, a.train_batch, a.train_steps = 64, 32, 96, 32, 64, 4, 2
    return a


def run_sections(sections: list[tuple[str, object]], res: dict, json_path: str | None) -> list[str]:
    """Run each (key, fn) in order and print its lines; one that raises prints its traceback and
    a `<key>  failed: ...` line, is listed in `res["failures"]`, and the next one runs."""
    lines = []
    for key, run in sections:
        t0 = time.perf_counter()
        try:
            part = run()
        except Exception as e:  # noqa: BLE001 - report, go on to the next section, exit 1 at the end
            traceback.print_exc()
            part = [f"{key}  failed: {gs.failed(res, key, e)}"]
        res.setdefault("seconds", {})[key] = time.perf_counter() - t0
        print("\n".join(part), flush=True)
        lines += part
        if json_path:
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(res, f, indent=2, default=str)
    return lines


def plan(args, work: str, res: dict) -> list[tuple[str, object]]:
    """Build the checkpoint and corpus; the sections to run, in order, as (key, fn)."""
    from bertml.model import load_tokenizer

    shape = gs.TINY if args.cpu_dry_run else {}
    ckpt = inputs.random_bert_checkpoint(os.path.join(work, "bert_base"), args.tokenizer, 10, 256, **shape)
    words = [w for w in load_tokenizer(args.tokenizer).get_vocab() if w.isascii() and w.isalpha() and len(w) > 2]
    skewed = inputs.synthetic_texts(words, args.skewed_rows, args.seed)
    sections = [("A", lambda: gs.section_a(ckpt, skewed[:512], res)), ("D", lambda: gs.section_d(ckpt, words, work, args, res)),
                ("B", lambda: gs.section_b(ckpt, args, res)), ("C", lambda: gs.section_c(ckpt, skewed, args, res)),
                ("E", lambda: gs.section_e(work, args.tokenizer, shape, args, res))]
    if args.compile:
        sections.append(("F", lambda: gs.section_b(ckpt, args, res, only_compile=True)))
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    return [(key, run) for key, run in sections if key not in skip]


def report(res: dict, lines: list[str]) -> int:
    """The summary: every section's lines again, the failures, then the MFU line; exit status."""
    print("\n" + "=" * 20 + f" {res['gpu']} " + "=" * 20)
    print("\n\n".join(lines))
    failures = res.get("failures", [])
    if failures:
        print(f"\nFAILED ({len(failures)}): " + "; ".join(failures))
        print("jobs.bench.gpu: failed: " + "; ".join(failures), file=sys.stderr)
    shipped = next((r for r in res.get("B", []) if r["variant"].startswith("shipped:")), None)
    if shipped:
        print(f"gpu_mfu_bert_base_seq128={shipped['mfu']:.3f}")
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print(NO_GPU)
        return 0
    if args.tokenizer is None:
        from bertml.demo import resolve_model

        args.tokenizer = resolve_model("minilm")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU DRY RUN: figures meaningless"
    res: dict = {"machine": bc.machine(), "gpu": gpu, "args": vars(args)}
    print(f"machine: {res['machine']}")
    work = tempfile.mkdtemp(prefix="bench_gpu_")
    try:
        lines = run_sections(plan(args, work, res), res, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(res, lines)


if __name__ == "__main__":
    sys.exit(main())
