"""Tiny offline models and corpora for tests: a random-init 2-layer BERT and a WordPiece
vocab trained locally on generated English + Chinese text. No network, no hub."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

# Keyword-determined labels: a text has label L iff one of L's keywords occurs in it.
KEYWORDS = {
    "sport": ["football", "tennis", "goal", "match"],
    "tech": ["software", "computer", "chip", "internet"],
    "money": ["bank", "market", "price", "stocks"],
    "体育": ["足球", "比赛"],
}
FILLER = ("the a of to and in is was for on with that by this people said year new "
          "time day week city report local today also more some other which 我们 今天 一个 城市 新闻").split()


def sentence(rng: random.Random, labels: list[str], n_filler: int = 4) -> str:
    words = [rng.choice(FILLER) for _ in range(n_filler)]
    for lab in labels:
        words.insert(rng.randrange(len(words) + 1), rng.choice(KEYWORDS[lab]))
    return " ".join(words)


def make_rows(n: int, seed: int = 0, single: bool = False) -> list[dict]:
    rng = random.Random(seed)
    names = list(KEYWORDS)
    rows = []
    for i in range(n):
        if single:
            labs = [names[i % len(names)]]
        else:
            k = rng.choice([1, 1, 2, 2, 3])
            labs = rng.sample(names, k)
        rows.append({"id": f"doc-{seed}-{i}", "text": sentence(rng, labs), "labels": sorted(labs)})
    return rows


def write_parquet(rows: list[dict], path: str, single: bool = False) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    if single:
        cols["labels"] = [r["labels"][0] for r in rows]
    pq.write_table(pa.table(cols), path)
    return path


def build_tiny_model(path: str, labels: list[str] | None = None, multi: bool = True, seed: int = 0,
                     english_only: bool = False) -> str:
    """Write a random-init tiny BERT (2 layers, hidden 32) + locally trained vocab to `path`
    (`english_only`: the vocab never saw a non-ASCII character, as an English encoder's)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    rng = random.Random(seed)
    corpus = [sentence(rng, rng.sample(list(KEYWORDS), 2)) for _ in range(400)]
    corpus += ["emoji 🙂 🎉 mixed 中文 English العربية русский", "hello world"]
    if english_only:
        corpus = [" ".join(w for w in t.split() if w.isascii()) for t in corpus]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                                  pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                  model_max_length=128)
    labels = labels or list(KEYWORDS)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification" if multi else "single_label_classification",
        initializer_range=0.2,  # wider init and no dropout: a random tiny BERT learns
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # keyword tasks in ~100 steps
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
