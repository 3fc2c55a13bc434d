import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from bertml.runtime import _QUIET_ENV  # noqa: E402

for _k, _v in _QUIET_ENV.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (2 CPUs, like this machine)."""
    from bertml.runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A tiny random-init BERT folder (encoder + tokenizer) to fine-tune from."""
    from tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "encoder"))
