"""Test-only fault injection: fail once at a named point, to prove recovery paths.

A test arms a fault through the environment, never through a production signature or a
user config file:

    with faults.inject({"point": "train_epoch", "epoch": 2, "rank": 1, "mode": "kill",
                        "marker": "/tmp/x", "delay_s": 3}):
        train(cfg)

(or sets `BERTML_FAULT` to the same dict as JSON for a child process). The driver reads it
with `armed()` where a run starts and hands it to the code that may fail. It fires at most
once: the marker file records that it already fired, so the restarted worker (or the re-run)
passes the same point normally. `delay_s` (optional) waits that long at the point before
failing, to model a process that dies some time into a stage rather than at its first
instruction.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator

ENV = "BERTML_FAULT"


class InjectedFault(RuntimeError):
    """Raised by an injected fault (mode=raise)."""


def armed() -> dict | None:
    """The fault armed for this process (`BERTML_FAULT`), or None: production never sets it."""
    text = os.environ.get(ENV)
    return json.loads(text) if text else None


@contextlib.contextmanager
def inject(fault: dict) -> Iterator[None]:
    """Arm `fault` for the runs started inside the block (tests only)."""
    before = os.environ.get(ENV)
    os.environ[ENV] = json.dumps(fault)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def maybe_fail(fault: dict | None, point: str, **where: object) -> None:
    if not fault or fault.get("point") != point:
        return
    if any(k in fault and fault[k] != v for k, v in where.items()):
        return
    marker = fault["marker"]
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # already fired once
    os.close(fd)
    time.sleep(float(fault.get("delay_s", 0)))
    if fault.get("mode", "raise") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} {where}")
