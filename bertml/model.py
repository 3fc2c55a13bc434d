"""The one model definition: a Hugging Face encoder with its own classification head.

The model maps (input_ids, attention_mask) to logits [B, num_labels], nothing more.
Sigmoid/softmax and the loss live here as plain functions so that training, scoring and
evaluation share one definition of "probability".
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from bertml.errors import BertmlError
from bertml.labels import LabelSet

MULTI, SINGLE = "multi_label_classification", "single_label_classification"

log = logging.getLogger("bertml.model")


class ModelError(BertmlError, ValueError):
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


def resolve_precision(device: torch.device, precision: str) -> str:
    """"fp32", "bf16" or "fp16" for `precision` (auto, fp32, bf16, fp16) on `device`: fp32 off
    CUDA; auto is bf16 where the GPU supports it, else fp16."""
    if device.type != "cuda" or precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_autocast(device: torch.device, precision: str):
    """(autocast context, needs GradScaler) for `precision` on `device`."""
    import contextlib

    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext(), False
    return torch.autocast("cuda", dtype=_DTYPES[resolved]), resolved == "fp16"


def inference_dtype(device: torch.device, precision: str) -> torch.dtype:
    """Weights/activations dtype for scoring: bf16 or fp16 on CUDA (per `precision`), else fp32."""
    return _DTYPES[resolve_precision(device, precision)]


# Families whose sequence-classification head reads only position 0 of the last hidden
# state ("pooler": BERT's pooler then dropout + classifier; "head": RoBERTa-style head).
_CLS_HEADS = {"bert": "pooler", "roberta": "head", "xlm-roberta": "head", "camembert": "head", "electra": "head"}


class ClsOnlyForward(nn.Module):
    """`model(input_ids, attention_mask).logits`, with the last encoder layer run for [CLS] only.

    These heads read only the first position of the last hidden state, so the last
    layer's query, attention output and feed-forward for the other positions are dead
    work (keys and values still see every token): the same function, with ~1/N_layers of
    the forward's FLOPs less (MiniLM-L6 -14%, BERT-base -7%). The modules are shared
    with `model`, so moving or casting `model` moves this too.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        base = model.base_model
        self.last = base.encoder.layer[-1]
        self.trunk = copy.copy(base)  # the base model minus its last layer and pooler
        self.trunk._modules = dict(base._modules, pooler=None)
        encoder = copy.copy(base.encoder)
        encoder._modules = dict(base.encoder._modules, layer=nn.ModuleList(base.encoder.layer[:-1]))
        self.trunk._modules["encoder"] = encoder
        self.kind = _CLS_HEADS[model.config.model_type]
        self.pooler = base.pooler if self.kind == "pooler" else None
        self.dropout = getattr(model, "dropout", None) if self.kind == "pooler" else None
        self.classifier = model.classifier
        self.n_heads = model.config.num_attention_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        b, t, d = h.shape
        sa, hd = self.last.attention.self, d // self.n_heads
        q = sa.query(h[:, :1]).view(b, 1, self.n_heads, hd).transpose(1, 2)  # [B, nh, 1, hd]
        k = sa.key(h).view(b, t, self.n_heads, hd).transpose(1, 2)  # [B, nh, T, hd]
        v = sa.value(h).view(b, t, self.n_heads, hd).transpose(1, 2)
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=hd**-0.5)  # [B, nh, 1, hd]
        a = self.last.attention.output(ctx.transpose(1, 2).reshape(b, 1, d), h[:, :1])  # [B, 1, H]
        x = self.last.output(self.last.intermediate(a), a)  # [B, 1, H]
        if self.kind == "pooler":
            x = self.pooler(x)  # [B, H]
            return self.classifier(self.dropout(x) if self.dropout is not None else x)  # [B, L]
        return self.classifier(x)  # [B, L]


def fast_forward(model: nn.Module, seed: int = 0):
    """The scoring forward for `model`: (input_ids, attention_mask) -> logits [B, L].

    `ClsOnlyForward` where the architecture allows it and it reproduces the full forward
    on random inputs here (checked once, in eval mode, on the model's current device and
    dtype); otherwise the plain forward. A mismatch is logged, never silently used.
    """
    plain = lambda input_ids, attention_mask: model(input_ids=input_ids, attention_mask=attention_mask).logits  # noqa: E731
    cfg = model.config
    if (cfg.model_type not in _CLS_HEADS or getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute")
            or getattr(cfg, "is_decoder", False) or not hasattr(model, "classifier")):
        return plain
    try:
        fast = ClsOnlyForward(model)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, cfg.vocab_size, (3, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 7:], mask[2, 3:] = 0, 0
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            want, got = plain(ids, mask).float(), fast(ids, mask).float()
        if torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            return fast
        log.warning("cls-only forward differs from the full forward (max |diff| %.2e); using the full forward",
                    (got - want).abs().max().item())
    except Exception as e:  # noqa: BLE001 - an unexpected layout: the plain forward is always right
        log.warning("cls-only forward unavailable for %s (%s: %s); using the full forward", cfg.model_type,
                    type(e).__name__, e)
    return plain
