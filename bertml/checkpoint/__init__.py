"""A checkpoint is a self-describing folder that plain `transformers` can load.

    config.json          labels (id2label), problem_type
    model.safetensors    weights (safetensors only; pickle is refused)
    tokenizer files      tokenizer.json, tokenizer_config.json, ...
    bertml.json          ordered labels, per-label thresholds, max_length, problem type,
                         the resolved training config and final metrics
    train_state.*        epoch checkpoints only: optimizer, schedule, progress (for resume)

`validate` checks everything `load` will need before any Ray work starts (every file
present and parsable, the weights file complete, tokenizer and embeddings from one model,
a tokenizer that reads text), so a bad checkpoint gives one clear error instead of a
traceback from inside an actor, or silently wrong tags.

    format.py       bertml.json, save/load, fingerprint, the position limit
    checks.py       validate (weights, model build, tokenizer), remembered per checkpoint
    train_state.py  optimizer/schedule/progress beside an epoch checkpoint
    remote.py       object storage: cached local copy, upload
    destination.py  where a checkpoint may be written, install, copies

Callers use this package's names (`from bertml import checkpoint as ckpt_io`).
"""

from bertml.checkpoint.checks import remember_checked, validate
from bertml.checkpoint.destination import (
    check_destination,
    copy_with_thresholds,
    export,
    install,
    sibling_tmp,
)
from bertml.checkpoint.format import (
    FORMAT_VERSION,
    META_FILE,
    PRETRAIN_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    cache_root,
    check_max_length,
    check_position_limit,
    fingerprint,
    is_checkpoint_file,
    load,
    position_limit,
    read_meta,
    save,
    write_meta,
)
from bertml.checkpoint.remote import check_upload_prefix, is_uri, localize, prefix_is_empty, upload
from bertml.checkpoint.train_state import (
    STATE_JSON,
    STATE_TENSORS,
    has_train_state,
    load_train_state,
    read_train_state,
    save_train_state,
)

__all__ = [
    "FORMAT_VERSION", "META_FILE", "PRETRAIN_FILE", "STATE_JSON", "STATE_TENSORS", "TOKENIZER_FILE", "WEIGHTS_FILE",
    "CheckpointError", "CheckpointMeta", "cache_root", "check_destination", "check_max_length",
    "check_position_limit", "check_upload_prefix", "copy_with_thresholds", "export", "fingerprint",
    "has_train_state", "install", "is_checkpoint_file", "is_uri", "load", "load_train_state", "localize",
    "position_limit", "prefix_is_empty", "read_meta", "read_train_state", "remember_checked", "save",
    "save_train_state", "sibling_tmp", "upload", "validate", "write_meta",
]
