"""The whole process tree's memory and CPU during a benchmark run, sampled in a thread.

`TreeMemory` is a context manager: peak summed PSS of this process and its descendants
(this Ray session's raylet, gcs and workers), each process's kernel peak RSS, and the CPU
time of everything outside the tree (other people's work on a shared machine).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


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
