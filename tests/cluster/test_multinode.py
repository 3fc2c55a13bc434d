"""bertml on a real 2-node Ray cluster on this machine (`ray.cluster_utils.Cluster`).

Placement is asserted from Ray's own records (the GCS actor table and task events), not
from logs. Both nodes share this machine's filesystem, so a node that does not see the
driver's folders is made with a private mount namespace (`unshare -m` + an empty tmpfs
over one folder) for the path checks. The test removing a node runs last in the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from clusterkit import node_of_actors, node_of_tasks
from tiny import make_rows

pytestmark = pytest.mark.multinode

N_SHARDS, ROWS = 8, 40


def write_corpus(folder: str, n: int = N_SHARDS, rows: int = ROWS, seed: int = 500) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    ids = []
    for i in range(n):
        r = make_rows(rows, seed=seed + i)
        t = pa.table({"id": [x["id"] for x in r], "text": [x["text"] for x in r]})
        pq.write_table(t, os.path.join(folder, f"part-{i:03d}.parquet"), row_group_size=16)
        ids += t.column("id").to_pylist()
    return ids


def read_output(folder: str) -> pa.Table:
    return pads.dataset(folder, format="parquet").to_table()


def test_cluster_has_two_nodes_with_their_own_cpus(two_nodes):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len({n["NodeID"] for n in nodes}) == 2
    assert [n["Resources"]["CPU"] for n in nodes] == [2.0, 2.0]


def test_scoring_runs_read_tasks_and_actors_on_both_nodes_each_row_once(two_nodes, multi_ckpt, tmp_path):
    from bertml.config import ScoreConfig
    from bertml.scoring import score

    ids = write_corpus(str(tmp_path / "in"))
    tasks_before = node_of_tasks("ReadUnits")
    summary = score(ScoreConfig(checkpoint=multi_ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                batch_size=8, num_actors=2))
    got = read_output(str(tmp_path / "out"))
    assert summary.rows == len(ids) and got.column("id").to_pylist() == ids  # each row once, in order
    actors = node_of_actors("MapBatches(ScoreWriter)")
    tasks = {n: c - tasks_before.get(n, 0) for n, c in node_of_tasks("ReadUnits").items()}
    nodes = {n.node_id for n in [two_nodes.head_node, two_nodes.worker]}
    assert set(actors) == nodes, actors  # one scoring actor on each node
    assert {n for n, c in tasks.items() if c > 0} == nodes, tasks  # read/tokenize tasks on both
    assert sum(tasks.values()) >= summary.units


def _ddp_cfg(tiny_encoder, tmp_path, name):
    from test_train import _ddp_loop  # noqa: F401  (the loop of tests/test_train.py)
    from tiny import make_rows as rows_of

    from bertml.labels import LabelSet

    rows = rows_of(48, seed=4)
    labels = LabelSet(("money", "sport", "tech", "体育"))
    return {"encoder": tiny_encoder, "labels": list(labels.names), "texts": [r["text"] for r in rows],
            "targets": labels.encode([r["labels"] for r in rows], None).tolist(), "global_batch": 16, "steps": 3,
            "accum": 1, "out": str(tmp_path / f"{name}.safetensors")}


@pytest.mark.slow
def test_training_one_worker_per_node_and_ddp_equivalence_on_that_layout(two_nodes, tiny_encoder, tmp_path):
    """bertml train with placement_strategy=SPREAD and cpus_per_worker=1 (the layout that
    hung: Ray Data's read stage keeps a CPU) puts one worker on each node; on the same
    layout, 2 DDP ranks take exactly the steps of 1 worker with the double batch."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file
    from test_train import _ddp_loop
    from tiny import write_parquet

    from bertml.config import TrainConfig, load
    from bertml.train import train

    nodes = {n.node_id for n in [two_nodes.head_node, two_nodes.worker]}
    data = write_parquet(make_rows(200, seed=7), str(tmp_path / "data" / "train.parquet"))
    before = node_of_actors("RayTrainWorker")
    result = train(load(TrainConfig, None, [
        f"data.train={data}", f"model.name={tiny_encoder}", "model.max_length=32", "optim.epochs=1",
        "optim.batch_size=16", "scaling.num_workers=2", "scaling.placement_strategy=SPREAD",
        "scaling.cpus_per_worker=1", f"run.storage_path={tmp_path}/runs", f"run.output={tmp_path}/model"]))
    assert os.path.exists(os.path.join(result.checkpoint, "bertml.json"))
    workers = {n: c - before.get(n, 0) for n, c in node_of_actors("RayTrainWorker").items()}
    assert {n for n, c in workers.items() if c} == nodes and sum(workers.values()) == 2, workers

    for name, n in (("two", 2), ("one", 1)):
        TorchTrainer(_ddp_loop, train_loop_config=_ddp_cfg(tiny_encoder, tmp_path, name),
                     scaling_config=ScalingConfig(num_workers=n, use_gpu=False, resources_per_worker={"CPU": 1},
                                                  placement_strategy="STRICT_SPREAD"),
                     run_config=RunConfig(name=name, storage_path=str(tmp_path / "ddp"))).fit()
    one, two = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("one", "two"))
    init = load_file(os.path.join(tiny_encoder, "model.safetensors"))
    assert [k for k in one if k in init and not np.allclose(one[k].numpy(), init[k].numpy())]
    for k in one:
        np.testing.assert_allclose(two[k].numpy(), one[k].numpy(), atol=2e-5, err_msg=k)


def test_worker_cpus_that_leave_no_cpu_for_reading_are_refused_at_once(two_nodes, tiny_encoder, tmp_path):
    """2 workers x 2 CPUs spread over two 2-CPU nodes would leave Ray Data no CPU (it hung
    for 300 s): one config error naming the fix, before any work."""
    from tiny import write_parquet

    from bertml.config import ConfigError, TrainConfig, load
    from bertml.train import train

    data = write_parquet(make_rows(40, seed=7), str(tmp_path / "train.parquet"))
    cfg = load(TrainConfig, None, [
        f"data.train={data}", f"model.name={tiny_encoder}", "model.max_length=32", "scaling.num_workers=2",
        "scaling.placement_strategy=SPREAD", "scaling.cpus_per_worker=2",
        f"run.storage_path={tmp_path}/runs", f"run.output={tmp_path}/model"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"cpus_per_worker=2: .*leave no node a free CPU.*cpus_per_worker<=1"):
        train(cfg)
    assert time.perf_counter() - t0 < 60 and not os.path.exists(tmp_path / "model")


@pytest.fixture
def blind_node(two_nodes, tmp_path):
    """A third node whose filesystem does not see `<tmp>/head-only` (an empty tmpfs over it,
    in a private mount namespace); yields that folder. The node is stopped afterwards."""
    import ray

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to give a node its own view of the filesystem")
    hidden = tmp_path / "head-only"
    hidden.mkdir()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    script = (f"mount -t tmpfs bertml-test {hidden} && exec {ray_bin} start --address={two_nodes.address} "
              f"--num-cpus=1 --block --temp-dir={two_nodes.temp_dir}")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 60
    while sum(n["Alive"] for n in ray.nodes()) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.5)
    blind = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in
                 {two_nodes.head_node.node_id, two_nodes.worker.node_id})
    try:
        yield hidden, blind
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.time() + 60
        while any(n["Alive"] and n["NodeID"] == blind for n in ray.nodes()) and time.time() < deadline:
            time.sleep(0.5)


def test_node_local_paths_fail_clearly_before_any_work(blind_node, multi_ckpt, tiny_encoder, tmp_path):
    """A checkpoint, input or run.storage_path that one node cannot see: one error naming the
    key, the path, the node and what to use instead, before Ray does any work and before an
    output exists."""
    from tiny import write_parquet

    from bertml.cluster import ClusterPathError
    from bertml.config import ScoreConfig, TrainConfig, load
    from bertml.scoring import score
    from bertml.train import train

    hidden, blind = blind_node
    ckpt = shutil.copytree(multi_ckpt, hidden / "model")
    write_corpus(str(tmp_path / "in"), n=1)
    write_corpus(str(hidden / "in"), n=1)
    cases = [("checkpoint", ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in"), output=str(tmp_path / "o1"))),
             ("input", ScoreConfig(checkpoint=multi_ckpt, input=str(hidden / "in"), output=str(tmp_path / "o2")))]
    for key, cfg in cases:
        with pytest.raises(ClusterPathError) as e:
            score(cfg)
        msg = str(e.value)
        assert msg.startswith(f"{key} {hidden}") and blind[:12] in msg and "shared storage" in msg, msg
        assert "s3://" in msg
        assert not os.path.exists(cfg.output) or os.listdir(cfg.output) == []

    data = write_parquet(make_rows(40, seed=7), str(tmp_path / "train.parquet"))
    with pytest.raises(ClusterPathError, match=rf"run.storage_path {hidden}/runs is not visible on Ray node {blind[:12]}"):
        train(load(TrainConfig, None, [f"data.train={data}", f"model.name={tiny_encoder}", "model.max_length=32",
                                       f"run.storage_path={hidden}/runs", f"run.output={tmp_path}/model"]))
    assert not os.path.exists(tmp_path / "model")
    assert [p for p in os.listdir(hidden / "runs") if p.startswith(".bertml-visible-")] == []


_JOB = """
import json, logging, os, sys
import ray

ray.init(address=sys.argv[1], runtime_env={"working_dir": sys.argv[2]})


@ray.remote(num_cpus=0)
def inside_job():
    from bertml import cluster
    from bertml.config import ScoreConfig

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("bertml").addHandler(handler)
    cfg = ScoreConfig(checkpoint="/abs/model", input="in/", output="scored")
    keys = cluster.resolve_outputs(cfg, ["output"])
    return [os.getcwd(), cluster.job_package_dir(), keys, cfg.output, [r.getMessage() for r in records]]


print(json.dumps(ray.get(inside_job.remote())))
"""


def test_relative_outputs_in_a_jobs_package_folder_are_resolved_and_warned(two_nodes, tmp_path):
    """What `ray job submit --working-dir .` does to a job: its code runs in Ray's package
    folder. In a real one (a job with that runtime env on this cluster), a relative output
    becomes absolute and a warning names where the files go."""
    import json

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "jobfile.txt").write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", _JOB, two_nodes.address, str(tmp_path / "job")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    cwd, pkg, keys, output, logs = json.loads(done.stdout.strip().splitlines()[-1])
    assert pkg and cwd.startswith(pkg) and "_ray_pkg_" in pkg
    assert keys == ["output"] and output == os.path.join(cwd, "scored")
    assert any("output=scored is a relative path" in m and output in m and "s3://" in m for m in logs), logs
    assert os.path.exists(os.path.join(cwd, "jobfile.txt"))


_DRIVER = """
import json, sys
import ray
from bertml.config import ScoreConfig
from bertml.scoring import score

ray.init(address=sys.argv[1])
print(json.dumps(score(ScoreConfig(**json.loads(sys.argv[2]))).rows))
"""


@pytest.mark.slow
def test_node_removed_mid_scoring_then_every_row_exactly_once(two_nodes, multi_ckpt, tmp_path):
    """The worker node is removed (raylet and workers killed) while a driver scores. Ray
    retries the lost tasks and actor calls; when its retries run out the run stops (the
    actor's calls fail) and the driver exits, and a re-run resumes from the committed shards.
    Either way each input row ends in the output exactly once. The first run is its own
    driver process, as a nightly job is: its actors end with it."""
    import json

    import ray

    from bertml.config import ScoreConfig
    from bertml.scoring import score

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
    from relkit import committed_files, wait_for

    ids = write_corpus(str(tmp_path / "in"), n=16, rows=40)
    out = str(tmp_path / "out")
    cfg = {"checkpoint": multi_ckpt, "input": str(tmp_path / "in"), "output": out, "batch_size": 4, "num_actors": 2}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, two_nodes.address, json.dumps(cfg)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: committed_files(out) and two_nodes.worker.node_id in node_of_actors("MapBatches(ScoreWriter)"),
                 240, "a committed shard and a scoring actor on the worker node")
        committed_at_removal = len(committed_files(out))
        two_nodes.remove_node(two_nodes.worker, allow_graceful=False)
        wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 1, 60, "the node to be gone")
        _, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert committed_at_removal < 16
    if driver.returncode == 0:
        outcome = "finished after Ray's retries"
    else:
        outcome = "stopped, re-run resumed"
        assert "Traceback" in err
        summary = score(ScoreConfig(**cfg))
        assert summary.shards_resumed >= committed_at_removal and summary.shards_skipped == []
    print(f"node removed after {committed_at_removal} of 16 shards committed: {outcome}")
    got = read_output(out)
    assert got.column("id").to_pylist() == ids  # each row exactly once, in input order
