"""Real cluster parts for the `objectstore` and `multinode` tests, started by the tests.

- An S3-protocol server on 127.0.0.1 (moto's ThreadedMotoServer, as Ray's own suite uses),
  one per session, on a free port. Dummy credentials and its endpoint are set in the
  environment here, at collection time, before any Ray starts, so every Ray worker
  (also those of a multi-node cluster, started from this process) inherits them.
- A real 2-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: two raylets,
  distinct node ids, 2 CPUs each), one per module that asks for it. A process holds one
  Ray connection at a time: the fixture shuts down the session's local Ray (the
  `ray_local` fixture) first and brings a local one back afterwards when there was one,
  so the rest of the suite runs as before whatever the order.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_PORT = _free_port()
# The environment's credentials: a value the secret-scan test looks for in every written byte.
ENV_KEY, ENV_SECRET = "AKIDENVEXAMPLE", "ENVSECRET-bertml-3f9c1a"
os.environ.update({
    "AWS_ACCESS_KEY_ID": ENV_KEY, "AWS_SECRET_ACCESS_KEY": ENV_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
})
# Per-URI options, as users without AWS_ENDPOINT_URL give them (and the form whose joins broke).
S3_OPTS = f"?endpoint_override=127.0.0.1:{S3_PORT}&scheme=http"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1; yields its endpoint URL."""
    pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{S3_PORT}"
    server.stop()


class Bucket:
    """A fresh bucket on the test S3 server, with URI helpers and a listing."""

    def __init__(self, name: str):
        import boto3

        self.name = name
        self.client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        self.client.create_bucket(Bucket=name)

    def uri(self, key: str = "", opts: bool = True) -> str:
        """s3://bucket/key, with the endpoint given in the URI's options (or, opts=False, by the environment)."""
        return f"s3://{self.name}/{key}" + (S3_OPTS if opts else "")

    def keys(self, prefix: str = "") -> list[str]:
        """Object keys under `prefix` (pyarrow's empty `folder/` markers left out)."""
        out, token = [], None
        while True:
            kw = {"Bucket": self.name, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client.list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]  # not folder markers
            if not page.get("IsTruncated"):
                return sorted(out)
            token = page["NextContinuationToken"]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def etags(self, prefix: str = "") -> dict[str, tuple]:
        """key -> (ETag, LastModified): changes whenever an object is rewritten."""
        out = {}
        for k in self.keys(prefix):
            h = self.client.head_object(Bucket=self.name, Key=k)
            out[k] = (h["ETag"], h["LastModified"])
        return out

    def upload_folder(self, folder: str, prefix: str) -> str:
        for root, _, files in os.walk(folder):
            for f in files:
                path = os.path.join(root, f)
                with open(path, "rb") as fh:
                    self.put(f"{prefix}/{os.path.relpath(path, folder)}", fh.read())
        return prefix


@pytest.fixture
def bucket(s3_server):
    return Bucket(f"bertml-{uuid.uuid4().hex[:10]}")


# ----------------------------------------------------------------------------- multi-node Ray


@pytest.fixture(scope="module")
def two_nodes():
    """A real 2-node Ray cluster on this machine (2 CPUs per node); the driver connects to it."""
    import ray
    from ray.cluster_utils import Cluster

    from bertml.runtime import init_ray

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    # Its own temp dir: a head node records its address in <temp dir>/ray_current_cluster,
    # where any later `ray.init()` on this machine (other test runs too) would find it.
    temp = tempfile.mkdtemp(prefix="bertml-rc-", dir="/tmp")  # short: Ray puts unix sockets below it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "_temp_dir": temp})
    cluster.worker = cluster.add_node(num_cpus=2, _temp_dir=temp)
    cluster.wait_for_nodes()
    cluster.temp_dir = temp
    ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": "bertml.runtime.quiet_ray_loggers"})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if had_local:
            init_ray(num_cpus=2)


def node_of_actors(class_part: str) -> dict[str, int]:
    """Ray's own actor table: node id -> actors whose class name contains `class_part`."""
    from collections import Counter

    from ray._private import state

    return dict(Counter(a["Address"]["NodeID"] for a in state.actors().values() if class_part in a["ActorClassName"]))


def node_of_tasks(name_part: str) -> dict[str, int]:
    """Ray's own task events (GCS): node id -> tasks whose name contains `name_part` that ran there."""
    from collections import defaultdict

    from ray._private import state

    seen: dict[str, set] = defaultdict(set)
    for e in state.state._get_all_task_events():
        node = e.state_updates.node_id.hex() if e.HasField("state_updates") else ""
        if name_part in e.task_info.name and node:
            seen[node].add(e.task_id)
    return {n: len(t) for n, t in seen.items()}
