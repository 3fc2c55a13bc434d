"""Scoring under process faults: a killed actor, a killed driver, two runs on one output."""

import json
import os
import signal
import sys
import time

import pytest
from relkit import (
    N_SHARDS,
    SCORER_TITLE,
    Background,
    assert_same_scores,
    committed_files,
    hidden_files,
    ray_workers,
    read_output,
    run_until_killed,
    score_cfg,
    session_processes,
    wait_for,
)

from bertml.output import LOCK, MANIFEST, OutputError
from bertml.scoring import score

pytestmark = pytest.mark.reliability


def test_scoring_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, multi_ckpt, corpus, reference, tmp_path):
    """SIGKILL the scoring actor once, after some shards are committed and before the last.

    `ScoreConfig.actor_restarts` (default 3) is passed to the Ray Data actor pool as both
    `max_restarts` (Ray restarts the dead actor, which reloads the checkpoint) and
    `max_task_retries` (the batch it was scoring is sent again). The driver commits a
    shard only once every one of its rows is back, so the run must end with each input id
    exactly once and the same scores as an uninterrupted run.
    """
    folder, ids = corpus
    out = str(tmp_path / "out")
    cfg = score_cfg(multi_ckpt, folder, out, batch_size=4)
    assert cfg.actor_restarts == 3
    earlier = {p.pid for p in ray_workers(SCORER_TITLE)}  # another run's actor, still exiting
    run = Background(score, cfg)
    actor = wait_for(lambda: [p for p in ray_workers(SCORER_TITLE) if p.pid not in earlier]
                     if committed_files(out) else None, 120, "a scoring actor and a first committed shard")
    assert len(actor) == 1, actor
    actor[0].send_signal(signal.SIGKILL)
    committed_at_kill = len(committed_files(out))
    assert not run.done(), "the run finished before the kill: make it longer"
    summary = run.result(timeout=180)
    assert 1 <= committed_at_kill < N_SHARDS  # the kill really landed mid-run
    assert not actor[0].is_running()
    assert summary.rows == len(ids) and summary.shards_scored == N_SHARDS and not summary.shards_skipped
    got = read_output(out)
    assert got.num_rows == len(ids)
    assert_same_scores(got, reference)
    assert hidden_files(out) == [] and not os.path.exists(os.path.join(out, LOCK))


_CHILD = """
import json, sys
from bertml import faults
from bertml.config import ScoreConfig
from bertml.runtime import init_ray
from bertml.scoring import score

cfg, fault, addr_file = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
ray = init_ray(num_cpus=2)
with open(addr_file, "w") as f:
    f.write(ray.get_runtime_context().gcs_address)
with faults.inject(fault):
    score(ScoreConfig(**cfg))
"""


def test_driver_killed_mid_run_then_rerun_equals_uninterrupted(ray_local, multi_ckpt, corpus, reference, tmp_path):
    """A driver SIGKILLed right after its 2nd commit leaves 2 complete shards, a stale lock
    and nothing half-written visible; the re-run takes the lock over, resumes the other
    shards and ends with exactly the output of an uninterrupted run.

    The driver runs in its own process with its own local Ray (no RAY_ADDRESS: `ray.init`
    starts a new cluster rather than joining this session's), in a new session so that
    every Ray process it leaves behind after SIGKILL can be found and ended here.
    """
    folder, ids = corpus
    out, marker, addr_file = str(tmp_path / "out"), str(tmp_path / "fired"), str(tmp_path / "gcs")
    fault = {"point": "score_commit", "committed": 2, "mode": "kill", "marker": marker}
    pid = run_until_killed([sys.executable, "-c", _CHILD, json.dumps({"checkpoint": multi_ckpt, "input": folder,
                                                                      "output": out, "batch_size": 16}),
                            json.dumps(fault), addr_file])
    assert session_processes(pid) == []
    assert os.path.exists(marker)
    with open(addr_file) as f:
        assert f.read() != ray_local.get_runtime_context().gcs_address  # its own cluster

    # What the crash left: 2 committed shards readable in full, a lock naming a dead pid.
    assert len(committed_files(out)) == 2
    partial = read_output(out)
    assert partial.num_rows == 2 * len(ids) // N_SHARDS
    with open(os.path.join(out, LOCK)) as f:
        assert json.load(f)["pid"] == pid
    assert not os.path.exists(os.path.join(out, MANIFEST))
    # A driver killed inside a commit leaves a hidden temp file; plant one: readers skip it.
    with open(os.path.join(out, ".part-005.parquet.tmp-deadbeef"), "wb") as f:
        f.write(b"PAR1 half a file")
    assert read_output(out).num_rows == partial.num_rows

    summary = score(score_cfg(multi_ckpt, folder, out))
    assert summary.shards_resumed == 2 and summary.shards_scored == N_SHARDS - 2
    assert summary.rows == len(ids) - partial.num_rows
    final = read_output(out)
    assert final.num_rows == len(ids)
    assert_same_scores(final, reference)
    assert hidden_files(out) == []  # the planted temp file was cleaned up
    assert not os.path.exists(os.path.join(out, LOCK))  # stale lock taken over, then released
    with open(os.path.join(out, MANIFEST)) as f:
        assert json.load(f)["summary"]["shards_resumed"] == 2


def test_driver_killed_mid_shard_rerun_scores_only_the_units_not_written(ray_local, multi_ckpt, corpus, reference,
                                                                          tmp_path):
    """Units of 4 rows (7 per shard): the driver is SIGKILLed after the 3rd scored part is
    acknowledged, before any shard is complete. The parts on disk are kept: the re-run
    scores only the rows no part holds (at most the units in flight at the kill are lost),
    and its output equals an uninterrupted run's."""
    from bertml.output import PARTS, OutputDir

    folder, ids = corpus
    out, marker = str(tmp_path / "out"), str(tmp_path / "fired")
    cfg = {"checkpoint": multi_ckpt, "input": folder, "output": out, "batch_size": 4, "unit_rows": 4}
    fault = {"point": "score_part", "parts": 3, "mode": "kill", "marker": marker}
    run_until_killed([sys.executable, "-c", _CHILD, json.dumps(cfg), json.dumps(fault), str(tmp_path / "gcs")])
    assert os.path.exists(marker)
    assert committed_files(out) == [] and hidden_files(out) == []  # nothing visible: no shard was complete
    parts = [p for ps in OutputDir(out).parts().values() for p in ps]
    kept_rows = sum(p.rows for p in parts)
    assert len(parts) >= 3 and kept_rows < len(ids)  # the acknowledged parts, and what finished meanwhile

    summary = score(score_cfg(multi_ckpt, folder, out, batch_size=4, unit_rows=4))
    assert summary.rows == len(ids) and summary.shards_scored == N_SHARDS
    assert (summary.parts_resumed, summary.rows_resumed) == (len(parts), kept_rows)
    assert summary.rows - summary.rows_resumed == len(ids) - kept_rows  # the rest, scored once
    assert summary.parts == summary.units  # one part per unit planned: only the missing rows
    assert summary.units == 7 * N_SHARDS - len(parts)  # 7 units of 4 rows a shard (25 rows), less those kept
    final = read_output(out)
    assert final.num_rows == len(ids)
    assert_same_scores(final, reference)
    assert not os.path.exists(os.path.join(out, PARTS)) and hidden_files(out) == []


def test_second_run_on_same_output_is_refused_while_first_holds_lock(ray_local, multi_ckpt, corpus, reference, tmp_path):
    """While a run holds `_bertml.lock`, another run into the same folder (even with
    overwrite=true) is refused at once, before it touches any file; the first run's output
    is complete and equals the expected scores (this is also the suite's uninterrupted run)."""
    folder, ids = corpus
    out = str(tmp_path / "out")
    lock = os.path.join(out, LOCK)
    first = Background(score, score_cfg(multi_ckpt, folder, out, batch_size=8))
    wait_for(lambda: os.path.exists(lock), 60, "the first run's lock")
    t0 = time.perf_counter()
    with pytest.raises(OutputError, match="being written by another bertml run"):
        score(score_cfg(multi_ckpt, folder, out, overwrite=True))  # overwrite must not bypass it
    refused_in = time.perf_counter() - t0
    assert not first.done(), "the first run ended before the second was tried"
    summary = first.result(timeout=180)
    assert refused_in < 5
    assert summary.rows == len(ids) and summary.shards_scored == N_SHARDS
    got = read_output(out)
    assert got.num_rows == len(ids)
    assert_same_scores(got, reference)
    assert not os.path.exists(lock)
