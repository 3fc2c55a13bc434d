"""Train state beside an epoch's checkpoint: optimizer, LR schedule, AMP scaler and progress
(`train_state.safetensors` + `train_state.json`, no pickle), so a replaced worker group
resumes where the last epoch ended. The final checkpoint is written without them
(`destination.export`)."""

from __future__ import annotations

import json
import os

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


def save_train_state(path: str, optimizer, scheduler, scaler, epoch: int, step: int, history: list) -> None:
    """Optimizer/schedule/progress into checkpoint folder `path`: tensors as safetensors
    (keys `<param id>.<name>`), everything else as JSON."""
    import torch
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors, os.path.join(path, STATE_TENSORS))
    state = {"epoch": epoch, "step": step, "history": history, "param_groups": sd["param_groups"],
             "scalars": scalars, "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler else None}
    with open(os.path.join(path, STATE_JSON), "w", encoding="utf-8") as f:
        json.dump(state, f, default=float)


def has_train_state(path: str) -> bool:
    """Whether checkpoint folder `path` holds a train state (epoch checkpoints do, final ones not)."""
    return os.path.exists(os.path.join(path, STATE_JSON))


def read_train_state(path: str) -> dict:
    """train_state.json: epoch, step, history, and the optimizer/schedule/scaler state."""
    with open(os.path.join(path, STATE_JSON), encoding="utf-8") as f:
        return json.load(f)


def load_train_state(path: str, optimizer, scheduler, scaler) -> dict:
    """Restore what `save_train_state` wrote into `optimizer`, `scheduler` and `scaler`;
    returns train_state.json (epoch, step, history)."""
    from safetensors.torch import load_file

    state = read_train_state(path)
    tensors = load_file(os.path.join(path, STATE_TENSORS))
    per_param: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    for key, v in state["scalars"].items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
