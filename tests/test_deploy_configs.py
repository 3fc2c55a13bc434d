"""Offline checks of the deployment configs: cluster.yaml (Ray cluster launcher, AWS) and
the KubeRay manifests in jobs/k8s. Nothing here starts Ray or talks to a cloud: cluster.yaml
is validated with Ray's own autoscaler JSON schema and the same offline steps `ray up`
runs before it contacts AWS (prepare_config + validate_config)."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
K8S_DIR = ROOT / "jobs" / "k8s"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))

jsonschema = pytest.importorskip("jsonschema")  # a dependency of ray itself


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if validation tries to reach AWS (or anything else)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def cluster() -> dict:
    with open(CLUSTER_YAML, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_matches_ray_autoscaler_schema(cluster, ray_schema, no_network):
    # The file as written (additionalProperties: false catches misspelt keys).
    jsonschema.validate(cluster, ray_schema)
    # What `ray up` does before touching AWS: merge the AWS defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head_cpu"


def test_schema_validation_is_not_vacuous(cluster, ray_schema):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_g5_xlarge"]["min_worker"] = 0  # typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema)
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_g5_xlarge"]["resources"]["GPU"] = 0.5  # must be int
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema)


def test_cluster_provider_and_auth(cluster):
    p = cluster["provider"]
    assert p["type"] == "aws" and p["region"] == "us-west-2"
    assert isinstance(p["cache_stopped_nodes"], bool)
    assert cluster["auth"]["ssh_user"] == "ubuntu"
    for key in ("cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes"):
        assert key in cluster


def test_dashboard_not_exposed(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--port=6379" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    # Only SSH from outside: no extra inbound rules (dashboard, GCS, client have no auth).
    rules = cluster["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        for port in (8265, 6379, 10001):
            assert not (lo == -1 or lo <= port <= hi), f"security group opens port {port}: {rule}"


def test_worker_start_joins_head(cluster):
    cmds = cluster["worker_start_ray_commands"]
    assert cmds[0] == "ray stop"
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cmds)


def test_node_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge"
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 0) > 0

    small, big = types["gpu_g5_xlarge"], types["gpu_g5_12xlarge"]
    assert small["node_config"]["InstanceType"] == "g5.xlarge"
    assert small["resources"]["GPU"] == 1
    assert small["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert big["node_config"]["InstanceType"] == "g5.12xlarge"
    assert big["resources"]["GPU"] == 4
    assert "InstanceMarketOptions" not in big["node_config"]  # on-demand
    assert big["max_workers"] == 2

    cpu = types["cpu_m5_4xlarge"]
    assert cpu["node_config"]["InstanceType"] == "m5.4xlarge"
    assert cpu["resources"].get("GPU", 0) == 0
    assert cpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"

    for name, t in types.items():
        if name == cluster["head_node_type"]:
            continue
        assert t["min_workers"] == 0, f"{name} should scale to zero"
        assert t["max_workers"] >= 1
        assert t["node_config"]["ImageId"] == head["node_config"]["ImageId"]
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != cluster["head_node_type"]) <= cluster["max_workers"]


def test_project_is_mounted_and_installed(cluster):
    assert "~/bertml" in cluster["file_mounts"]
    setup = cluster["setup_commands"]
    assert any(re.search(r"pip install .*-e ~/bertml", c) for c in setup)
    assert any("bertml\"[cluster]\"" in c for c in setup)  # ray[default] + boto3 on every node
    assert any("ray[" in c and "2.60.0" in c for c in setup)
    assert ".venv" in cluster.get("rsync_exclude", [])


def test_cluster_yaml_header_documents_the_workflow():
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("#")
    for needle in (
        "ray up cluster.yaml",
        "ray dashboard cluster.yaml",
        "ray job submit --address http://localhost:8265 --working-dir . -- python jobs/train.py "
        "--config jobs/configs/train.yaml run.storage_path=s3://",
        "-- python jobs/score.py --config jobs/configs/score.yaml checkpoint=",
        "ray down cluster.yaml",
    ):
        assert needle in header, needle


# ---------------------------------------------------------------------------- jobs/k8s


def _docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _all_docs() -> list[tuple[str, dict]]:
    """Every manifest, plus manifests embedded in ConfigMaps (the nightly RayJob)."""
    out = []
    for path in K8S_FILES:
        for doc in _docs(path):
            out.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        out += [(f"{path.name}:{key}", d) for d in yaml.safe_load_all(value) if d]
    return out


def _gpus(container: dict) -> int:
    res = container.get("resources", {})
    return max(int(res.get(k, {}).get("nvidia.com/gpu", 0)) for k in ("limits", "requests"))


def _rayjobs() -> list[tuple[str, dict]]:
    return [(w, d) for w, d in _all_docs() if d.get("kind") == "RayJob"]


def test_k8s_files_exist():
    names = {p.name for p in K8S_FILES}
    assert {"rayjob-train.yaml", "raycronjob-score.yaml"} <= names
    assert (K8S_DIR / "README.md").exists()


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifest_basics(path):
    docs = _docs(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"]
        assert isinstance(doc.get("kind"), str) and doc["kind"]
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} without metadata.name"


def test_rayjobs():
    jobs = _rayjobs()
    scripts = {re.search(r"jobs/(train|score)\.py", d["spec"]["entrypoint"]).group(0) for _, d in jobs}
    assert scripts == {"jobs/train.py", "jobs/score.py"}
    for where, job in jobs:
        assert job["apiVersion"] == "ray.io/v1", where
        meta = job["metadata"]
        assert meta.get("name") or meta.get("generateName"), where
        spec = job["spec"]
        assert re.match(r"python jobs/(train|score)\.py --config jobs/configs/(train|score)\.yaml", spec["entrypoint"]), where
        assert "s3://" in spec["entrypoint"], where
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert isinstance(spec["ttlSecondsAfterFinished"], int), where
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), where

        cluster = spec["rayClusterSpec"]
        head = cluster["headGroupSpec"]
        head_containers = head["template"]["spec"]["containers"]
        assert head_containers and all(c.get("image") for c in head_containers), where
        assert all(_gpus(c) == 0 for c in head_containers), f"{where}: head should not hold a GPU"
        groups = cluster["workerGroupSpecs"]
        assert groups, where
        gpu_groups = [g for g in groups if any(_gpus(c) >= 1 for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
        for g in groups:
            assert g["groupName"] and g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0), where


def test_train_job_stores_checkpoints_on_s3():
    (where, job), = [(w, d) for w, d in _rayjobs() if "jobs/train.py" in d["spec"]["entrypoint"]]
    assert "run.storage_path=s3://" in job["spec"]["entrypoint"], where


def test_nightly_cronjob():
    docs = _docs(K8S_DIR / "raycronjob-score.yaml")
    kinds = {d["kind"]: d for d in docs}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["schedule"] == "0 2 * * *"
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    # The pod creates the RayJob held in the ConfigMap of the same file, as a ServiceAccount
    # whose Role may create rayjobs.
    cm_names = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    assert kinds["ConfigMap"]["metadata"]["name"] in cm_names
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    rules = kinds["Role"]["rules"]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for c in pod["containers"])
    assert "kubectl create -f /etc/bertml/" in script


def test_k8s_references_resolve():
    """PVCs and ServiceAccounts used by the Ray pods are defined in jobs/k8s."""
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in _all_docs() if d.get("metadata", {}).get("name")}
    for where, job in _rayjobs():
        c = job["spec"]["rayClusterSpec"]
        pods = [c["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in c["workerGroupSpecs"]]
        for pod in pods:
            if "serviceAccountName" in pod:
                assert ("ServiceAccount", pod["serviceAccountName"]) in defined, where
            for v in pod.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in defined, where


def test_no_secrets_in_deploy_configs():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY|BEGIN [A-Z ]*PRIVATE KEY")
    for path in [CLUSTER_YAML, *K8S_FILES]:
        assert not pattern.search(path.read_text(encoding="utf-8")), path.name


# ----------------------------------------------------------------------------- the nightly launcher

_KUBECTL = r'''#!{python}
"""A stub kubectl for the launcher script: RayJob statuses come from a JSON state file."""
import json, os, sys

path = os.environ["STUB_STATE"]
s = json.load(open(path))
args = sys.argv[1:]
s["calls"].append(args)
out = ""
if args[0] == "create":
    out = "rayjob.ray.io/bertml-score-tonight\n"
elif args[0] == "get" and "-l" in args:  # the earlier nights' RayJobs
    if "name" in args:
        out = "".join(f"rayjob.ray.io/{n}\n" for n, _ in s["earlier"])
    else:
        out = "".join(f"{n}={d}\n" for n, d in s["earlier"])
elif args[0] == "get":
    field = args[-1]
    if "jobDeploymentStatus" in field:
        out = s["dep"][0] if len(s["dep"]) == 1 else s["dep"].pop(0)
    elif "jobStatus" in field:
        out = s["job"]
    else:
        out = "TheReason what KubeRay says"
json.dump(s, open(path, "w"))
sys.stdout.write(out)
'''


def _launcher_script() -> str:
    cron = next(d for d in _docs(K8S_DIR / "raycronjob-score.yaml") if d["kind"] == "CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    return container["args"][0]


def _launch(tmp_path, dep: list[str], job: str = "", earlier: list[tuple[str, str]] = ()):
    import subprocess
    import sys

    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(_KUBECTL.replace("{python}", sys.executable))
    stub.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"dep": dep, "job": job, "earlier": list(earlier), "calls": []}))
    env = {"PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}", "STUB_STATE": str(state), "POLL_S": "0"}
    r = subprocess.run(["/bin/sh", "-c", _launcher_script()], env=env, capture_output=True, text=True, timeout=60)
    calls = json.loads(state.read_text())["calls"]
    return r.returncode, r.stdout + r.stderr, [c for c in calls if c[0] == "create"]


# Every jobDeploymentStatus KubeRay defines (ray-operator/apis/ray/v1/rayjob_types.go).
_WAITING = ["", "Initializing", "Running", "Waiting", "Retrying", "Suspending", "Suspended"]


@pytest.mark.parametrize("status", _WAITING)
def test_launcher_waits_through_every_unfinished_status_then_succeeds(tmp_path, status):
    rc, out, created = _launch(tmp_path, [status, status, "Running", "Complete"], job="SUCCEEDED")
    assert rc == 0 and len(created) == 1, out
    assert "bertml-score-tonight succeeded" in out and f": {status or 'New'} " in out


@pytest.mark.parametrize("dep,job,says", [
    ("Failed", "FAILED", "Failed: TheReason what KubeRay says"),
    ("ValidationFailed", "", "ValidationFailed: TheReason what KubeRay says"),
    ("Complete", "FAILED", "ended: FAILED"),
    ("Complete", "STOPPED", "ended: STOPPED"),
    ("Complete", "", "ended: no job status"),
    ("SomethingNew", "", "unknown jobDeploymentStatus 'SomethingNew'"),
])
def test_launcher_fails_loudly_on_every_failed_or_unknown_status(tmp_path, dep, job, says):
    rc, out, _ = _launch(tmp_path, ["Initializing", dep], job=job)
    assert rc == 1 and says in out, out


@pytest.mark.parametrize("earlier", _WAITING)
def test_an_unfinished_earlier_rayjob_fails_the_night_instead_of_skipping_it_quietly(tmp_path, earlier):
    rc, out, created = _launch(tmp_path, ["Complete"], job="SUCCEEDED",
                               earlier=[("bertml-score-old1", "Complete"), ("bertml-score-old2", earlier)])
    assert rc == 1 and not created, out
    assert "bertml-score-old2" in out and "skipped" in out and "bertml-score-old1" not in out


@pytest.mark.parametrize("earlier", ["Complete", "Failed", "ValidationFailed"])
def test_finished_earlier_rayjobs_do_not_block_tonight(tmp_path, earlier):
    rc, out, created = _launch(tmp_path, ["Running", "Complete"], job="SUCCEEDED",
                               earlier=[("bertml-score-old", earlier)])
    assert rc == 0 and len(created) == 1, out
