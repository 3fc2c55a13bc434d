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

import shutil
import tempfile
import uuid

import pytest
from clusterkit import S3_PORT, Bucket


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
                                                            "temp_dir": temp})
    cluster.worker = cluster.add_node(num_cpus=2, temp_dir=temp)
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
