"""Training benchmark (issue 3): samples/s with 1 vs 2 Ray Train workers, side by side.

    .venv/bin/python -m jobs.bench.train                      # ~5-6 min on 2 CPU cores
    .venv/bin/python -m jobs.bench.train --n-docs 200         # quicker, noisier
    .venv/bin/python -m jobs.bench.train --gpu-report --peak-flops 989e12   # on a GPU box

CPU part: `bertml.train.train` fine-tunes MiniLM-L6 (the packaged all-MiniLM-L6-v2,
6 layers, hidden 384) on the BBC multi-label corpus (`bertml.corpus.build_bbc_multilabel`,
--n-docs documents split 70/15/15, 40-word snippets), max_length 128, the same
per-worker batch for both runs (so 2 workers step on a 2x global batch: data-parallel
weak scaling), CPU only. samples_per_s is what the training loop reports per epoch
(all ranks' samples / the epoch's train time, validation excluded); epochs >= 2 are
averaged so warm-up (first-batch allocation, Ray Data start) is left out.

GPU part (with CUDA or --gpu-report): BERT-base (BertConfig() defaults, random init)
at seq 128 in bf16 on one GPU: (1) `bertml.train.train`, one Ray Train GPU worker, on
BBC documents long enough that every row is truncated to 128 tokens; (2) the library's
`optimizer_step` in a plain loop on pre-tokenized tensors (no Ray, no tokenizer): the
model's ceiling. MFU = samples/s x 3 x forward FLOPs per row / --peak-flops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from jobs.bench import common as bc
from jobs.bench import inputs
from jobs.bench.memory import TreeMemory


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts to compare (the first is the baseline)")
    p.add_argument("--n-docs", type=int, default=560, help="BBC documents (70%% train, 15%% validation)")
    p.add_argument("--snippet-words", type=int, default=40, help="words per article in a document")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help=">= 2; epochs >= 2 are averaged")
    p.add_argument("--batch-size", type=int, default=16, help="rows per worker per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=60, help="before each run, wait up to this many s "
                   "for the machine to be idle (shared boxes); 0: don't wait")
    p.add_argument("--workdir", default=None, help="keep corpus/runs here (default: a temp folder, deleted)")
    p.add_argument("--gpu-report", action="store_true", help="run the GPU section (skipped without CUDA)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="accelerator peak FLOP/s for MFU (H100 bf16 dense)")
    p.add_argument("--gpu-docs", type=int, default=12000, help="GPU section: BBC documents for bertml.train")
    p.add_argument("--gpu-batch", type=int, default=64, help="GPU section: rows per step")
    p.add_argument("--gpu-steps", type=int, default=50, help="GPU section: timed steps of the plain loop")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is warm-up)")
    return a


def train_config(work: str, data: str, model: str, tag: str, *, workers: int, use_gpu: bool, max_length: int,
                 epochs: int, batch: int, seed: int, precision: str = "auto"):
    from bertml.config import TrainConfig, from_dict

    return from_dict(TrainConfig, {
        "data": {"train": os.path.join(data, "train"), "validation": os.path.join(data, "validation")},
        "model": {"name": model, "max_length": max_length},
        "optim": {"epochs": epochs, "batch_size": batch, "lr": 1e-4, "seed": seed, "precision": precision},
        "scaling": {"num_workers": workers, "use_gpu": use_gpu},
        "run": {"name": f"bench-{tag}", "storage_path": os.path.join(work, f"runs-{tag}"),
                "output": os.path.join(work, f"model-{tag}"), "keep_checkpoints": 1, "max_failures": 0},
    })


def steady(history: list[dict]) -> float:
    """Mean samples_per_s over epochs >= 2."""
    return float(np.mean([h["samples_per_s"] for h in history if h["epoch"] >= 2]))


def mean_tokens(model: str, folder: str, max_length: int) -> float:
    import pyarrow.parquet as pq

    from bertml.model import load_tokenizer

    texts = pq.read_table(folder, columns=["text"]).column("text").to_pylist()
    enc = load_tokenizer(model)(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                                return_token_type_ids=False)
    return float(np.mean([len(x) for x in enc["input_ids"]]))


def collate_rows_per_s(model: str, folder: str, max_length: int, batch: int, n_batches: int = 20) -> float:
    """Rows/s of the training loop's collate (tokenize_for_training) alone, in this thread."""
    import pyarrow.parquet as pq

    from bertml.model import load_tokenizer
    from bertml.tokenization import tokenize_for_training

    tok = load_tokenizer(model)
    texts = pq.read_table(folder, columns=["text"]).column("text").to_pylist()[: batch * n_batches]
    tokenize_for_training(tok, texts[:batch], max_length)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        tokenize_for_training(tok, texts[i : i + batch], max_length)
    return len(texts) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- GPU


def gpu_section(args, work: str, encoder: str) -> list[str]:
    import torch
    from transformers import BertConfig

    if not torch.cuda.is_available():
        return ["GPU section skipped: CUDA is not available on this machine."]
    from bertml.corpus import build_bbc_multilabel
    from bertml.train import train

    seq = 128
    base = inputs.random_bert_encoder(os.path.join(work, "bert_base"), encoder)
    data = os.path.join(work, "data_gpu")
    # 3 articles x 150 words: every document is well past 128 tokens, so every batch is [B, 128].
    build_bbc_multilabel(data, seed=args.seed, n_docs=args.gpu_docs, snippet_words=150, shard_rows=2000)
    fwd = bc.forward_flops(BertConfig(), [seq])
    rows, header = [], ["GPU: BERT-base train, bf16, seq 128", "batch", "samples/s", "TFLOP/s", "MFU"]

    cfg = train_config(work, data, base, "gpu", workers=1, use_gpu=True, max_length=seq, epochs=2,
                       batch=args.gpu_batch, seed=args.seed, precision="bf16")
    res = train(cfg)
    sps = steady(res.history)
    rows.append([f"bertml.train, 1 Ray Train worker ({torch.cuda.get_device_name(0)})", str(args.gpu_batch),
                 f"{sps:.0f}", f"{sps * 3 * fwd / 1e12:.1f}", f"{100 * sps * 3 * fwd / args.peak_flops:.1f}%"])

    sps_loop = bc.plain_loop(base, seq, args.gpu_batch, args.gpu_steps, args.seed, torch.device("cuda"))
    rows.append(["optimizer_step loop, pre-tokenized, no Ray", str(args.gpu_batch), f"{sps_loop:.0f}",
                 f"{sps_loop * 3 * fwd / 1e12:.1f}", f"{100 * sps_loop * 3 * fwd / args.peak_flops:.1f}%"])
    tok_rps = collate_rows_per_s(base, os.path.join(data, "train"), seq, args.gpu_batch)
    rows.append(["collate alone (tokenize_for_training, 1 thread)", str(args.gpu_batch), f"{tok_rps:.0f}", "-", "-"])
    return [bc.table(rows, header),
            f"(MFU = samples/s x 3 x {fwd / 1e9:.2f} GFLOP fwd/row / peak {args.peak_flops:.3g} FLOP/s)"]


# ----------------------------------------------------------------------------- main


def prepare(args, work: str) -> tuple[str, str, float]:
    """The encoder and the BBC corpus under `work`; forward FLOPs of a mean-length row."""
    from transformers import AutoConfig

    from bertml.corpus import build_bbc_multilabel
    from bertml.demo import resolve_model

    encoder = resolve_model("minilm")
    data = os.path.join(work, "data")
    corpus = build_bbc_multilabel(data, seed=args.seed, n_docs=args.n_docs, snippet_words=args.snippet_words)
    toks = mean_tokens(encoder, os.path.join(data, "train"), args.max_length)
    print(f"data:    BBC multi-label, {corpus['rows']['train']} train / {corpus['rows']['validation']} validation rows, "
          f"{len(corpus['labels'])} labels, {toks:.0f} tokens/row (max_length {args.max_length}); "
          f"model MiniLM-L6 (all-MiniLM-L6-v2)")
    return encoder, data, bc.forward_flops(AutoConfig.from_pretrained(encoder), [toks])


def cpu_runs(args, work: str, data: str, encoder: str) -> list[tuple]:
    """`bertml.train.train` once per worker count: (workers, CPUs and threads per worker,
    history, tree memory peak) each."""
    from bertml.train import _worker_cpus, train

    results = []
    for w in (int(x) for x in args.workers.split(",")):
        cfg = train_config(work, data, encoder, f"{w}w", workers=w, use_gpu=False, max_length=args.max_length,
                           epochs=args.epochs, batch=args.batch_size, seed=args.seed)
        cpus, threads = _worker_cpus(cfg)
        print(f"run {w}w: machine {bc.wait_quiet(args.wait_quiet)}")
        with TreeMemory() as mon:
            res = train(cfg)
        results.append((w, cpus, threads, res.history, mon.peak))
        print(f"run {w}w: {bc.load_line()}; per epoch samples/s "
              + ", ".join(f"{h['samples_per_s']:.2f}" for h in res.history))
    return results


def cpu_table(args, results: list[tuple], fwd_row: float, tok_rps: float) -> None:
    base = steady(results[0][3])
    rows = []
    for w, cpus, threads, history, mon in results:
        sps = steady(history)
        rows.append([f"{w} worker{'s' if w > 1 else ''}", f"{cpus:g}", str(threads), f"{history[0]['samples_per_s']:.2f}",
                     f"{sps:.2f}", f"{sps / base:.2f}", f"{sps * 3 * fwd_row / 1e9:.1f}", f"{mon.wall_s:.0f}",
                     f"{100 * mon.foreign_share:.0f}%"])
    header = [f"Ray Train, CPU, MiniLM-L6, batch {args.batch_size}/worker", "CPU/worker", "threads/worker",
              "epoch 1 samples/s", "epochs>=2 samples/s", f"vs {results[0][0]}w", "~GFLOP/s", "fit() s", "others' CPU"]
    print()
    print(bc.table(rows, header))
    print("(~GFLOP/s = samples/s x 3 x forward FLOPs at the mean unpadded length; fit() s includes Ray Train "
          "start-up, validation and checkpoints; others' CPU = share of the cores used outside this run)")
    print(f"collate alone (tokenize_for_training, batch {args.batch_size}, 1 thread): {tok_rps:.0f} rows/s")
    for w, _, _, _, mon in results:
        print(f"cores busy per process, {w}w run: {mon.cpu_line(4)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_train_")
    os.makedirs(work, exist_ok=True)
    print(f"machine: {bc.machine()}")
    print(f"start:   {bc.load_line()}")
    try:
        encoder, data, fwd_row = prepare(args, work)
        tok_rps = collate_rows_per_s(encoder, os.path.join(data, "train"), args.max_length, args.batch_size)
        with bc.ray_session():
            results = cpu_runs(args, work, data, encoder)
            # The GPU run (if any) goes first so that every Ray log line is out before the tables.
            gpu_lines = (gpu_section(args, work, encoder) if args.gpu_report or _cuda()
                         else ["GPU section skipped: CUDA is not available (pass --gpu-report on a GPU machine)."])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cpu_table(args, results, fwd_row, tok_rps)
    print()
    print("\n".join(gpu_lines))
    worst = max(r[4].foreign_share for r in results)
    if worst > 0.10:
        print(f"WARNING: other processes used up to {worst:.0%} of the cores during a run; rerun on a quiet machine")
    if len(results) > 1:
        w, _, _, history, _ = results[-1]
        print(f"ratio_{w}w_vs_{results[0][0]}w={steady(history) / steady(results[0][3]):.2f}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
