"""`validate`: everything `load` will need, checked before any Ray work starts."""

from __future__ import annotations

import hashlib
import json
import logging
import os

from bertml.checkpoint.format import (
    META_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    _read_json,
    _read_meta,
    cache_root,
)

log = logging.getLogger("bertml.checkpoint")

# Slow-tokenizer vocabularies transformers can rebuild a tokenizer from without tokenizer.json.
VOCAB_FILES = ("vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
               "tokenizer.model")
# Fewer entries than this is not a text vocabulary: transformers builds a 5-token one (the
# special tokens) from tokenizer_config.json alone when tokenizer.json is gone.
MIN_VOCAB = 100
# One short sentence per script. A healthy tokenizer reads at least one of them as mostly
# known tokens (a Chinese BERT the Chinese one, an English WordPiece the English one).
SAMPLES = {
    "English": "The market report said prices rose in the city today.",
    "Chinese": "今天城市新闻报道了一场足球比赛。",
    "Japanese": "今日は東京で新しい会議がありました。",
    "Korean": "오늘 도시에서 새로운 시장이 열렸다.",
    "Russian": "Сегодня в городе открылся новый рынок.",
    "Arabic": "أعلنت الحكومة عن خطة جديدة اليوم.",
    "Hindi": "आज शहर में एक नया बाज़ार खुला।",
    "Greek": "Σήμερα άνοιξε μια νέα αγορά στην πόλη.",
}
MAX_UNKNOWN_SHARE = 0.5
# Safetensors names of the input embeddings and the classification head, across families.
_EMBEDDING_SUFFIXES = ("word_embeddings.weight", "tok_embeddings.weight", "embed_tokens.weight")
_HEAD_NAMES = ("classifier.out_proj.weight", "classifier.weight", "score.weight")


def validate(path: str, trust_remote_code: bool = False, remember: bool = True) -> CheckpointMeta:
    """Everything `load` needs, checked from file headers and a meta-device model (no weights read).

    bertml.json and config.json (as `read_meta`); the safetensors header, every tensor lying
    within the file (a truncated copy fails here), the embeddings matching config.json's
    vocab_size, the head matching the labels, every tensor of the model config.json builds
    present with its shape; the tokenizer loading as transformers will
    load it, with a real vocabulary, token ids the embeddings cover, and at least one sample
    sentence read as mostly known tokens. Raises CheckpointError naming the file.

    A passed model build is remembered in BERTML_CACHE (see `_model_check_marker`) unless
    `remember` is false: a caller that may still refuse the run calls `remember_checked`
    once it has accepted it, so a refused run leaves nothing behind.
    """
    meta, hf = _read_meta(path)
    shapes = _weight_shapes(os.path.join(path, WEIGHTS_FILE))
    rows = _check_weights(path, hf, shapes, meta)
    passed = None if trust_remote_code else _model_check_marker(path, shapes)
    if passed is None or not os.path.exists(passed):
        _check_model(path, shapes, trust_remote_code)
    _check_tokenizer(path, rows, trust_remote_code)
    if remember:
        _mark(passed)
    return meta


def remember_checked(path: str, trust_remote_code: bool = False) -> None:
    """Remember that `validate(path, remember=False)` passed (call only after it did)."""
    if not trust_remote_code:
        _mark(_model_check_marker(path, _weight_shapes(os.path.join(path, WEIGHTS_FILE))))


def _model_check_marker(path: str, shapes: dict[str, list[int]]) -> str | None:
    """Where a passed `_check_model` is remembered: named by everything it reads (config.json,
    the weights' tensor names and shapes, the transformers release), so the same checkpoint
    is not built again each night (importing the model's code costs ~4 s of CPU) and any
    change to one of them checks again. None: config.json unreadable (the check will say)."""
    import transformers

    try:
        with open(os.path.join(path, "config.json"), "rb") as f:
            config = f.read()
    except OSError:
        return None
    h = hashlib.sha256(config)
    h.update(json.dumps([sorted(shapes.items()), transformers.__version__]).encode())
    return os.path.join(cache_root(), "checked", h.hexdigest()[:32])


def _mark(marker: str | None) -> None:
    if marker is None:
        return
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w", encoding="ascii"):
            pass
    except OSError:  # a read-only cache: check again next time
        pass


def _weight_shapes(weights: str) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    try:
        # safe_open parses the header and checks that every tensor's byte range fits its
        # dtype and shape and that the ranges cover the file exactly.
        with safe_open(weights, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a complete safetensors file ({e}); the copy is damaged or "
                              "truncated: copy it again from the training run's checkpoint") from None


def _check_weights(path: str, hf: dict, shapes: dict[str, list[int]], meta: CheckpointMeta) -> int | None:
    """Embedding rows and head outputs in the weights against config.json and bertml.json; returns the rows."""
    weights = os.path.join(path, WEIGHTS_FILE)
    emb = next((k for k in sorted(shapes, key=len) if k.endswith(_EMBEDDING_SUFFIXES)), None)
    rows = shapes[emb][0] if emb and shapes[emb] else None
    vocab = hf.get("vocab_size")
    if rows is not None and isinstance(vocab, int) and vocab != rows:
        raise CheckpointError(f"checkpoint {path}: config.json has vocab_size {vocab} but {WEIGHTS_FILE} "
                              f"({emb}) has {rows} embedding rows; the files come from different models")
    head = next((k for k in _HEAD_NAMES if k in shapes), None)
    if head and shapes[head] and shapes[head][0] != len(meta.labels):
        raise CheckpointError(f"{weights}: the classification head ({head}) has {shapes[head][0]} outputs but "
                              f"{META_FILE} lists {len(meta.labels)} labels; the files come from different runs")
    return rows


def _check_model(path: str, shapes: dict[str, list[int]], trust_remote_code: bool) -> None:
    """config.json builds a model whose every tensor is in the weights with its shape.

    transformers fills a tensor missing from the file with random values and only logs it,
    so a file from another architecture or with tensors dropped would score noise. The
    model is built on the meta device: no memory, no weights read. bertml checkpoints are
    written by `save_pretrained`, so tensor names match the model's state dict exactly.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config_path = os.path.join(path, "config.json")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{config_path}: transformers cannot build this model ({_first_line(e)})") from None
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as e:  # no sequence-classification class for this config
        raise CheckpointError(f"{config_path}: transformers cannot build this model ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - a model that cannot live on the meta device: load() will tell
        log.warning("%s: tensor names not checked (%s)", path, _first_line(e))
        return
    state = model.state_dict(keep_vars=True)  # the parameters themselves: tied ones are one object
    groups: dict[int, list[str]] = {}  # tied tensors (one parameter, several names) are saved once
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    expected = {name: list(tensor.shape) for name, tensor in state.items()}
    missing = [names[0] for names in groups.values() if not any(n in shapes for n in names)]
    if missing:
        raise CheckpointError(
            f"{os.path.join(path, WEIGHTS_FILE)}: {len(missing)} of the model's {len(groups)} tensors are missing "
            f"({', '.join(missing[:3])}); transformers would fill them with random values. The weights do not match "
            "config.json: copy the checkpoint again from the training run"
        )
    wrong = [(n, shapes[n], want) for n, want in expected.items() if n in shapes and shapes[n] != want]
    if wrong:
        n, got, want = wrong[0]
        raise CheckpointError(f"{os.path.join(path, WEIGHTS_FILE)}: tensor {n} has shape {got} but config.json's "
                              f"model needs {want}; the weights and config.json come from different models")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_tokenizer(path: str, embedding_rows: int | None, trust_remote_code: bool) -> None:
    """The tokenizer loads, is fast, has a real vocabulary that the embeddings cover, and reads text."""
    from transformers import AutoTokenizer

    tj = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tj):
        _read_json(tj, TOKENIZER_FILE)
        where = tj
    else:
        vocab_files = [f for f in VOCAB_FILES if os.path.exists(os.path.join(path, f))]
        if not vocab_files:
            raise CheckpointError(
                f"{tj}: missing, and no vocabulary file ({', '.join(VOCAB_FILES)}) to rebuild the tokenizer from "
                "(transformers would build one of special tokens only that reads every word as [UNK]); copy "
                f"{TOKENIZER_FILE} from the training run's checkpoint or the base model"
            )
        where = os.path.join(path, vocab_files[0])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(path, name)):
            _read_json(os.path.join(path, name), name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - tokenizers/transformers raise many types for bad files
        raise CheckpointError(f"{where}: transformers cannot load the tokenizer ({_first_line(e)}); copy the "
                              "tokenizer files again from the training run's checkpoint") from None
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"{where}: bertml needs a fast (Rust) tokenizer; save it with a tokenizer.json")
    vocab = tok.get_vocab()
    if len(vocab) < MIN_VOCAB:
        raise CheckpointError(f"{where}: the tokenizer has only {len(vocab)} tokens ({', '.join(sorted(vocab)[:5])}), "
                              "not a text vocabulary: every word would be [UNK]. Copy the tokenizer files "
                              "again from the training run's checkpoint")
    top = max(vocab.values())
    if embedding_rows is not None and top >= embedding_rows:
        raise CheckpointError(f"{where}: the tokenizer has token ids up to {top} but the model's embeddings "
                              f"({WEIGHTS_FILE}) have {embedding_rows} rows; the tokenizer comes from another "
                              "model: use the tokenizer the model was trained with")
    special = set(tok.all_special_ids)
    shares = {}
    for script, text in SAMPLES.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        shares[script] = sum(i in special for i in ids) / len(ids) if ids else 1.0
    best = min(shares, key=shares.get)
    if shares[best] > MAX_UNKNOWN_SHARE:
        raise CheckpointError(
            f"{where}: the tokenizer reads sample sentences in {len(SAMPLES)} scripts ({', '.join(SAMPLES)}) as "
            f"mostly [UNK] or special tokens (best: {best}, {shares[best]:.0%}); every row would get the same tags. "
            "Copy the tokenizer files again from the training run's checkpoint"
        )

