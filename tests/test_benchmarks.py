"""The benchmarks in jobs/bench/ run: each entry at tiny sizes on the CPU, printing its
`key=value` summary lines. Smoke runs, not timings: at these sizes the figures mean nothing.

The runs call each benchmark's `main(argv)` in this process, on the session's Ray (a
benchmark joins a running Ray and leaves it running); `python -m jobs.bench.<name>` itself is
checked from the repository root with --help (and bench gpu's no-GPU exit). Those checks
take seconds; each smoke run starts Ray actors, Ray Train runs or child processes (over
30 s each: `slow`, still in CI's run).
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRIES = ("gpu", "quality", "scale", "score", "train")  # the modules run as python -m jobs.bench.<name>


@pytest.fixture(autouse=True)
def _logger_levels_restored():
    """The benchmarks run in this process and quiet the `bertml` and Ray loggers for their
    tables (`jobs.bench.common.quiet`); later tests must find them as they were."""
    names = ("bertml", "ray", "ray.data", "ray.train")
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


def key_values(out: str) -> dict[str, str]:
    """The `key=value` lines of a benchmark's output."""
    return dict(re.findall(r"^([a-z0-9_]+)=([^\s;,]+)", out, re.M))


def test_every_benchmark_module_imports():
    import jobs.bench

    names = {m.name for m in pkgutil.iter_modules(jobs.bench.__path__)}
    assert set(ENTRIES) <= names
    for name in sorted(names):
        module = importlib.import_module(f"jobs.bench.{name}")
        if name in ENTRIES:
            assert callable(module.main), name


@pytest.mark.parametrize("name", ENTRIES)
def test_runs_as_a_module_from_the_repository_root(name):
    done = subprocess.run([sys.executable, "-m", f"jobs.bench.{name}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout or "python -m jobs.bench." in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real benchmark")
def test_gpu_without_cuda_exits_cleanly_saying_so():
    done = subprocess.run([sys.executable, "-m", "jobs.bench.gpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no GPU" in done.stdout


def test_gpu_section_that_raises_is_reported_and_fails_the_run(capsys):
    from jobs.bench import gpu

    res = {"gpu": "none"}
    lines = gpu.run_sections([("A", lambda: 1 / 0), ("B", lambda: ["B  ran"])], res, None)
    assert res["failures"] == ["A: ZeroDivisionError: division by zero"]
    assert lines == ["A  failed: ZeroDivisionError: division by zero", "B  ran"]  # the next section still ran
    assert gpu.report(res, lines) == 1
    out = capsys.readouterr()
    assert "FAILED (1): A: ZeroDivisionError" in out.out
    assert "jobs.bench.gpu: failed: A: ZeroDivisionError" in out.err


@pytest.mark.slow
def test_gpu_cpu_dry_run_runs_every_section(ray_local, capsys):
    from jobs.bench import gpu

    rc = gpu.main(["--cpu-dry-run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "failed" not in out
    for header in ("A  96 skewed rows", "B  Scorer", "C  skewed corpus", "D  end to end", "E  training"):
        assert header in out
    assert float(key_values(out)["gpu_mfu_bert_base_seq128"]) > 0


@pytest.mark.slow
def test_score_benchmark(ray_local, capsys):
    from jobs.bench import score

    rc = score.main(["--rows", "8", "--pipeline-rows", "8", "--warmup-rows", "0", "--max-length", "64",
                     "--rows-per-shard", "40", "--wait-quiet", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    kv = key_values(out)
    float(kv["speedup_vs_hf_pipeline"])  # at 8 and 80 rows the warm rate is noise, even negative
    assert float(kv["memory_ratio_10n_vs_n"]) > 0


@pytest.mark.slow
def test_train_benchmark(ray_local, capsys):
    from jobs.bench import train

    # --gpu-*: tiny on a CUDA machine too, where the GPU section runs.
    rc = train.main(["--workers", "1,2", "--n-docs", "20", "--snippet-words", "10", "--max-length", "32",
                     "--epochs", "2", "--batch-size", "4", "--wait-quiet", "0",
                     "--gpu-docs", "40", "--gpu-batch", "4", "--gpu-steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert float(key_values(out)["ratio_2w_vs_1w"]) > 0


@pytest.mark.slow
def test_quality_benchmark(ray_local, tiny_encoder, tmp_path, capsys):
    from jobs.bench import quality

    rc = quality.main(["splits=bbc", "n_docs=40", "epochs=1", "num_workers=1", f"model={tiny_encoder}",
                       "max_length=32", "batch_size=8", f"out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("bbc: "))
    assert set(key_values(line.removeprefix("bbc: ").replace(" ", "\n"))) == {
        "tfidf_micro", "tfidf_macro", "bertml05_micro", "bertml05_macro", "tuned_micro", "tuned_macro"}


@pytest.mark.slow
def test_scale_benchmark_local_part(capsys):
    from jobs.bench import scale

    # Each run is a fresh child process with its own Ray: two runs (N and 10N, no text).
    rc = scale.main(["--skip-baseline", "--only", "local", "--text", "without", "--rows", "64", "--shards", "2",
                     "--wait-quiet", "0", "--idle-probe-s", "0", "--timeout", "600"])
    out = capsys.readouterr().out
    assert rc == 0, out
    kv = key_values(out)
    assert float(kv["driver_cpu_s_per_mrow"]) > 0
    assert float(kv["driver_rss_ratio_10x"]) > 0


def test_scale_headlines_from_one_text_case(capsys):
    from jobs.bench.scale_report import print_headlines

    def run(side, rows, cpu_s, hwm, **kw):
        return {"side": side, "rows_in": rows, "cpu_s": cpu_s, "hwm": hwm, "wall_s": rows / 1000, **kw}

    results = [run("candidate", 100, 0.5, 100, size="N", text=False),
               run("candidate", 1000, 2.0, 110, size="10N", text=False),  # --text without: no text=True runs
               run("candidate", 1000, 1.0, 1, n_nodes=1), run("candidate", 1000, 1.0, 1, n_nodes=2),
               run("baseline", 100, 0.5, 100, size="N", text=False),
               run("baseline", 1000, 4.0, 120, size="10N", text=False)]
    print_headlines(results)
    kv = key_values(capsys.readouterr().out)
    assert kv == {"driver_cpu_s_per_mrow": "2000.000", "driver_rss_ratio_10x": "1.100", "two_node_vs_one": "1.000",
                  "baseline_driver_cpu_s_per_mrow": "4000.000", "baseline_driver_rss_ratio_10x": "1.200",
                  "driver_cpu_vs_baseline": "0.500"}
