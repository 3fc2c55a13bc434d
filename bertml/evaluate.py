"""Evaluation on labelled Parquet, through the same Ray Data scoring path as `bertml score`.

    data (text + labels) -> bertml.scoring.score (labels passed through) -> scored Parquet
    -> probs [N, L] + targets -> scikit-learn metrics at the checkpoint's thresholds and at 0.5
    -> report folder: metrics.json, per_label.csv, PNG plots, report.html     (bertml evaluate)
    -> per-label thresholds tuned on the data -> a copy of the checkpoint     (bertml thresholds)

Rows without text (status "empty") have no probabilities: they are counted and left out
of every metric. Single-label checkpoints get accuracy, macro-F1 and a confusion matrix.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import numpy as np

from bertml.config import EvalConfig, ScoreConfig, ThresholdsConfig, to_dict
from bertml.metrics import Scored
from bertml.secrets import redact
from bertml.shards import join_uri, spec_text

log = logging.getLogger("bertml.evaluate")

# ----------------------------------------------------------------------------- scoring


def score_labelled(score_cfg: ScoreConfig, labels_column: str, delimiter: str | None,
                   unknown_labels: str = "fail") -> Scored:
    """Score `score_cfg.input` with `bertml.scoring.score` and line the probabilities up with the true labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from bertml import checkpoint as ckpt_io
    from bertml import shards as sh
    from bertml.scoring import score

    local = ckpt_io.localize(score_cfg.checkpoint)  # object-storage checkpoints: read a cached copy
    meta = ckpt_io.read_meta(local)
    shards = sh.resolve(score_cfg.input, "data")
    infos = sh.inspect_all(shards)
    for info in infos:
        if isinstance(info, sh.InputError):
            raise info
        sh.check_column(info, labels_column, "labels")
    summary = score(score_cfg)
    log.info("scored:\n%s", summary.format())

    table = _scored_with_labels(score_cfg, labels_column, shards, infos)
    status = {d["values"]: d["counts"] for d in pc.value_counts(table.column("status")).to_pylist()}
    has_probs = table.column("probs").is_valid()
    n_rows, n_empty = table.num_rows, table.num_rows - int(pc.sum(has_probs).as_py() or 0)
    table = table.filter(has_probs)
    names = list(meta.labels)
    targets, keep, unknown = _targets(score_cfg, meta, table.column(labels_column).to_pylist(), labels_column,
                                      delimiter, unknown_labels)
    table = table.filter(pa.array(keep))
    n = table.num_rows
    flat = pc.list_flatten(table.column("probs")).to_numpy(zero_copy_only=False)
    probs = flat.reshape(n, len(names)).astype(np.float32) if n else np.zeros((0, len(names)), np.float32)
    return Scored(
        probs=probs, targets=targets, keys=table.column("_key").to_pylist(), labels=names,
        multi_label=meta.multi_label, rows=n_rows, empty=n_empty, unknown=unknown,
        unknown_rows=int((~keep).sum()), status=status,
        checkpoint=redact(score_cfg.checkpoint) if ckpt_io.is_uri(score_cfg.checkpoint) else os.path.abspath(local),
        fingerprint=ckpt_io.fingerprint(local),
        thresholds=np.asarray(meta.thresholds, dtype=np.float64) if meta.multi_label else None,
        checkpoint_metrics=meta.metrics, coverage=summary.coverage,
    )


def _scored_with_labels(score_cfg: ScoreConfig, labels_column: str, shards, infos):
    """The scored files read back: probs, the labels passed through, status and a row key."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertml import shards as sh
    from bertml.output import ROW_OUT, OutputDir, output_name

    out = OutputDir(score_cfg.output)
    tables = []
    for shard, info in zip(shards, infos):
        t = pq.read_table(out.path(output_name(shard.key)), filesystem=out.fs)
        expected = info.num_rows
        if t.num_rows != expected:  # e.g. a reused `scored` folder that holds another input's rows
            raise sh.InputError(f"{out.path(output_name(shard.key))}: {t.num_rows} scored rows for {expected} input rows "
                                f"in {shard.uri}; delete the scored folder {redact(score_cfg.output)} and re-run")
        key_col = score_cfg.id_column or ROW_OUT
        keys = [str(k) if score_cfg.id_column else f"{shard.key}:{k}" for k in t.column(key_col).to_pylist()]
        tables.append(t.select(["probs", labels_column, "status"]).append_column("_key", pa.array(keys, pa.string())))
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if table is None or table.num_rows == 0:
        raise sh.InputError(f"data {redact(score_cfg.input)}: no rows to evaluate")
    return table


def _targets(score_cfg: ScoreConfig, meta, column: list, labels_column: str, delimiter: str | None,
             unknown_labels: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(targets of the rows kept, which rows are kept, unknown label counts) from the labels cells."""
    from bertml import shards as sh
    from bertml.labels import LabelError, LabelSet, parse_cell

    names = list(meta.labels)
    known = set(names)
    unknown: dict[str, int] = {}
    try:
        cells = [parse_cell(c, delimiter) for c in column]
    except LabelError as e:
        raise sh.InputError(f"data {redact(score_cfg.input)}: column {labels_column!r}: {e}") from None
    if unknown_labels == "ignore":
        for c in cells:
            for n in c:
                if n not in known:
                    unknown[n] = unknown.get(n, 0) + 1
        cells = [[n for n in c if n in known] for c in cells]
    keep = np.ones(len(cells), dtype=bool)
    if not meta.multi_label and unknown_labels == "ignore":
        keep = np.array([len(c) > 0 for c in cells], dtype=bool) if cells else keep
        cells = [c for c, k in zip(cells, keep) if k]
    try:
        targets = LabelSet(tuple(names), meta.multi_label).encode(cells, None)
    except LabelError as e:
        hint = " (or set unknown_labels=ignore)" if "not in the label set" in str(e) else ""
        raise sh.InputError(f"data {redact(score_cfg.input)}: column {labels_column!r}: {e}; the checkpoint knows "
                            f"{names[:10]}{hint}") from None
    return targets, keep, unknown


# ----------------------------------------------------------------------------- evaluate


def evaluate_checkpoint(cfg: EvalConfig) -> dict:
    """Score `cfg.data`, compute every metric, write the report folder. Returns metrics.json's content."""
    from bertml import checkpoint as ckpt_io
    from bertml import cluster, metrics
    from bertml.report import check_report_folder, write_report
    from bertml.shards import InputError

    t0 = time.perf_counter()
    cluster.resolve_outputs(cfg, ["report"])
    check_report_folder(cfg.report)
    if ckpt_io.is_uri(cfg.report):
        check_report_prefix(cfg.report)
    s = score_labelled(cfg.score_config(), cfg.labels_column, cfg.label_delimiter, cfg.unknown_labels)
    if not len(s.probs):
        raise InputError(f"data {redact(cfg.data)}: all {s.rows} rows are empty (no text); nothing to evaluate")
    out: dict = {
        "checkpoint": s.checkpoint, "fingerprint": s.fingerprint, "data": redact(cfg.data),
        "problem_type": "multi_label" if s.multi_label else "single_label", "labels": s.labels,
        "rows": {"total": s.rows, "evaluated": int(len(s.probs)), "excluded_empty": s.empty,
                 "excluded_unknown_label": s.unknown_rows, "status": s.status},
        "excluded": f"{s.empty} row(s) with status 'empty' (no text) have no probabilities and are left out of "
                    "every metric" + (f"; {s.unknown_rows} row(s) whose label the checkpoint does not know too"
                                      if s.unknown_rows else ""),
        "unknown_labels_ignored": s.unknown,
        "coverage": {"data": s.coverage, "training": s.checkpoint_metrics.get("coverage")},
    }
    if s.multi_label:
        tuned = metrics.evaluate(s.probs, s.targets, s.labels, s.thresholds, True)
        at05 = metrics.evaluate(s.probs, s.targets, s.labels, None, True)
        source = s.checkpoint_metrics.get("thresholds", {}).get("source") or \
            "bertml train: tuned per label on the validation split"
        out.update(thresholds={"source": source, "values": dict(zip(s.labels, map(float, s.thresholds)))},
                   tuned=_averages(tuned), **{"at_0.5": _averages(at05)})
        per_label = {"tuned": tuned["per_label"], "at_0.5": at05["per_label"]}
    else:
        m = metrics.evaluate(s.probs, s.targets, s.labels, None, False)
        out.update(argmax=_averages(m))
        per_label = {"argmax": m["per_label"]}
    out["config"] = redact(to_dict(cfg))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if not ckpt_io.is_uri(cfg.report):
        write_report(cfg.report, out, per_label, s, max_plot_labels=cfg.max_plot_labels)
        return out
    with tempfile.TemporaryDirectory(prefix="bertml-report-") as tmp:  # written here, then uploaded
        names = write_report(tmp, out, per_label, s, max_plot_labels=cfg.max_plot_labels)
        upload_report(tmp, names, cfg.report)
    return out


def upload_report(local: str, names: list[str], uri: str) -> None:
    """Put the report files at `uri` (object storage), replacing a previous report's files;
    `scored/` and anything else under the prefix are left alone. Each object appears only
    when its upload completes; report.html goes last."""

    from bertml.report import PLOTS_MULTI, PLOTS_SINGLE
    from bertml.shards import split_uri

    fs, root, _ = split_uri(uri, "report", glob=False)
    root = root.rstrip("/")
    present = check_report_prefix(uri)
    stale = {"metrics.json", "per_label.csv", "report.html", *PLOTS_MULTI, *PLOTS_SINGLE} - set(names)
    for path in present:
        if os.path.basename(path) in stale:
            fs.delete_file(path)
    for name in sorted(names, key=lambda n: n == "report.html"):
        with open(os.path.join(local, name), "rb") as f, fs.open_output_stream(f"{root}/{name}") as o:
            o.write(f.read())


def check_report_prefix(uri: str) -> list[str]:
    """Object-storage `check_report_folder`: refuse a prefix whose report-named objects are not
    an earlier bertml report's; returns the report objects there (to be replaced)."""
    import pyarrow.fs as pafs

    from bertml.output import OutputError
    from bertml.report import REPORT_FILES
    from bertml.shards import split_uri

    fs, root, _ = split_uri(uri, "report", glob=False)
    root = root.rstrip("/")
    present = [i.path for i in fs.get_file_info([f"{root}/{n}" for n in REPORT_FILES]) if i.type == pafs.FileType.File]
    if present and not _is_bertml_report(fs, f"{root}/metrics.json"):
        raise OutputError(f"report {redact(uri)} holds {os.path.basename(present[0])!r}, which is not from a bertml "
                          "report; bertml never overwrites files it did not write: choose a new or empty prefix")
    return present


def _is_bertml_report(fs, path: str) -> bool:
    import json

    try:
        with fs.open_input_stream(path) as f:
            m = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"fingerprint", "problem_type", "rows"} <= set(m)


def _averages(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "per_label"}


def format_metrics(m: dict) -> str:
    """A few lines for the terminal."""
    rows = m["rows"]
    lines = [f"evaluated {rows['evaluated']} of {rows['total']} rows ({rows['excluded_empty']} empty, excluded)"]
    keys = ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "subset_accuracy", "hamming_loss",
            "micro_roc_auc", "macro_average_precision")
    if m["problem_type"] == "multi_label":
        lines.append(f"{'metric':<24} {'tuned':>8} {'at 0.5':>8}")
        for k in keys:
            if k in m["tuned"]:
                lines.append(f"{k:<24} {m['tuned'][k]:>8.4f} {m['at_0.5'][k]:>8.4f}")
    else:
        for k in ("accuracy", "macro_f1", "weighted_f1", "macro_roc_auc"):
            if k in m["argmax"]:
                lines.append(f"{k:<24} {m['argmax'][k]:>8.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- thresholds


def tune_checkpoint(cfg: ThresholdsConfig) -> dict:
    """Tune per-label thresholds on `cfg.data`; write a copy of the checkpoint with them. Returns the record."""
    from bertml import checkpoint as ckpt_io
    from bertml import cluster, metrics
    from bertml.shards import InputError

    cluster.resolve_outputs(cfg, ["output", "scored"])
    meta = ckpt_io.read_meta(ckpt_io.localize(cfg.checkpoint))
    if not meta.multi_label:
        raise ckpt_io.CheckpointError(f"checkpoint {redact(cfg.checkpoint)}: single_label checkpoints predict the "
                                      "argmax; there are no thresholds to tune")
    remote = ckpt_io.is_uri(cfg.output)
    out_abs = cfg.output if remote else os.path.abspath(cfg.output)
    taken = not ckpt_io.prefix_is_empty(cfg.output) if remote else os.path.exists(out_abs) and os.listdir(out_abs)
    if taken and not cfg.overwrite:  # fail before scoring
        raise ckpt_io.CheckpointError(f"output {redact(cfg.output)} already exists and is not empty; "
                                      "choose a new folder or set overwrite=true")
    scored_dir = cfg.scored or tempfile.mkdtemp(prefix="bertml-thresholds-")
    try:
        s = score_labelled(cfg.score_config(scored_dir), cfg.labels_column, cfg.label_delimiter, cfg.unknown_labels)
    finally:
        if not cfg.scored:
            shutil.rmtree(scored_dir, ignore_errors=True)
    if not len(s.probs):
        raise InputError(f"data {redact(cfg.data)}: all {s.rows} rows are empty (no text); nothing to tune "
                         "thresholds on: point data= at labelled Parquet with a text column")
    new, info = metrics.tune_thresholds(s.probs, s.targets, cfg.target_precision)
    old_m = metrics.evaluate(s.probs, s.targets, s.labels, s.thresholds, True)
    new_m = metrics.evaluate(s.probs, s.targets, s.labels, new, True)
    per_label = {}
    for j, name in enumerate(s.labels):
        o, n = old_m["per_label"][name], new_m["per_label"][name]
        per_label[name] = {"support": n["support"], "old_threshold": float(s.thresholds[j]), "new_threshold": float(new[j]),
                           "old_f1": o["f1"], "new_f1": n["f1"], "old_precision": o["precision"],
                           "new_precision": n["precision"], "new_recall": n["recall"]}
    record = {
        "source": f"bertml thresholds on {spec_text(cfg.data)}" + (
            f" (lowest threshold with precision >= {cfg.target_precision})" if cfg.target_precision is not None
            else " (max F1 per label)"),
        "mode": "target_precision" if cfg.target_precision is not None else "max_f1",
        "target_precision": cfg.target_precision, "data": cfg.data,
        "from_checkpoint": s.checkpoint, "from_fingerprint": s.fingerprint,
        "rows": int(len(s.probs)), "excluded_empty": s.empty,
        "fallback_labels": [s.labels[j] for j in info["fallback_labels"]],
        "precision_unreached": [s.labels[j] for j in info["precision_unreached"]],
        "global_threshold": info["global_threshold"],
        "micro_f1": {"old": old_m["micro_f1"], "new": new_m["micro_f1"]},
        "macro_f1": {"old": old_m["macro_f1"], "new": new_m["macro_f1"]},
        "per_label": per_label, "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": to_dict(cfg),
    }
    record = redact(record)
    if not remote:
        ckpt_io.copy_with_thresholds(ckpt_io.localize(cfg.checkpoint), cfg.output, new, record, overwrite=cfg.overwrite)
        return record
    with tempfile.TemporaryDirectory(prefix="bertml-thresholds-") as tmp:  # assembled here, then uploaded
        local = os.path.join(tmp, "checkpoint")
        ckpt_io.copy_with_thresholds(ckpt_io.localize(cfg.checkpoint), local, new, record)
        ckpt_io.upload(local, cfg.output)
    return record


def format_thresholds(record: dict) -> str:
    """Old vs new threshold and F1 per label, measured on the tuning data."""
    rows = record["per_label"]
    width = max([5, *(_width(n) for n in rows)])
    lines = [f"thresholds tuned on {record['rows']} rows: {record['source']}",
             f"{_pad('label', width)} {'support':>7} {'old_thr':>8} {'new_thr':>8} {'old_f1':>7} {'new_f1':>7} {'new_prec':>8}"]
    for name, r in rows.items():
        lines.append(f"{_pad(name, width)} {r['support']:>7d} {r['old_threshold']:>8.3f} {r['new_threshold']:>8.3f} "
                     f"{r['old_f1']:>7.3f} {r['new_f1']:>7.3f} {r['new_precision']:>8.3f}")
    for avg in ("micro", "macro"):
        lines.append(f"{_pad(avg, width)} {'':>7} {'':>8} {'':>8} {record[avg + '_f1']['old']:>7.3f} "
                     f"{record[avg + '_f1']['new']:>7.3f}")
    for key, what in (("fallback_labels", "no positives or no negatives: global threshold"),
                      ("precision_unreached", "target precision unreachable: max-F1 threshold")):
        if record[key]:
            lines.append(f"{what}: {', '.join(record[key])}")
    return "\n".join(lines)


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


# ----------------------------------------------------------------------------- commands


def run_evaluate(cfg: EvalConfig) -> int:
    from bertml import checkpoint as ckpt_io

    m = evaluate_checkpoint(cfg)
    print(format_metrics(m))
    report = redact(cfg.report) if ckpt_io.is_uri(cfg.report) else os.path.abspath(cfg.report)
    print(f"report: {join_uri(report, 'report.html')}")
    return 0


def run_thresholds(cfg: ThresholdsConfig) -> int:
    from bertml import checkpoint as ckpt_io

    record = tune_checkpoint(cfg)
    print(format_thresholds(record))
    out = redact(cfg.output) if ckpt_io.is_uri(cfg.output) else os.path.abspath(cfg.output)
    print(f"checkpoint with new thresholds: {out} (original unchanged: {redact(cfg.checkpoint)})")
    return 0

