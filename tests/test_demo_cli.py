"""The demo's whole path (corpus -> train -> score -> baseline) with a tiny encoder, and the CLI."""

import os
import subprocess
import sys

import pytest

from bertml.cli import main

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.slow
def test_demo_runs_end_to_end_with_a_tiny_encoder(ray_local, tiny_encoder, tmp_path, capsys):
    from bertml.config import load
    from bertml.demo import DemoConfig, run_demo

    cfg = load(DemoConfig, None, [f"out_dir={tmp_path}", f"model={tiny_encoder}", "n_docs=80", "epochs=1",
                                  "max_length=32", "batch_size=8"])
    result = run_demo(cfg)
    assert set(result) == {"tfidf+logreg @0.5", "bertml @0.5", "bertml tuned"}
    assert 0.0 <= result["bertml tuned"]["micro_f1"] <= 1.0
    assert os.path.exists(tmp_path / "model" / "bertml.json")
    assert os.path.exists(tmp_path / "scored" / "_bertml_manifest.json")
    assert "BBC multi-label test split" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "pretrain", "score", "demo"])
def test_help_lists_every_key(command):
    out = subprocess.run([sys.executable, "-m", "bertml.cli", command, "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    from bertml.cli import config_types
    from bertml.config import describe

    for key, _, _ in describe(config_types()[command]):
        assert key in out
    assert "default:" in out


def test_config_errors_exit_2_with_one_line(capsys):
    assert main(["score", "checkpoint=x", "input=y", "output=z", "batch_size=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bertml score: config error: batch_size: expected int | null, got 'many'"


def test_input_errors_exit_2_with_one_line(tmp_path, multi_ckpt, capsys):
    rc = main(["score", f"checkpoint={multi_ckpt}", f"input={tmp_path}/missing", f"output={tmp_path}/o"])
    assert rc == 2
    assert "no such file or folder" in capsys.readouterr().err
