"""Helpers for the cluster tests: the S3 test server's settings, a bucket client, Ray placement.

Imported by this folder's conftest at collection time, so the environment below is set
before any Ray starts (every Ray worker, also of a multi-node cluster started from the
test process, inherits it).
"""

from __future__ import annotations

import os
import socket


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
