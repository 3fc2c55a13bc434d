"""Ray connection: join the cluster at RAY_ADDRESS, or start an embedded local Ray."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("bertml")

# Quiet, lean local runs (see shared RAY-NOTES): set before ray.init so workers inherit.
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
# Ray ends a worker process idle for 1 s once a node holds more workers than CPUs, which
# a scoring run always does (its actors, Ray Data's, read and assemble tasks); the next
# task then starts a new process that imports torch and transformers again (~5 s of CPU
# each: 40% fewer rows/s on 2 cores). Idle workers are kept this long instead.
IDLE_WORKER_MS = 60_000


def quiet_ray_loggers() -> None:
    """Silence Ray Train's per-report and polling INFO lines (worker_process_setup_hook).

    The placement-group cleaner polls the dashboard we do not start; the worker context
    logs every report's full metrics dict (under a logger named by its file path).
    """
    import importlib.util

    names = ["ray.train.v2._internal.execution.controller.placement_group_cleaner",
             "ray.train.v2._internal.execution.storage", "ray.train._internal.storage"]
    try:
        spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
        if spec and spec.origin:
            names.append(spec.origin)
    except (ImportError, ValueError):
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def init_ray(num_cpus: int | None = None):
    """Connect to RAY_ADDRESS if set, else start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return ray
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"worker_process_setup_hook": "bertml.runtime.quiet_ray_loggers"}
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # address="local": always a new embedded Ray, even if `ray start` left /tmp/ray/ray_current_cluster behind
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True,
                 _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS})
        log.info("started local Ray: %s", ray.cluster_resources())
    quiet_ray_loggers()
    if os.environ.get("BERTML_CATCH_SIGNALS"):  # set by the CLI; a library caller keeps its own handlers
        catch_signals()  # ray.init installed its own SIGTERM handler (sys.exit(15)); the CLI maps that too
    return ray


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: unwind (locks released, temp files removed), then exit."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


def catch_signals() -> None:
    """SIGTERM/SIGINT raise `Interrupted` in the main thread, so every `finally` runs.

    Called again after `ray.init`, which installs its own SIGTERM handler (`sys.exit`)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def resolve_use_gpu(use_gpu: bool | str, gpus: float | None = None) -> bool:
    """A config's `use_gpu` (true, false or "auto") as a bool: auto means the cluster has GPUs
    (`gpus`, or Ray's cluster resources when not given)."""
    if use_gpu != "auto":
        return bool(use_gpu)
    return (cluster_gpus() if gpus is None else gpus) > 0


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
