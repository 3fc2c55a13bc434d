"""The sections of `jobs.bench.gpu` (its docstring says what each measures).

Each section takes the checkpoint or folders it needs, the parsed arguments and the results
dict; it fills `res[<letter>]` and returns its printed lines. A variant that fails inside a
section is listed in `res["failures"]` (the run exits non-zero) and the section goes on.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from jobs.bench import common as bc
from jobs.bench import inputs

# --cpu-dry-run: a BERT small enough for a CPU, shaped like the real one.
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}


def failed(res: dict, what: str, e: BaseException) -> str:
    """Record `what` failed with `e` in `res["failures"]`; returns the error in one line."""
    first = str(e).splitlines()[0] if str(e) else ""
    error = f"{type(e).__name__}: {first[:200]}"
    res.setdefault("failures", []).append(f"{what}: {error}")
    return error


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
            except Exception:  # noqa: BLE001 - no NVML (or no GPU): no figure
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


# ----------------------------------------------------------------------------- A: correctness


def section_a(ckpt: str, texts: list[str], res: dict) -> list[str]:
    import pyarrow as pa

    from bertml.model import load_tokenizer
    from bertml.scoring.infer import Scorer
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


# ----------------------------------------------------------------------------- B and F: fixed shape


def scorer_variants(ckpt: str, full: float, cls: float, only_compile: bool) -> list[tuple]:
    """(name, make a Scorer, executed FLOPs per row) for section B, or F with `only_compile`."""
    import torch

    from bertml.scoring.infer import Scorer

    def autocast_fp32_weights():
        sc = Scorer(ckpt, precision="fp32", cls_only=False, max_tokens=131072)
        plain = sc.forward

        def fwd(ids, mask):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return plain(ids, mask)
        sc.forward = fwd
        return sc

    shipped = ("shipped: bf16 weights, [CLS]-only last layer", lambda: Scorer(ckpt, precision="bf16", max_tokens=131072), cls)
    if only_compile:  # section F, last: compilation is the slowest step here
        return [shipped, ("shipped + compile=True", lambda: Scorer(ckpt, precision="bf16", max_tokens=131072,
                                                                   compile=True), cls)]
    return [
        ("previous: fp32 weights + bf16 autocast, full forward", autocast_fp32_weights, full),
        ("bf16 weights, full forward", lambda: Scorer(ckpt, precision="bf16", cls_only=False, max_tokens=131072), full),
        shipped,
        ("shipped, max_tokens 65536", lambda: Scorer(ckpt, precision="bf16", max_tokens=65536), cls),
        ("shipped, max_tokens 262144", lambda: Scorer(ckpt, precision="bf16", max_tokens=262144), cls),
    ]


def time_variant(name: str, make, flops: float, full: float, batch, n_calls: int, args) -> dict:
    """One Scorer variant on `n_calls` calls of `batch`: rows/s, TFLOP/s, MFUs, first call s."""
    import torch

    t_build = time.perf_counter()
    sc = make()
    sc(batch)  # first call: allocations, cuBLAS heuristics, compilation
    first = time.perf_counter() - t_build
    secs = bc.timed(lambda sc=sc: [sc(batch) for _ in range(n_calls)], warmup=1)
    rps = n_calls * batch.num_rows / secs
    del sc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"variant": name, "rows_per_s": rps, "tflops": rps * flops / 1e12, "mfu": rps * flops / args.peak_flops,
            "model_mfu": rps * full / args.peak_flops, "first_call_s": first}


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
    secs = bc.timed(lambda: [forward() for _ in range(reps)], warmup=1)
    return reps * rows / secs


def section_b(ckpt: str, args, res: dict, only_compile: bool = False) -> list[str]:
    from transformers import BertConfig

    seq, key = args.seq, "F" if only_compile else "B"
    batch = inputs.fixed_batch(args.batch, seq, args.seed)
    n_calls = max(1, args.rows // args.batch)
    full = bc.forward_flops(BertConfig(), [seq])
    cls = bc.forward_flops(BertConfig(), [seq], cls_only=True)
    res[key], timed_rows = [], []  # [(table row, its record or None)]
    for name, make, flops in scorer_variants(ckpt, full, cls, only_compile):
        try:
            rec = time_variant(name, make, flops, full, batch, n_calls, args)
        except Exception as e:  # noqa: BLE001 - one failed variant must not hide the others
            timed_rows.append(([name, f"failed: {failed(res, f'{key} {name}', e)[:80]}", "", "", "", ""], None))
            continue
        res[key].append(rec)
        timed_rows.append(([name, f"{rec['rows_per_s']:,.0f}", f"{rec['tflops']:.0f}", f"{100 * rec['mfu']:.1f}%",
                            f"{100 * rec['model_mfu']:.1f}%", f"{rec['first_call_s']:.1f}"], rec))
    if not only_compile:
        shape = TINY if args.cpu_dry_run else {}
        rps = gemm_only_rows_per_s(BertConfig(**shape), seq, 131072 // seq if not shape else 8)
        res["B_gemm_only"] = {"rows_per_s": rps, "mfu": rps * full / args.peak_flops}
        rec = {"variant": "gemm-only reference", "rows_per_s": rps}
        res[key].append(rec)
        timed_rows.append((["reference: the encoder's matmuls alone (cuBLAS)", f"{rps:,.0f}", f"{rps * full / 1e12:.0f}",
                            f"{100 * rps * full / args.peak_flops:.1f}%", "-", "-"], rec))
    base = res[key][0]["rows_per_s"] if res[key] else None
    table = [row[:2] + [f"{rec['rows_per_s'] / base:.2f}x" if rec and base else "-"] + row[2:] for row, rec in timed_rows]
    hdr = [f"{key}  Scorer, BERT-base, seq {seq}, {args.batch} rows/call", "rows/s", "vs 1st row", "TFLOP/s (exec)",
           "MFU (exec)", "model MFU", "1st call s"]
    return [bc.table(table, hdr),
            f"   executed {cls / 1e9:.2f} GFLOP/row [CLS]-only, {full / 1e9:.2f} full; peak {args.peak_flops:.3g} FLOP/s"]


# ----------------------------------------------------------------------------- C: skewed corpus


def time_pipeline_rows_per_s(ckpt: str, texts: list[str]) -> float:
    """rows/s of transformers.pipeline("text-classification") in batches of 32 (bf16 on CUDA)."""
    import torch
    from transformers import pipeline

    cuda = torch.cuda.is_available()
    pipe = pipeline("text-classification", model=ckpt, top_k=None, device=0 if cuda else -1,
                    dtype=torch.bfloat16 if cuda else torch.float32, truncation=True, max_length=256)
    pipe(texts[:64], batch_size=32)
    bc.sync()
    t0 = time.perf_counter()
    pipe(texts, batch_size=32)
    bc.sync()
    return len(texts) / (time.perf_counter() - t0)


def section_c(ckpt: str, texts: list[str], args, res: dict) -> list[str]:
    from transformers import AutoConfig

    from bertml.config import GPU_BATCH
    from bertml.model import load_tokenizer
    from bertml.scoring.infer import Scorer

    lengths = inputs.token_lengths(load_tokenizer(ckpt), texts, 256)
    cfg = AutoConfig.from_pretrained(ckpt)
    useful = bc.forward_flops(cfg, lengths)
    rows, res["C"] = [], {"rows": len(texts), "mean_tokens": float(lengths.mean())}
    sc = Scorer(ckpt, precision="bf16", max_tokens=GPU_BATCH[1])
    shipped_slack = sc.slack
    for batch_rows, slack in ((GPU_BATCH[0], 1.15), (GPU_BATCH[0], 1.5), (GPU_BATCH[0], 2.0), (4 * GPU_BATCH[0], 1.5)):
        batches, _ = inputs.pretokenize(ckpt, texts, 256, batch_rows)
        sc.slack = slack
        secs = bc.timed(lambda sc=sc, batches=batches: [sc(b) for b in batches], warmup=1)
        res["C"][f"scorer_{batch_rows}_{slack}"] = len(texts) / secs
        tag = " (shipped)" if (batch_rows, slack) == (GPU_BATCH[0], shipped_slack) else ""
        rows.append([f"Scorer alone, {batch_rows} rows/call, slack {slack}{tag}", str(len(texts)),
                     f"{len(texts) / secs:,.0f}", f"{useful / secs / 1e12:.0f}"])
    del sc
    sub = texts[: args.pipeline_rows]
    pipe_rps = res["C"]["hf_pipeline"] = time_pipeline_rows_per_s(ckpt, sub)
    rows.append(["hf pipeline, bf16, batch 32", str(len(sub)), f"{pipe_rps:,.0f}",
                 f"{bc.forward_flops(cfg, lengths[: len(sub)]) * pipe_rps / len(sub) / 1e12:.0f}"])
    res["C"]["speedup_vs_pipeline"] = res["C"][f"scorer_{GPU_BATCH[0]}_{shipped_slack}"] / pipe_rps
    for r in rows:
        r.append(f"{float(r[2].replace(',', '')) / pipe_rps:.1f}x")
    hdr = [f"C  skewed corpus, mean {lengths.mean():.0f} tokens/row, max_length 256", "rows", "rows/s",
           "useful TFLOP/s", "vs pipeline"]
    return [bc.table(rows, hdr)]


# ----------------------------------------------------------------------------- D: end to end


def section_d(ckpt: str, words: list[str], work: str, args, res: dict) -> list[str]:
    from bertml.config import ScoreConfig
    from bertml.scoring import score

    n = args.e2e_rows
    texts = inputs.synthetic_texts(words, 3 * n, args.seed + 1)
    # --cpu-dry-run skips the warm-up run: the Ray start is then inside N's time.
    runs = {"n": texts[:n], "n3": texts} if args.cpu_dry_run else {"warmup": texts[:2000], "n": texts[:n], "n3": texts}
    for name, rows in runs.items():
        inputs.write_shards(rows, os.path.join(work, "data", name), rows_per_shard=10000, row_group_rows=2000)
    res["D"] = d = {}
    with bc.ray_session():
        for name in runs:
            cfg = ScoreConfig(checkpoint=ckpt, input=os.path.join(work, "data", name),
                              output=os.path.join(work, "out", name), overwrite=True)
            with GpuBusy() as busy:
                t0 = time.perf_counter()
                summary = score(cfg)
                secs = time.perf_counter() - t0
            d[name] = {"rows": summary.rows, "s": secs, "rows_per_s": summary.rows / secs, "gpu_busy": busy.mean}
    warm = d["warm_rows_per_s"] = 2 * n / (d["n3"]["s"] - d["n"]["s"])
    out = []
    for name in ("n", "n3"):
        r = d[name]
        out.append([f"bertml score, {name.upper()}, incl. actor start", str(r["rows"]), f"{r['s']:.1f}",
                    f"{r['rows_per_s']:,.0f}", f"{100 * r['gpu_busy']:.0f}%" if r["gpu_busy"] is not None else "-"])
    out.append(["bertml score warm: 2N/(T3N-TN)", str(2 * n), f"{d['n3']['s'] - d['n']['s']:.1f}", f"{warm:,.0f}", "-"])
    cold = (f"   cold: Ray start + first score() on {d['warmup']['rows']:,} rows {d['warmup']['s']:.1f} s"
            if "warmup" in d else "   cold: no warm-up run (--cpu-dry-run)")
    return [bc.table(out, ["D  end to end, Ray Data, 1 GPU actor, default config", "rows", "s", "rows/s", "GPU busy"]),
            f"{cold}; CPUs {os.cpu_count()}"]


# ----------------------------------------------------------------------------- E: training step


def section_e(work: str, tokenizer: str, shape: dict, args, res: dict) -> list[str]:
    import torch
    from transformers import BertConfig

    enc = inputs.random_bert_encoder(os.path.join(work, "bert_base_encoder"), tokenizer, **shape)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sps = bc.plain_loop(enc, args.seq, args.train_batch, args.train_steps, args.seed, dev)
    fwd = bc.forward_flops(BertConfig(), [args.seq])
    res["E"] = {"samples_per_s": sps, "mfu": sps * 3 * fwd / args.peak_flops}
    return [bc.table([[f"optimizer_step loop, batch {args.train_batch}", f"{sps:,.0f}", f"{sps * 3 * fwd / 1e12:.0f}",
                       f"{100 * res['E']['mfu']:.1f}%"]],
                     [f"E  training, BERT-base, seq {args.seq}, bf16 autocast", "samples/s", "TFLOP/s", "MFU"])]

