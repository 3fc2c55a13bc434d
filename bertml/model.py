"""The one model definition: a Hugging Face encoder with its own classification head.

The model maps (input_ids, attention_mask) to logits [B, num_labels], nothing more.
Sigmoid/softmax and the loss live here as plain functions so that training, scoring and
evaluation share one definition of "probability".
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from bertml.labels import LabelSet

MULTI, SINGLE = "multi_label_classification", "single_label_classification"


class ModelError(ValueError):
    """The model or checkpoint cannot be used as asked."""


def hf_problem_type(multi_label: bool) -> str:
    return MULTI if multi_label else SINGLE


def build_model(
    name: str,
    labels: LabelSet,
    *,
    classifier_dropout: float | None = None,
    trust_remote_code: bool = False,
):
    """A pretrained encoder with a fresh head for `labels` (safetensors weights only)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    extra = {} if classifier_dropout is None else {"classifier_dropout": classifier_dropout}
    config = AutoConfig.from_pretrained(
        name,
        num_labels=len(labels),
        id2label=dict(enumerate(labels.names)),
        label2id=labels.index,
        problem_type=hf_problem_type(labels.multi_label),
        trust_remote_code=trust_remote_code,
        **extra,
    )
    try:
        # ignore_mismatched_sizes: starting from a classifier with another label set
        # (e.g. a fine-tuned model) re-initialises the head instead of failing.
        return AutoModelForSequenceClassification.from_pretrained(
            name, config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
        )
    except OSError as e:
        if "safetensors" in str(e).lower() or "model.safetensors" in str(e):
            raise ModelError(
                f"{name}: no safetensors weights found. bertml loads model.safetensors only "
                "(pickle-based pytorch_model.bin is refused); convert the weights with "
                "`safetensors` or pick a model that ships them."
            ) from None
        raise


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{name}: bertml needs a fast (Rust) tokenizer; this one is slow-only")
    return tok


def position_limit(hf_config: dict) -> int | None:
    """Longest sequence the encoder's position embeddings allow (from config.json)."""
    n = hf_config.get("max_position_embeddings")
    if not n:
        return None
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= (hf_config.get("pad_token_id") or 1) + 1
    return int(n)


def logits_to_probs(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """[B, L] logits -> [B, L] float32 probabilities (sigmoid or softmax)."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def loss_fn(
    logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss over the batch. targets: [B, L] multi-hot (multi) or [B] class ids (single)."""
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=pos_weight)
    return F.cross_entropy(logits, targets.long())


def device_autocast(device: torch.device, precision: str):
    """(autocast context, needs GradScaler) for `precision` on `device`."""
    import contextlib

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), precision == "fp16"


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")
