"""The measured runs of `jobs.bench.scale`: one `score()` in a fresh child process per run
(`CHILD`, the same code for both versions), on a local Ray or on a `ray.cluster_utils.Cluster`
of one or two nodes that this process starts for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

from jobs.bench import common as bc
from jobs.bench.memory import TreeMemory

RESULT = "BENCH_SCALE_RESULT "
STARTS = 3  # tries when Ray's node start-up times out (30 s, fixed in Ray) on a loaded machine
STARTUP_FAILED = "timed out during startup"
# As cluster.yaml and jobs/k8s start Ray: idle workers kept 60 s (bertml.runtime.IDLE_WORKER_MS).
CLUSTER_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}
TEXT_CASES = {"both": (False, True), "without": (False,), "with": (True,)}  # --text: passthrough=["text"] or []

CHILD = r"""
import json, os, resource, sys, time

spec = json.loads(sys.argv[1])


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def status(key):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def inside(path, tree):
    return os.path.realpath(path).startswith(os.path.realpath(tree) + os.sep)


c_start = cpu()
import bertml

if not inside(bertml.__file__, spec["tree"]):
    sys.exit(f"bertml imported from {bertml.__file__}, not from {spec['tree']}")
import ray
import ray.data
import torch  # noqa: F401 - imported by both versions' pre-flight: outside the measured call for both
import transformers  # noqa: F401

from bertml.config import ScoreConfig
from bertml.runtime import init_ray

try:
    from bertml.scoring import score
except ImportError:  # a baseline from before bertml/scoring/ (bertml/score.py)
    from bertml.scoring import score

c_import = cpu()
t = time.perf_counter()
init_ray(num_cpus=spec["num_cpus"])  # joins RAY_ADDRESS when it is set (cluster runs)
init_s = time.perf_counter() - t
ray.data.DataContext.get_current().enable_progress_bars = spec["progress_bars"]
c_init = cpu()
time.sleep(spec["idle_s"])  # the connected driver's own background CPU, for scale
idle_cores = (cpu() - c_init) / spec["idle_s"] if spec["idle_s"] else None
cfg = ScoreConfig(checkpoint=spec["checkpoint"], input=spec["input"], output=spec["output"],
                  id_column="id", passthrough=spec["passthrough"], batch_size=spec["batch_size"],
                  max_tokens=spec["max_tokens"], num_actors=spec["num_actors"],
                  use_gpu=spec["use_gpu"])
rss_before, hwm_before = status("VmRSS"), status("VmHWM")
try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
except OSError:
    pass
reset_ok = status("VmHWM") <= status("VmRSS") + 8 * 2**20
c0, t0 = cpu(), time.perf_counter()
summary = score(cfg)
wall, c1 = time.perf_counter() - t0, cpu()
hwm, rss_after = status("VmHWM"), status("VmRSS")


@ray.remote(num_cpus=0)
def where():
    import os

    import bertml

    return os.path.realpath(bertml.__file__)


from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
files = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                 .remote() for n in nodes])
wrong = [f for f in files if not inside(f, spec["tree"])]
if wrong:
    sys.exit(f"a Ray worker imported bertml from {wrong[0]}, not from {spec['tree']}")
ray.shutdown()
print("BENCH_SCALE_RESULT " + json.dumps({
    "bertml": os.path.realpath(bertml.__file__), "nodes": len(nodes), "rows": summary.rows,
    "summary_s": summary.seconds, "units": getattr(summary, "units", None),
    "status": dict(summary.status), "wall_s": wall, "cpu_s": c1 - c0,
    "cpu_import_s": c_import - c_start, "cpu_init_s": c_init - c_import, "init_s": init_s,
    "idle_cores": idle_cores, "rss_before": rss_before, "hwm_before": hwm_before,
    "reset_ok": reset_ok, "hwm": hwm, "rss_after": rss_after,
}), flush=True)
"""


# ----------------------------------------------------------------------------- one measured run


class Runner:
    def __init__(self, args, work: str, ckpt: str):
        self.args, self.work, self.ckpt = args, work, ckpt
        self.quiet_log: list[list[str]] = []
        self.warnings: Counter = Counter()
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)

    def run(self, label: str, side: str, tree: str, data: str, rows: int, text: bool,
            address: str | None = None) -> dict:
        """One score() in a fresh child; its result dict (see CHILD) plus this run's fields."""
        import pyarrow.dataset as pds

        a = self.args
        out = os.path.join(self.work, "out", f"{side}-{label}")
        shutil.rmtree(out, ignore_errors=True)
        spec = {"tree": tree, "checkpoint": self.ckpt, "input": data, "output": out,
                "passthrough": ["text"] if text else [], "batch_size": a.batch_size,
                "max_tokens": a.max_tokens, "num_actors": a.num_actors,
                "use_gpu": {"true": True, "false": False}.get(a.use_gpu, "auto"),
                "num_cpus": a.local_cpus, "progress_bars": a.progress_bars,
                "idle_s": a.idle_probe_s}
        env = dict(os.environ)
        paths = [tree, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.pop("RAY_ADDRESS", None)
        if address:
            env["RAY_ADDRESS"] = address
        log_path = os.path.join(self.logs, f"{side}-{label}.log")
        try:
            for attempt in range(1, STARTS + 1):
                quiet = bc.wait_quiet(a.wait_quiet)
                with open(log_path, "w", encoding="utf-8") as log, TreeMemory() as mon:
                    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)],
                                          cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          timeout=a.timeout)
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
                found = [ln[len(RESULT):] for ln in lines if ln.startswith(RESULT)]
                if found and not proc.returncode:
                    break
                if attempt < STARTS and any(STARTUP_FAILED in ln for ln in lines):
                    print(f"  {side:9s} {label:17s} Ray did not start in time (a busy machine?); "
                          "again", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    continue
                raise RuntimeError(f"{side} {label}: the child exited {proc.returncode}; "
                                   f"log {log_path}:\n" + "\n".join(lines[-40:]))
            self.quiet_log.append([f"{side} {label}", quiet])
            res = json.loads(found[-1])
            self._note_warnings(lines)
            written = pds.dataset(out, format="parquet").count_rows()
            if res["rows"] != rows or written != rows:
                raise RuntimeError(f"{side} {label}: {rows} input rows, summary.rows "
                                   f"{res['rows']}, {written} rows in the output")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        others = mon.peak.foreign_share
        res.update(side=side, label=label, rows_in=rows, text=text, quiet=quiet, others=others)
        print(f"  {side:9s} {label:17s} {res['wall_s']:7.1f} s {rows / res['wall_s']:8.0f} rows/s"
              f"  driver CPU {res['cpu_s']:6.2f} s  peak RSS {res['hwm'] / 2**20:5.0f} MiB"
              f"  others {others:.0%}", flush=True)
        return res

    def _note_warnings(self, lines: list[str]) -> None:
        """Python WARNING/ERROR lines and Ray's C++ `[... W|E pid tid]` ones (not our own
        progress-bar note), digits masked so repeats count as one."""
        pattern = re.compile(r"WARNING|ERROR|Warning|^\[[^\]]* [WE] \d+ \d+\]")
        for ln in lines:
            if pattern.search(ln) and "Progress bars disabled" not in ln:
                masked = re.sub(r"\b[0-9a-f]{12,}\b", "<id>", ln.strip())
                self.warnings[re.sub(r"\d+(\.\d+)?", "#", masked)[:150]] += 1


# ----------------------------------------------------------------------------- parts


def local_part(runner: Runner, sides: list[tuple[str, str]], data: dict[int, str],
               n: int) -> list[dict]:
    out, case = [], 0
    for rows, size in ((n, "N"), (10 * n, "10N")):
        for text in TEXT_CASES[runner.args.text]:
            label = f"local-{size}-{'text' if text else 'notext'}"
            for side, tree in sides if case % 2 == 0 else sides[::-1]:  # alternate who goes first
                res = runner.run(label, side, tree, data[rows], rows, text)
                out.append(res | {"size": size})
            case += 1
    return out


def cluster_part(runner: Runner, sides: list[tuple[str, str]], data: str, rows: int) -> list[dict]:
    out = []
    for k, cpus in enumerate(([2], [1, 1])):  # 1 node x 2 CPUs, 2 nodes x 1 CPU
        label = f"cluster-{len(cpus)}node"
        for side, tree in sides if k % 2 == 0 else sides[::-1]:
            with local_cluster(cpus, tree, runner.args.cluster_store_mib) as address:
                res = runner.run(label, side, tree, data, rows, False, address=address)
            if res["nodes"] != len(cpus):
                raise RuntimeError(f"{side}: the child saw {res['nodes']} nodes, not {len(cpus)}")
            out.append(res | {"n_nodes": len(cpus)})
    return out


@contextlib.contextmanager
def local_cluster(cpus: list[int], tree: str, store_mib: int):
    """A `ray.cluster_utils.Cluster` of len(cpus) nodes on this machine; yields its address.

    Its raylets start with PYTHONPATH=<tree>: a job's workers inherit the raylet's
    environment, and the driver's sys.path reaches them only behind the venv's editable
    bertml (the child's check caught exactly that)."""
    import ray
    from ray.cluster_utils import Cluster

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([tree, *([saved] if saved else [])])
    # Its own temp dir: a head node writes <temp>/ray_current_cluster, where a later ray.init()
    # on this machine would look. Short: Ray puts unix sockets below it.
    temp = tempfile.mkdtemp(prefix="bertml-bs-", dir="/tmp")
    cluster, ok = None, False
    try:
        for attempt in range(1, STARTS + 1):
            cluster = Cluster(initialize_head=False)
            store = int(store_mib * 2**20 / len(cpus))  # the same total whatever the node count
            try:
                cluster.add_node(num_cpus=cpus[0], include_dashboard=False, temp_dir=temp,
                                 object_store_memory=store, _system_config=CLUSTER_CONFIG)
                for c in cpus[1:]:
                    cluster.add_node(num_cpus=c, temp_dir=temp, object_store_memory=store)
                cluster.wait_for_nodes()
                break
            except Exception as e:  # noqa: BLE001 - only Ray's start-up timeout is retried
                cluster.shutdown()
                cluster = None
                _kill_started_below(temp)  # a half-started node's gcs/raylet are not in `cluster`
                if attempt == STARTS or STARTUP_FAILED not in str(e):
                    raise
                print(f"  the {len(cpus)}-node cluster did not start in time; again", flush=True)
        yield cluster.address
        ok = True
    finally:
        if cluster is not None:
            cluster.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        if ok:
            shutil.rmtree(temp, ignore_errors=True)
        else:
            print(f"(cluster logs kept in {temp})", flush=True)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _kill_started_below(temp: str) -> None:
    """Kill this process's descendants whose command line names `temp` (by pid)."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            if temp in " ".join(p.cmdline()):
                p.kill()
        except psutil.Error:
            pass
