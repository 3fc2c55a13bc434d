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
  D  `bertml.score.score` end to end through Ray Data (read -> tokenize on CPU tasks ->
     one GPU actor -> Parquet commit) on N and 3N rows of that corpus, default config;
     "warm" = 2N / (T(3N) - T(N)); GPU busy = share of samples where the GPU was busy
  E  training: `bertml.train.optimizer_step` (bf16 autocast, AdamW, clipping) in a plain
     loop on fixed tensors, seq 128; MFU counts 3x the forward FLOPs
The last line is `gpu_mfu_bert_base_seq128=<executed MFU of the shipped path>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from jobs.bench import common as bc


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
        a.rows, a.batch, a.skewed_rows, a.pipeline_rows, a.e2e_rows, a.train_batch, a.train_steps = 64, 32, 96, 32, 300, 4, 2
    return a


TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int = 2):
    """Seconds of one call of fn() after `warmup` calls, GPU synchronised around it."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def fixed_batch(rows: int, seq: int, seed: int):
    """An Arrow batch as the tokenize stage makes it: `rows` rows of one `seq`-token window."""
    import pyarrow as pa

    ids = np.random.default_rng(seed).integers(1000, 30000, size=(rows, seq), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    offsets = np.arange(rows + 1, dtype=np.int32)
    windows = pa.ListArray.from_arrays(pa.array(offsets * seq), pa.array(ids.ravel()))
    return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), windows),
                     "status": pa.array(["ok"] * rows)})


def synthetic_texts(words: list[str], n: int, seed: int, long_frac: float = 0.2) -> list[str]:
    """Length-skewed texts of vocabulary words: 80% 10-40 words, `long_frac` 200-600 words."""
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_frac
    sizes = rng.integers(np.where(is_long, 200, 10), np.where(is_long, 600, 40) + 1)
    pool = np.array(words, dtype=object)
    flat = pool[rng.integers(0, len(pool), size=int(sizes.sum()))]
    ends = np.cumsum(sizes)
    return [" ".join(flat[e - k : e]) for e, k in zip(ends, sizes)]


class GpuBusy:
    """Samples torch.cuda.utilization() every 0.25 s in a thread: share of busy samples."""

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        import torch

        while not self._stop.wait(0.25):
            try:
                self.samples.append(torch.cuda.utilization(0))
            except Exception:  # noqa: BLE001 - no NVML: no figure
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


# ----------------------------------------------------------------------------- sections


def section_a(ckpt: str, texts: list[str], res: dict) -> list[str]:
    import pyarrow as pa

    from bertml.model import load_tokenizer
    from bertml.scorer import Scorer
    from bertml.tokenization import encode_batch

    ids, status = encode_batch(load_tokenizer(ckpt), texts, 256)
    batch = pa.table({"input_ids": ids, "status": pa.array(status, pa.string())})
    probs = lambda sc: np.array(sc(batch).column("probs").to_pylist(), dtype=np.float64)  # noqa: E731
    shipped = probs(Scorer(ckpt, precision="bf16"))
    fp32_full = probs(Scorer(ckpt, precision="fp32", cls_only=False))
    fp32_cls = probs(Scorer(ckpt, precision="fp32"))
    res["A"] = {"rows": len(texts), "bf16_vs_fp32_max_abs": float(np.abs(shipped - fp32_full).max()),
                "bf16_vs_fp32_mean_abs": float(np.abs(shipped - fp32_full).mean()),
                "cls_vs_full_fp32_max_abs": float(np.abs(fp32_cls - fp32_full).max()),
                "tags_changed_at_0.5": float(((shipped >= 0.5) != (fp32_full >= 0.5)).any(1).mean())}
    a = res["A"]
    return [f"A  {len(texts)} skewed rows, probabilities: shipped bf16 vs fp32 max |diff| {a['bf16_vs_fp32_max_abs']:.2e} "
            f"(mean {a['bf16_vs_fp32_mean_abs']:.1e}); [CLS]-only vs full, fp32: max |diff| {a['cls_vs_full_fp32_max_abs']:.1e}; "
            f"rows whose tags at 0.5 differ bf16 vs fp32: {a['tags_changed_at_0.5']:.2%} (random head: probs sit near 0.5)"]


def section_b(ckpt: str, args, res: dict, only_compile: bool = False) -> list[str]:
    import torch
    from transformers import BertConfig

    from bertml.scorer import Scorer

    seq, rows = args.seq, args.rows
    batch = fixed_batch(args.batch, seq, args.seed)
    n_calls = max(1, rows // args.batch)
    full = bc.forward_flops(BertConfig(), [seq])
    cls = bc.forward_flops(BertConfig(), [seq], cls_only=True)

    def autocast_fp32_weights():
        sc = Scorer(ckpt, precision="fp32", cls_only=False, max_tokens=131072)
        plain = sc.forward

        def fwd(ids, mask):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return plain(ids, mask)
        sc.forward = fwd
        return sc

    variants = [
        ("previous: fp32 weights + bf16 autocast, full forward", autocast_fp32_weights, full),
        ("bf16 weights, full forward", lambda: Scorer(ckpt, precision="bf16", cls_only=False, max_tokens=131072), full),
        ("shipped: bf16 weights, [CLS]-only last layer", lambda: Scorer(ckpt, precision="bf16", max_tokens=131072), cls),
        ("shipped, max_tokens 65536", lambda: Scorer(ckpt, precision="bf16", max_tokens=65536), cls),
        ("shipped, max_tokens 262144", lambda: Scorer(ckpt, precision="bf16", max_tokens=262144), cls),
    ]
    if only_compile:  # section F, last: compilation is the slowest step here
        variants = variants[2:3] + [("shipped + compile=True", lambda: Scorer(ckpt, precision="bf16", max_tokens=131072,
                                                                             compile=True), cls)]
    key = "F" if only_compile else "B"
    table, res[key] = [], []
    for name, make, flops in variants:
        try:
            t_build = time.perf_counter()
            sc = make()
            sc(batch)  # first call: allocations, cuBLAS heuristics, compilation
            first = time.perf_counter() - t_build
            secs = timed(lambda sc=sc: [sc(batch) for _ in range(n_calls)], warmup=1)
            rps = n_calls * args.batch / secs
            rec = {"variant": name, "rows_per_s": rps, "tflops": rps * flops / 1e12, "mfu": rps * flops / args.peak_flops,
                   "model_mfu": rps * full / args.peak_flops, "first_call_s": first}
            res[key].append(rec)
            table.append([name, f"{rps:,.0f}", f"{rec['tflops']:.0f}", f"{100 * rec['mfu']:.1f}%",
                          f"{100 * rec['model_mfu']:.1f}%", f"{first:.1f}"])
            del sc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - one failed variant must not hide the others
            table.append([name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "", "", ""])
    if not only_compile:
        shape = TINY if args.cpu_dry_run else {}
        rps = gemm_only_rows_per_s(BertConfig(**shape), seq, 131072 // seq if not shape else 8)
        res["B_gemm_only"] = {"rows_per_s": rps, "mfu": rps * full / args.peak_flops}
        table.append(["reference: the encoder's matmuls alone (cuBLAS)", f"{rps:,.0f}", f"{rps * full / 1e12:.0f}",
                      f"{100 * rps * full / args.peak_flops:.1f}%", "-", "-"])
        res[key].append({"variant": "gemm-only reference", "rows_per_s": rps})
    base = res[key][0]["rows_per_s"] if res[key] else None
    for row, rec in zip(table, res[key]):
        row.insert(2, f"{rec['rows_per_s'] / base:.2f}x" if base else "-")
    hdr = [f"{key}  Scorer, BERT-base, seq {seq}, {args.batch} rows/call", "rows/s", "vs 1st row", "TFLOP/s (exec)",
           "MFU (exec)", "model MFU", "1st call s"]
    return [bc.table(table, hdr),
            f"   executed {cls / 1e9:.2f} GFLOP/row [CLS]-only, {full / 1e9:.2f} full; peak {args.peak_flops:.3g} FLOP/s"]


def gemm_only_rows_per_s(config, seq: int, rows: int, reps: int = 5) -> float:
    """rows/s of only the encoder's six matmuls per layer (bf16, with bias) at [rows*seq, d]:
    what no eager implementation can beat; the gap to it is elementwise and attention work."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    d, inter = config.hidden_size, config.intermediate_size
    x = torch.randn(rows * seq, d, device=dev, dtype=dt)
    h = torch.randn(rows * seq, inter, device=dev, dtype=dt)
    w = {k: (torch.randn(o, i, device=dev, dtype=dt) * 0.02, torch.zeros(o, device=dev, dtype=dt))
         for k, (i, o) in {"qkvo": (d, d), "up": (d, inter), "down": (inter, d)}.items()}
    f = torch.nn.functional.linear

    def forward():
        for _ in range(config.num_hidden_layers):
            for _ in range(4):
                f(x, *w["qkvo"])
            f(x, *w["up"])
            f(h, *w["down"])
    secs = timed(lambda: [forward() for _ in range(reps)], warmup=1)
    return reps * rows / secs


def section_c(ckpt: str, texts: list[str], args, res: dict) -> list[str]:
    import torch
    from transformers import AutoConfig, pipeline

    from bertml.config import GPU_BATCH
    from bertml.model import load_tokenizer
    from bertml.scorer import Scorer
    from jobs.bench.score import pretokenize, token_lengths

    lengths = token_lengths(load_tokenizer(ckpt), texts, 256)
    cfg = AutoConfig.from_pretrained(ckpt)
    useful = bc.forward_flops(cfg, lengths)
    rows, res["C"] = [], {"rows": len(texts), "mean_tokens": float(lengths.mean())}
    sc = Scorer(ckpt, precision="bf16", max_tokens=GPU_BATCH[1])
    shipped_slack = sc.slack
    for batch_rows, slack in ((GPU_BATCH[0], 1.15), (GPU_BATCH[0], 1.5), (GPU_BATCH[0], 2.0), (4 * GPU_BATCH[0], 1.5)):
        batches, _ = pretokenize(ckpt, texts, 256, batch_rows)
        sc.slack = slack
        secs = timed(lambda sc=sc, batches=batches: [sc(b) for b in batches], warmup=1)
        res["C"][f"scorer_{batch_rows}_{slack}"] = len(texts) / secs
        tag = " (shipped)" if (batch_rows, slack) == (GPU_BATCH[0], shipped_slack) else ""
        rows.append([f"Scorer alone, {batch_rows} rows/call, slack {slack}{tag}", str(len(texts)),
                     f"{len(texts) / secs:,.0f}", f"{useful / secs / 1e12:.0f}"])
    del sc
    sub = texts[: args.pipeline_rows]
    cuda = torch.cuda.is_available()
    pipe = pipeline("text-classification", model=ckpt, top_k=None, device=0 if cuda else -1,
                    dtype=torch.bfloat16 if cuda else torch.float32,
                    truncation=True, max_length=256)
    pipe(sub[:64], batch_size=32)
    sync()
    t0 = time.perf_counter()
    pipe(sub, batch_size=32)
    sync()
    pipe_rps = len(sub) / (time.perf_counter() - t0)
    res["C"]["hf_pipeline"] = pipe_rps
    rows.append(["hf pipeline, bf16, batch 32", str(len(sub)), f"{pipe_rps:,.0f}",
                 f"{bc.forward_flops(cfg, lengths[: len(sub)]) * pipe_rps / len(sub) / 1e12:.0f}"])
    res["C"]["speedup_vs_pipeline"] = res["C"][f"scorer_{GPU_BATCH[0]}_{shipped_slack}"] / pipe_rps
    for r in rows:
        r.append(f"{float(r[2].replace(',', '')) / pipe_rps:.1f}x")
    hdr = [f"C  skewed corpus, mean {lengths.mean():.0f} tokens/row, max_length 256", "rows", "rows/s",
           "useful TFLOP/s", "vs pipeline"]
    return [bc.table(rows, hdr)]


def section_d(ckpt: str, words: list[str], work: str, args, res: dict) -> list[str]:
    import ray.data

    from bertml.config import ScoreConfig
    from bertml.runtime import init_ray
    from bertml.score import score

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    n = args.e2e_rows
    texts = synthetic_texts(words, 3 * n, args.seed + 1)
    for name, rows in (("warmup", texts[:2000]), ("n", texts[:n]), ("n3", texts)):
        bc.write_shards(rows, os.path.join(work, "data", name), rows_per_shard=10000, row_group_rows=2000)
    out, res["D"] = [], {}
    for name in ("warmup", "n", "n3"):
        cfg = ScoreConfig(checkpoint=ckpt, input=os.path.join(work, "data", name),
                          output=os.path.join(work, "out", name), overwrite=True)
        with GpuBusy() as busy:
            t0 = time.perf_counter()
            summary = score(cfg)
            secs = time.perf_counter() - t0
        res["D"][name] = {"rows": summary.rows, "s": secs, "rows_per_s": summary.rows / secs, "gpu_busy": busy.mean}
    d = res["D"]
    warm = 2 * n / (d["n3"]["s"] - d["n"]["s"])
    d["warm_rows_per_s"] = warm
    for name in ("n", "n3"):
        r = d[name]
        out.append([f"bertml.score, {name.upper()}, incl. actor start", str(r["rows"]), f"{r['s']:.1f}",
                    f"{r['rows_per_s']:,.0f}", f"{100 * r['gpu_busy']:.0f}%" if r["gpu_busy"] is not None else "-"])
    out.append(["bertml.score warm: 2N/(T3N-TN)", str(2 * n), f"{d['n3']['s'] - d['n']['s']:.1f}", f"{warm:,.0f}", "-"])
    ray.shutdown()
    return [bc.table(out, ["D  end to end, Ray Data, 1 GPU actor, default config", "rows", "s", "rows/s", "GPU busy"]),
            f"   cold: Ray start + first score() on {d['warmup']['rows']:,} rows {d['warmup']['s']:.1f} s; "
            f"CPUs {os.cpu_count()}"]


def section_e(work: str, tokenizer: str, shape: dict, args, res: dict) -> list[str]:
    import torch
    from transformers import BertConfig

    from jobs.bench.train import plain_loop

    enc = bc.random_bert_encoder(os.path.join(work, "bert_base_encoder"), tokenizer, **shape)
    ns = argparse.Namespace(gpu_batch=args.train_batch, gpu_steps=args.train_steps, seed=args.seed)
    sps = plain_loop(enc, args.seq, ns, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    fwd = bc.forward_flops(BertConfig(), [args.seq])
    res["E"] = {"samples_per_s": sps, "mfu": sps * 3 * fwd / args.peak_flops}
    return [bc.table([[f"optimizer_step loop, batch {args.train_batch}", f"{sps:,.0f}", f"{sps * 3 * fwd / 1e12:.0f}",
                       f"{100 * res['E']['mfu']:.1f}%"]],
                     [f"E  training, BERT-base, seq {args.seq}, bf16 autocast", "samples/s", "TFLOP/s", "MFU"])]


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("jobs.bench.gpu: CUDA is not available on this machine; nothing to measure (--cpu-dry-run checks the script).")
        return 0
    from bertml.model import load_tokenizer

    if args.tokenizer is None:
        from bertml.demo import resolve_model

        args.tokenizer = resolve_model("minilm")
    work = tempfile.mkdtemp(prefix="bench_gpu_")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU DRY RUN: figures meaningless"
    res: dict = {"machine": bc.machine(), "gpu": gpu, "args": vars(args)}
    print(f"machine: {res['machine']}")
    shape = TINY if args.cpu_dry_run else {}
    ckpt = bc.random_bert_checkpoint(os.path.join(work, "bert_base"), args.tokenizer, 10, 256, **shape)
    words = [w for w in load_tokenizer(args.tokenizer).get_vocab() if w.isascii() and w.isalpha() and len(w) > 2]
    skewed = synthetic_texts(words, args.skewed_rows, args.seed)
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    sections = [("A", lambda: section_a(ckpt, skewed[:512], res)), ("D", lambda: section_d(ckpt, words, work, args, res)),
                ("B", lambda: section_b(ckpt, args, res)), ("C", lambda: section_c(ckpt, skewed, args, res)),
                ("E", lambda: section_e(work, args.tokenizer, shape, args, res))]
    if args.compile:
        sections.append(("F", lambda: section_b(ckpt, args, res, only_compile=True)))
    lines = []
    for key, run in sections:
        if key in skip:
            continue
        t0 = time.perf_counter()
        try:
            part = run()
        except Exception as e:  # noqa: BLE001 - report and go on to the next section
            traceback.print_exc()
            part = [f"{key}  failed: {type(e).__name__}: {e}"]
        res.setdefault("seconds", {})[key] = time.perf_counter() - t0
        print("\n".join(part), flush=True)
        lines += part
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(res, f, indent=2, default=str)
    print("\n" + "=" * 20 + f" {res['gpu']} " + "=" * 20)
    print("\n\n".join(lines))
    shipped = next((r for r in res.get("B", []) if r["variant"].startswith("shipped:")), None)
    if shipped:
        print(f"gpu_mfu_bert_base_seq128={shipped['mfu']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
