"""Benchmarks: each prints tables of ratios against a baseline measured side by side in the
same run, then `key=value` summary lines. Run from the repository root:

    python -m jobs.bench.quality [key=value ...]   # bertml vs TF-IDF + logistic regression
    python -m jobs.bench.score [--rows N ...]      # scoring on CPU vs transformers.pipeline
    python -m jobs.bench.gpu [--cpu-dry-run ...]   # scoring and a training step on one GPU
    python -m jobs.bench.train [--workers 1,2 ...] # Ray Train samples/s, 1 vs 2 workers
    python -m jobs.bench.scale [--baseline-ref REF ...]  # the driver's cost, 1 vs 2 nodes

`common`, `inputs` and `memory` hold the shared pieces; `gpu_sections` and `scale_*` are parts
of `gpu` and `scale`. Importing any of these modules does no work; tests/test_benchmarks.py
runs each benchmark at tiny sizes.
"""
