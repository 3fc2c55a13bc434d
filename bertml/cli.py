"""`bertml` command line: one subcommand per job, each a typed config plus `key=value` overrides.

    bertml train    --config jobs/configs/train.yaml [key=value ...]
    bertml pretrain --config jobs/configs/pretrain.yaml data.text=... model.name=... run.output=...
    bertml score    --config jobs/configs/score.yaml checkpoint=... input=... output=...
    bertml evaluate --config jobs/configs/evaluate.yaml checkpoint=... data=... report=...
    bertml demo     [key=value ...]

`bertml <command> --help` lists every config key with its default and meaning. With no
RAY_ADDRESS the command starts an embedded local Ray; with one, it joins that cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from bertml.config import (
    ConfigError,
    DemoConfig,
    EvalConfig,
    PretrainConfig,
    ScoreConfig,
    ThresholdsConfig,
    TrainConfig,
    describe,
    load,
    to_dict,
)
from bertml.errors import BertmlError
from bertml.secrets import flat_paths, redact, warn_inline

log = logging.getLogger("bertml")


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable  # (cfg) -> int exit code
    summary: str


def _run_train(cfg: TrainConfig) -> int:
    from bertml.train import format_summary, train

    result = train(cfg)
    print(format_summary(result.metrics, cfg.data.problem_type == "multi_label"))
    print(f"checkpoint: {redact(result.checkpoint)}")
    return 0


def _run_pretrain(cfg: PretrainConfig) -> int:
    from bertml.pretrain import format_summary, pretrain

    result = pretrain(cfg)
    print(format_summary(result))
    print(f"encoder: {redact(result.output)}")
    return 0


def _run_score(cfg: ScoreConfig) -> int:
    from bertml.scoring import score

    print(score(cfg).format())
    return 0


def _run_demo(cfg) -> int:
    from bertml.demo import run_demo

    run_demo(cfg)
    return 0


def _run_evaluate(cfg) -> int:
    from bertml.evaluate import run_evaluate

    return run_evaluate(cfg)


def _run_thresholds(cfg) -> int:
    from bertml.evaluate import run_thresholds

    return run_thresholds(cfg)


# Every command, always: each run function imports its stage when the command runs, so a
# broken import fails that command loudly instead of removing it from `bertml --help`.
COMMANDS: dict[str, Command] = {
    "train": Command(TrainConfig, _run_train, "fine-tune an encoder on labelled Parquet (Ray Train)"),
    "pretrain": Command(PretrainConfig, _run_pretrain,
                        "continue an encoder's masked-language-model pretraining on unlabelled Parquet (Ray Train)"),
    "score": Command(ScoreConfig, _run_score, "bulk-score Parquet shards with a checkpoint (Ray Data)"),
    "demo": Command(DemoConfig, _run_demo, "offline demo: BBC News corpus, MiniLM, train + score + baseline"),
    "evaluate": Command(EvalConfig, _run_evaluate,
                        "score labelled Parquet and write a metrics + plots report (Ray Data)"),
    "thresholds": Command(ThresholdsConfig, _run_thresholds,
                          "tune per-label thresholds on labelled data; write a checkpoint copy"),
}


def config_types() -> dict[str, type]:
    return {name: c.config for name, c in COMMANDS.items()}


def keys_help(cls: type) -> str:
    rows = describe(cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (set in the YAML, or override as key=value):"]
    for key, default, help_ in rows:
        wrapped = textwrap.wrap(help_, 100 - width - 4) or [""]
        lines.append(f"  {key:<{width}}  {wrapped[0]}")
        lines += [f"  {'':<{width}}  {w}" for w in wrapped[1:]]
        lines.append(f"  {'':<{width}}  default: {default}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertml", description="Distributed BERT multi-label text tagger on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `bertml <command> --help` for every config key of a command.\n"
               "Local by default: without RAY_ADDRESS an embedded Ray starts on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.summary, description=f"bertml {name}: {cmd.summary}",
                           epilog=keys_help(cmd.config), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="YAML config file (see jobs/configs/)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=2e-5")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    from bertml.runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    cmd = COMMANDS[args.command]
    try:
        cfg = load(cmd.config, args.config, args.overrides)
    except ConfigError as e:
        print(f"bertml {args.command}: config error: {redact(str(e))}", file=sys.stderr)
        return 2
    resolved = json.dumps(redact(to_dict(cfg)), indent=2, ensure_ascii=False)  # never a URI's credentials
    warn_inline(flat_paths(cfg))
    if args.print_config:
        print(resolved)
        return 0
    log.info("bertml %s config:\n%s", args.command, resolved)
    return _run(args.command, cmd, cfg)


def _run(name: str, cmd: Command, cfg) -> int:
    """Run a command; bertml's own errors, OS errors and signals end in one line and an exit code:
    2 for a problem to fix, 128 + the signal's number when stopped (143 SIGTERM, 130 SIGINT)."""
    import os
    import signal
    import threading

    from bertml.runtime import Interrupted, catch_signals

    user_errors = (BertmlError, FileNotFoundError)

    main_thread = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # then it is the caller's Ray
    os.environ["BERTML_CATCH_SIGNALS"] = "1"
    catch_signals()
    try:
        return cmd.run(cfg)
    except (Interrupted, KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != signal.SIGTERM:  # Ray's handler, during ray.init: sys.exit(15)
            raise
        signum = getattr(e, "signum", signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
        print(f"bertml {name}: stopped by {signal.Signals(signum).name}; finished work is kept and nothing "
              "half-written is visible. Re-run the same command to resume", file=sys.stderr)
        return 128 + signum
    except user_errors as e:
        print(f"bertml {name}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's side: read-only or full disk, a path that is a file, permissions
        where = f" {e.filename}:" if getattr(e, "filename", None) else ""
        reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else redact(str(e).splitlines()[0])
        print(f"bertml {name}: error:{where} {reason}; fix the cause and re-run (finished work is kept)",
              file=sys.stderr)
        return 2
    finally:
        if not ray_was_up:
            _shutdown_ray(main_thread)
        os.environ.pop("BERTML_CATCH_SIGNALS", None)
        for sig, handler in before.items():  # as the caller had them (main() may run inside another program)
            signal.signal(sig, handler)


def _shutdown_ray(main_thread: bool) -> None:
    """Leave no Ray processes behind: stop the embedded Ray this run started (or disconnect
    from the cluster it joined)."""
    import signal

    if "ray" not in sys.modules:
        return
    if main_thread:  # a second signal must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    import ray

    if ray.is_initialized():
        ray.shutdown()


def run(argv: list[str] | None = None) -> None:
    """The `bertml` command: `main`, then exit with its status at once.

    Flushed and ended with `os._exit`: after an interrupted run, Ray's C++ core worker can
    outlive `ray.shutdown()` in the interpreter's teardown and end the process with status 1
    when it notices its raylet gone, replacing 130/143 (seen once in CI)."""
    import logging
    import os

    code = main(argv)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
