"""Shared pieces of the benchmarks in jobs/bench/.

Checkpoints and corpora built offline in a temp folder, a sampler of the whole process
tree's memory, BERT FLOP counts for MFU, and a plain-text table. Nothing here runs at
import time.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field

import numpy as np

# Quiet runs: no HF progress bars or load reports. Set before Ray starts so workers inherit.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    # Ray starts its workers at nice 15. On a shared box that starves the Ray side against
    # anyone else's nice-0 work while the in-process baseline runs at 0: same footing here.
    "RAY_worker_niceness": "0",
}


def quiet() -> None:
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("bertml", "ray", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {gpu}; torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}")


def load_line() -> str:
    """The 1/5/15-min load average: other work on a 2-core box skews every number."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def wait_quiet(max_s: float, busy: float = 0.10, window: float = 5.0) -> str:
    """Wait (up to `max_s`) for a `window` in which the machine is under `busy` utilisation.

    Call it while this run is idle: then all the load seen is other people's work.
    """
    import psutil

    t0 = time.perf_counter()
    while True:
        used = psutil.cpu_percent(interval=window) / 100
        waited = time.perf_counter() - t0
        if used < busy:
            return f"quiet after {waited:.0f} s" if waited > window + 1 else "quiet"
        if waited >= max_s:
            return f"NOT quiet after {waited:.0f} s ({used:.0%} busy): numbers below are skewed"


# ----------------------------------------------------------------------------- checkpoints


def label_set(n_labels: int):
    from bertml.labels import LabelSet

    return LabelSet(tuple(f"label_{i}" for i in range(n_labels)), True)


def pretrained_checkpoint(path: str, encoder: str, n_labels: int, max_length: int) -> str:
    """A bertml checkpoint: `encoder`'s weights + a fresh multi-label head, thresholds 0.5."""
    from bertml import checkpoint as ckpt_io
    from bertml.model import build_model, load_tokenizer

    labels = label_set(n_labels)
    model = build_model(encoder, labels)
    meta = ckpt_io.CheckpointMeta(labels=list(labels.names), problem_type="multi_label",
                                  max_length=max_length, thresholds=[0.5] * n_labels)
    ckpt_io.save(path, model, load_tokenizer(encoder), meta)
    return path


def random_bert_checkpoint(path: str, tokenizer_from: str, n_labels: int, max_length: int, **overrides) -> str:
    """A bertml checkpoint of a random-init BERT (BertConfig() defaults = BERT-base unless overridden)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bertml import checkpoint as ckpt_io
    from bertml.model import hf_problem_type, load_tokenizer

    labels = label_set(n_labels)
    torch.manual_seed(0)
    config = BertConfig(num_labels=n_labels, id2label=dict(enumerate(labels.names)), label2id=labels.index,
                        problem_type=hf_problem_type(True), **overrides)
    model = BertForSequenceClassification(config).eval()
    meta = ckpt_io.CheckpointMeta(labels=list(labels.names), problem_type="multi_label",
                                  max_length=max_length, thresholds=[0.5] * n_labels)
    ckpt_io.save(path, model, load_tokenizer(tokenizer_from), meta)
    return path


def random_bert_encoder(path: str, tokenizer_from: str, **overrides) -> str:
    """An encoder-only folder (no head) of a random-init BERT, usable as `model.name` for training."""
    import torch
    from transformers import BertConfig, BertModel

    from bertml.model import load_tokenizer

    torch.manual_seed(0)
    BertModel(BertConfig(**overrides), add_pooling_layer=True).save_pretrained(path, safe_serialization=True)
    load_tokenizer(tokenizer_from).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- corpus


def skewed_texts(n: int, seed: int, long_frac: float = 0.2, short_words: tuple[int, int] = (10, 40),
                 long_words: tuple[int, int] = (200, 600)) -> list[str]:
    """`n` English texts cut from the BBC articles: mostly short, `long_frac` of them long.

    Each text is a run of consecutive words from the concatenated articles (titles
    included), starting at a seeded random word; its length is uniform in the range.
    """
    from bertml.corpus import load_articles

    words: list[str] = []
    for a in load_articles():
        words += a.title.split()
        words += a.words
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_frac
    lo, hi = np.where(is_long, long_words[0], short_words[0]), np.where(is_long, long_words[1], short_words[1])
    sizes = rng.integers(lo, hi + 1)
    starts = rng.integers(0, len(words) - long_words[1] - 1, size=n)
    return [" ".join(words[s : s + k]) for s, k in zip(starts, sizes)]


def write_shards(texts: list[str], folder: str, rows_per_shard: int, row_group_rows: int = 128) -> list[str]:
    """`texts` as `part-NNNNN.parquet` files with columns id, text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    ids = [f"doc-{i:08d}" for i in range(len(texts))]
    paths = []
    for k, start in enumerate(range(0, len(texts), rows_per_shard)):
        t = pa.table({"id": ids[start : start + rows_per_shard], "text": texts[start : start + rows_per_shard]})
        path = os.path.join(folder, f"part-{k:05d}.parquet")
        pq.write_table(t, path, row_group_size=row_group_rows)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- memory


@dataclass
class MemoryPeak:
    pss: int = 0  # bytes, sum over the tree at the sample with the highest sum
    rss: int = 0
    procs: int = 0
    samples: int = 0
    foreign_cpu_s: float = 0.0  # CPU seconds used by processes outside the tree
    wall_s: float = 0.0
    top: list = field(default_factory=list)  # [(process name, pss)] at the peak, largest first
    cpu_by_name: dict = field(default_factory=dict)  # tree CPU seconds per process name during the run
    hwm: int = 0  # bytes: sum over the tree's processes of each one's peak RSS (VmHWM) during the run

    def cpu_line(self, n: int = 5) -> str:
        """Where the tree's CPU went, as average cores busy over the run."""
        top = sorted(self.cpu_by_name.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {sec / max(self.wall_s, 1e-9):.2f}" for name, sec in top)

    @property
    def foreign_share(self) -> float:
        """Fraction of the machine's cores busy with other people's work during the run."""
        return self.foreign_cpu_s / max(self.wall_s * (os.cpu_count() or 1), 1e-9)


def _vm_hwm(pid: int) -> int:
    """Peak RSS of a process since start (or since `_reset_hwm`), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_hwm(pid: int) -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def _proc_name(p) -> str:
    """`ray::MapWorker(MapBatches(ScoreWriter))` for Ray workers (comm is cut at 15 chars), else comm."""
    try:
        first = (p.cmdline() or [""])[0]
    except Exception:  # noqa: BLE001 - a vanished process
        first = ""
    name = first if first.startswith("ray::") else p.name()
    return name.split(".")[0].strip()


class TreeMemory:
    """Samples the summed PSS (and RSS) of this process and all its descendants in a thread.

    A local `ray.init()` starts gcs/raylet as children of the driver and the workers as
    children of the raylet, so the tree is exactly this Ray session (other sessions on
    the same machine are not counted). PSS splits shared pages (the object store, the
    mapped torch libraries) between the processes that map them, so sums do not double
    count. Samples can miss a short peak (one forward pass), so it also keeps each
    process's kernel peak-RSS counter (VmHWM, reset on entry): their sum bounds the peak
    from above (RSS counts shared pages once per process). It also adds up the CPU time of every process outside the tree: on a shared
    2-core machine that is the noise in every number, and the tables print it.
    """

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: dict[int, float] = {}
        self._tree_cpu: dict[int, float] = {}
        self._cpu_by_pid: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._hwm: dict[int, int] = {}

    def sample(self) -> tuple[int, int, list]:
        import psutil

        root = psutil.Process()
        pss = rss = 0
        per: list[tuple[str, int]] = []
        tree = [root, *root.children(recursive=True)]
        for p in tree:
            try:
                info = p.memory_full_info()
                used = sum(p.cpu_times()[:2])
                name = "driver" if p.pid == root.pid else _proc_name(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
            per.append((name, getattr(info, "pss", info.rss)))
            if name != "ray::IDLE" or p.pid not in self._role:  # a worker is named by its last real job
                self._role[p.pid] = name
            self._hwm[p.pid] = max(self._hwm.get(p.pid, 0), _vm_hwm(p.pid))
            if p.pid in self._tree_cpu:
                self._cpu_by_pid[p.pid] = self._cpu_by_pid.get(p.pid, 0.0) + used - self._tree_cpu[p.pid]
            self._tree_cpu[p.pid] = used
        self._foreign({p.pid for p in tree})
        return pss, rss, sorted(per, key=lambda x: -x[1])

    def _foreign(self, mine: set[int]) -> None:
        import psutil

        seen: dict[int, float] = {}
        for p in psutil.process_iter(["pid", "cpu_times"]):
            t = p.info["cpu_times"]
            if p.info["pid"] in mine or t is None:
                continue
            seen[p.info["pid"]] = t.user + t.system
        if self._cpu:  # processes born between samples count from their start
            self.peak.foreign_cpu_s += sum(v - self._cpu.get(pid, 0.0) for pid, v in seen.items()
                                           if pid in self._cpu or v < 2 * self.interval + 1)
        self._cpu = seen

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, rss, per = self.sample()
            self.peak.samples += 1
            if pss > self.peak.pss:
                self.peak.pss, self.peak.rss, self.peak.procs, self.peak.top = pss, rss, len(per), per
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        import psutil

        root = psutil.Process()
        for p in [root, *root.children(recursive=True)]:  # restart every peak-RSS counter
            _reset_hwm(p.pid)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak.wall_s = time.perf_counter() - self._t0
        self.peak.hwm = sum(self._hwm.values())
        for pid, sec in self._cpu_by_pid.items():
            d = self.peak.cpu_by_name
            d[self._role[pid]] = d.get(self._role[pid], 0.0) + sec


# ----------------------------------------------------------------------------- FLOPs


def bert_shape(config) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) of a BERT-like HF config."""
    return config.num_hidden_layers, config.hidden_size, config.intermediate_size


def forward_flops(config, lengths, padded: int | None = None, cls_only: bool = False) -> float:
    """Forward FLOPs (multiply-add = 2) of the encoder for rows of `lengths` tokens.

    Per layer and token: 2*(4*d*d + 2*d*I) for the Q/K/V/output and FFN matmuls, plus
    4*T*d for QK^T and attention x V over a T-token sequence. `padded` evaluates every
    row at that length (what a padded batch executes). `cls_only`: the last layer as
    `bertml.model.ClsOnlyForward` runs it (K/V for every token, the rest for [CLS]).
    Embeddings, LayerNorm, softmax, pooler and head are left out (< 1% for these shapes).
    """
    n_layers, d, inter = bert_shape(config)
    t = np.asarray(lengths, dtype=np.float64)
    if padded is not None:
        t = np.full_like(t, padded)
    per_layer = (2 * (4 * d * d + 2 * d * inter) + 4 * t * d) * t  # [rows]
    if not cls_only:
        return float(n_layers * per_layer.sum())
    last = 2 * 2 * d * d * t + 2 * (2 * d * d + 2 * d * inter) + 4 * t * d  # K, V for all; Q, O, FFN, attention for one
    return float(((n_layers - 1) * per_layer + last).sum())


def packed_flops(config, lengths: np.ndarray, batch_rows: int, max_tokens: int, cls_only: bool = True,
                 slack: float = 1.15) -> float:
    """FLOPs the Scorer executes: rows in `batch_rows` batches, packed by `bertml.scorer.pack`."""
    from bertml.scorer import pack

    total = 0.0
    for start in range(0, len(lengths), batch_rows):
        chunk = lengths[start : start + batch_rows]
        for idx in pack(chunk, max_tokens, slack=slack):
            total += forward_flops(config, chunk[idx], padded=int(chunk[idx].max()), cls_only=cls_only)
    return total


# ----------------------------------------------------------------------------- output


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
