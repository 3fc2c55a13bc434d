"""Test-only fault injection: fail once at a named point, to prove recovery paths.

A fault is a small dict passed explicitly by tests (never read from user config files):
    {"point": "train_epoch", "epoch": 2, "rank": 1, "mode": "raise" | "kill", "marker": "/tmp/x",
     "delay_s": 3}
It fires at most once: the marker file records that it already fired, so the restarted
worker (or the re-run) passes the same point normally. `delay_s` (optional) waits that long
at the point before failing, to model a process that dies some time into a stage rather
than at its first instruction.
"""

from __future__ import annotations

import os
import signal
import time


class InjectedFault(RuntimeError):
    """Raised by an injected fault (mode=raise)."""


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
