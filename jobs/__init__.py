"""Ray-job entry points (`python jobs/train.py ...`) and the benchmarks (`jobs.bench`).

Not part of the installed `bertml` package: run from the repository root.
"""
