import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Ray workers started by the session's local Ray inherit this, so test modules holding
# train loops (and tests/tiny.py) import there too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p)

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


def make_checkpoint(path: str, multi: bool = True, thresholds: list[float] | None = None, max_length: int = 64,
                    english_only: bool = False) -> str:
    """A bertml checkpoint from the tiny random-init model (no training: fast)."""
    from tiny import KEYWORDS, build_tiny_model

    from bertml import checkpoint as ckpt_io
    from bertml.labels import LabelSet
    from bertml.model import build_model, load_tokenizer

    enc = build_tiny_model(path + "-encoder", english_only=english_only)
    labels = LabelSet(tuple(sorted(KEYWORDS)), multi)
    model = build_model(enc, labels)
    meta = ckpt_io.CheckpointMeta(
        labels=list(labels.names), problem_type="multi_label" if multi else "single_label",
        max_length=max_length,
        thresholds=(thresholds or [0.3, 0.4, 0.5, 0.6]) if multi else None,
    )
    ckpt_io.save(path, model, load_tokenizer(enc), meta)
    return path


@pytest.fixture(scope="session")
def multi_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "multi"), multi=True)


@pytest.fixture(scope="session")
def single_ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "single"), multi=False)


@pytest.fixture(scope="session")
def english_ckpt(tmp_path_factory):
    """A checkpoint whose vocabulary never saw a non-ASCII character (an English encoder's)."""
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "english"), english_only=True)
