"""Multi-node Ray clusters: what every node must see, checked before any work starts.

On one machine every Ray worker sees the driver's files. On a cluster, read tasks,
scoring actors and training workers run on other nodes, whose filesystems need not hold
the driver's folders: a local checkpoint, local input shards or a local `storage_path`
must then be on shared storage (NFS, EFS), or be object-store URIs. `check_visible`
asks every alive node, with one tiny zero-CPU task pinned to it, whether it sees the
same files; a problem is one error naming the path, the node and what to use instead.

Jobs submitted with `ray job submit --working-dir .` run in Ray's temporary package
folder of the job; `resolve_outputs` makes relative output paths absolute and warns
where they went (that folder is deleted with the job's runtime environment).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

from bertml.errors import BertmlError
from bertml.secrets import redact

log = logging.getLogger("bertml.cluster")

PROBE = ".bertml-visible-"  # a marker written into a shared folder, then looked for on every node


class ClusterPathError(BertmlError, ValueError):
    """A path that every node must see is missing on some node."""


@dataclass(frozen=True)
class NodePath:
    """One path every node must see. `folder`: a folder the driver writes into (storage_path);
    it is probed with a marker file, so a node seeing a different folder of the same name fails."""

    key: str  # config key, for the message
    path: str  # absolute local path
    folder: bool = False


def alive_nodes() -> list[dict]:
    """Alive Ray nodes (needs a connected Ray)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def multinode_ray():
    """The connected Ray when it has more than one node, else None. Connects when
    RAY_ADDRESS is set (a cluster job); never starts a local Ray just to look."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return None
        from bertml.runtime import init_ray

        init_ray()
    return ray if len(alive_nodes()) > 1 else None


def _probe(paths: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
    """Run on one node: (path, what is wrong) for each (key, path, expected size or -1) not seen."""
    bad = []
    for key, path, size in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            bad.append((key, f"{type(e).__name__}: {e.strerror or e}"))
            continue
        if size >= 0 and st.st_size != size:
            bad.append((key, f"a different file ({st.st_size} bytes, {size} on the driver)"))
    return bad


def check_visible(paths: list[NodePath]) -> None:
    """On a multi-node cluster, check that every node sees `paths` as the driver does.

    Files are compared by size; folders the run writes into (`folder=True`) get a marker
    file from the driver that every node must find. Single-node (or no) Ray: nothing to do.
    """
    local = [p for p in paths if p.path]
    if not local:
        return
    ray = multinode_ray()
    if ray is None:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    markers, probes = [], []
    try:
        for p in local:
            if p.folder:
                os.makedirs(p.path, exist_ok=True)
                marker = os.path.join(p.path, f"{PROBE}{uuid.uuid4().hex[:12]}")
                with open(marker, "w") as f:
                    f.write("bertml: checks that every node sees this folder; safe to delete\n")
                markers.append(marker)
                probes.append((p.key, marker, -1))
            else:
                probes.append((p.key, p.path, os.path.getsize(p.path) if os.path.isfile(p.path) else -1))
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        nodes = alive_nodes()
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(probes) for n in nodes]
        results = ray.get(refs, timeout=120)
    finally:
        for m in markers:
            try:
                os.unlink(m)
            except OSError:
                pass
    paths_by_key = {p.key: p for p in local}
    for node, bad in zip(nodes, results):
        if bad:
            key, why = bad[0]
            p = paths_by_key[key]
            more = f" ({len(bad) - 1} more path(s) missing there too)" if len(bad) > 1 else ""
            raise ClusterPathError(
                f"{key} {p.path} is not visible on Ray node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}): "
                f"{why}{more}. Every node of a multi-node cluster reads it: put it on shared storage "
                "(NFS, EFS) mounted at the same path on every node, or use an object store (s3://, gs://)")


def _is_local(path: str | None) -> bool:
    from bertml.checkpoint import is_uri

    return bool(path) and not is_uri(path)


def _abs(path: str) -> str:
    path = path[len("file://"):] if path.startswith("file://") else path
    return os.path.abspath(os.path.expanduser(path))


def score_paths(checkpoint: str, shards, output: str | None = None) -> list[NodePath]:
    """What every node reads or writes while scoring: a local checkpoint (tokenizer in the
    read tasks, model in the actors), local input shards, and a local output folder (the
    actors write scored parts into it, the assemble tasks the shards' files)."""
    out = []
    if _is_local(checkpoint):
        out += [NodePath("checkpoint", os.path.join(_abs(checkpoint), name))
                for name in ("bertml.json", "model.safetensors")]
    out += [NodePath("input", s.path) for s in shards if s.fs.type_name == "local"]
    if output:
        out.append(NodePath("output", output, folder=True))
    return out


def train_paths(cfg, shards) -> list[NodePath]:
    """What every node reads or writes while training (or pretraining): local data shards, a local model
    folder or resume_from checkpoint, and a local storage_path (workers write checkpoints)."""
    out = [NodePath("data", s.path) for s in shards if s.fs.type_name == "local"]
    if _is_local(cfg.model.name) and os.path.isdir(_abs(cfg.model.name)):
        out.append(NodePath("model.name", os.path.join(_abs(cfg.model.name), "config.json")))
    resume_from = getattr(cfg.run, "resume_from", None)  # train's; pretrain has none
    if _is_local(resume_from):
        out.append(NodePath("run.resume_from", os.path.join(_abs(resume_from), "bertml.json")))
    if _is_local(cfg.run.storage_path):
        out.append(NodePath("run.storage_path", _abs(cfg.run.storage_path), folder=True))
    return out


# ----------------------------------------------------------------------------- ray job submit


def job_package_dir(cwd: str | None = None) -> str | None:
    """The job's package folder when this process runs inside one (`ray job submit
    --working-dir`: Ray unpacks the folder under .../runtime_resources/working_dir_files/),
    else None."""
    cwd = cwd or os.getcwd()
    parts = cwd.replace("\\", "/").split("/")
    for i, p in enumerate(parts):
        if p == "working_dir_files" and i > 0 and parts[i - 1] == "runtime_resources":
            return "/".join(parts[: i + 2]) if i + 1 < len(parts) else cwd
    return None


def resolve_outputs(cfg, keys: list[str]) -> list[str]:
    """Make the relative local paths at dotted `keys` of `cfg` absolute, warning when they
    land inside the job's package folder (deleted with the job's runtime environment).
    Returns the keys that did."""
    pkg = job_package_dir()
    if pkg is None:
        return []
    landed = []
    for key in keys:
        *parents, name = key.split(".")
        owner = cfg
        for p in parents:
            owner = getattr(owner, p)
        value = getattr(owner, name)
        if not isinstance(value, str) or not value or not _is_local(value) or os.path.isabs(os.path.expanduser(value)):
            continue
        resolved = _abs(value)
        setattr(owner, name, resolved)
        landed.append(key)
        log.warning("%s=%s is a relative path and this job runs in Ray's package folder %s: the files go to %s, "
                    "which Ray deletes with the job's runtime environment. Pass an absolute path on shared "
                    "storage or an object-store URI (s3://...)", key, redact(value), pkg, resolved)
    return landed
