"""Helpers for the reliability suite: corpora, output readers, process handling."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from tiny import make_rows

from bertml.config import ScoreConfig

N_SHARDS, ROWS_PER_SHARD = 16, 25  # the shared corpus: many small shards so runs last a while
SCORER_TITLE = "MapWorker(MapBatches(ScoreWriter))"  # a scoring actor's process title on Ray 2.60


def write_corpus(folder: str, n_shards: int, rows_per_shard: int, seed: int = 100) -> list[str]:
    """`n_shards` Parquet files of (id, text); returns every id, in input order."""
    os.makedirs(folder, exist_ok=True)
    ids: list[str] = []
    for i in range(n_shards):
        rows = make_rows(rows_per_shard, seed=seed + i)
        t = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
        pq.write_table(t, os.path.join(folder, f"part-{i:03d}.parquet"))
        ids += t.column("id").to_pylist()
    return ids


def score_cfg(checkpoint: str, input: str, output: str, **kw) -> ScoreConfig:
    kw.setdefault("batch_size", 16)
    return ScoreConfig(checkpoint=checkpoint, input=input, output=output, **kw)


def read_output(folder: str) -> pa.Table:
    """What a downstream reader sees: a pyarrow dataset over the folder (hidden files ignored)."""
    return pads.dataset(folder, format="parquet").to_table()


def committed_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        out += [os.path.relpath(os.path.join(root, f), folder) for f in files
                if f.endswith(".parquet") and not f.startswith((".", "_"))]
    return sorted(out)


def hidden_files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder)
                  for f in fs if f.startswith("."))


def by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    return {r["id"]: r for r in rows}


def assert_same_scores(got: pa.Table, want: pa.Table) -> None:
    """Same ids (each once), same status/tags, probabilities equal within float noise."""
    g_ids, w_ids = got.column("id").to_pylist(), want.column("id").to_pylist()
    assert len(g_ids) == len(set(g_ids)), "duplicate ids in the output"
    assert sorted(g_ids) == sorted(w_ids)
    g, w = by_id(got), by_id(want)
    for i in w_ids:
        assert g[i]["status"] == w[i]["status"], i
        assert g[i]["tags"] == w[i]["tags"], i
        np.testing.assert_allclose(g[i]["probs"], w[i]["probs"], atol=1e-5, err_msg=i)


class Background:
    """Run `fn(*args)` in a daemon thread (a hung run cannot hang pytest's exit)."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self._value = fn(*args)
        except BaseException as e:  # handed to result()
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"still running after {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._value


def wait_for(cond, timeout: float, what: str, every: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ray_workers(title: str) -> list[psutil.Process]:
    """This test process's Ray worker processes whose process title contains `title`.

    Ray sets a worker's title to `ray::<actor class>[.<method>]`; a Ray Data actor pool
    of `ScoreWriter` shows as `ray::MapWorker(MapBatches(ScoreWriter))` (`.submit` while busy).
    """
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if title in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes in session `sid` (a subprocess started with start_new_session=True)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def run_until_killed(argv: list[str], timeout: float = 240) -> int:
    """Run a driver process (no RAY_ADDRESS: its own local Ray, in a new session) that an
    injected fault SIGKILLs; assert it died so, end every Ray process it left behind, and
    return its pid (that session's id)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = child.communicate(timeout=timeout)
        assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        kill_processes(session_processes(child.pid))  # raylet/gcs/workers orphaned by SIGKILL
    return child.pid


def kill_processes(procs) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs), timeout=10)
