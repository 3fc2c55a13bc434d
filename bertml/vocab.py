"""Vocabulary extension: teach an encoder's tokenizer the text units it cannot read.

The units are what the tokenizer turns into [UNK] on the training text, read back through
its offsets (`bertml.coverage`): a CJK character is split off as a word of its own by BERT's
pre-tokenizer, so it becomes one unit, as in bert-base-chinese's vocabulary; in other
scripts a whole unknown word is one unit. The most frequent ones (at least `min_count`
occurrences, at most `max_new`) are added with transformers' own `add_tokens` — whole-word
matches outside CJK, so an added word never splits a longer one — and the embedding matrix
grows with `resize_token_embeddings(mean_resizing=True)`: new rows are drawn around the
old embeddings' mean with their covariance, the initialisation of Hewitt (2021) that
transformers implements. The tokenizer is saved with its added tokens, so the checkpoint
still loads, and scores the same, in plain `transformers`.

`plan` is the driver's step that `bertml train` and `bertml pretrain` share: the coverage
of a sample of the input, the warning when the encoder cannot read it, and the units its
workers add (`add`, before DDP wraps the model; a restored checkpoint already holds them).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable

from bertml.tokenization import clean_text

MAX_NEW = 8000  # new units at most (bert-base-chinese knows ~8,000 CJK characters)
MIN_COUNT = 3  # occurrences in the sample to be added
SAMPLE_CHARS = 4000  # characters read of each text


def is_cjk(ch: str) -> bool:
    """A CJK ideograph, kana, hangul or CJK punctuation: one character, one unit."""
    if len(ch) != 1:
        return False
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK ", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC")) or "\u3000" <= ch <= "\u303f"


def unknown_units(tokenizer, texts: Iterable[object], batch: int = 256) -> Counter[str]:
    """How often each text unit the tokenizer maps to [UNK] occurs in `texts` (a fast
    tokenizer is needed: the units are read back through its offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; vocabulary extension needs its "
                         "offsets (use the model's fast tokenizer, tokenizer.json)")
    unk, counts = tokenizer.unk_token_id, Counter()
    chunk: list[str] = []

    def flush() -> None:
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for text, ids, spans in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
            counts.update(text[a:b] for t, (a, b) in zip(ids, spans) if t == unk and b > a)
        chunk.clear()

    for t in texts:
        t = clean_text(t)
        if t is not None:
            chunk.append(t[:SAMPLE_CHARS])
            if len(chunk) == batch:
                flush()
    if chunk:
        flush()
    return counts


def units(tokenizer, texts: Iterable[object], max_new: int = MAX_NEW, min_count: int = MIN_COUNT) -> list[str]:
    """The frequent unknown units of `texts`, most frequent first (ties: in text order)."""
    lower = bool(getattr(tokenizer, "do_lower_case", False))
    counts: Counter[str] = Counter()
    for unit, n in unknown_units(tokenizer, texts).items():
        counts[unit.lower() if lower else unit] += n
    return [u for u, n in counts.most_common() if n >= min_count and not u.isspace()][:max_new]


def add_tokens(tokenizer, new: list[str]) -> None:
    """Add `new` units to `tokenizer`: whole-word matches outside CJK, so an added word never
    splits a longer one."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(u, single_word=not is_cjk(u), normalized=True) for u in new])


def add(tokenizer, model, new: list[str]) -> None:
    """Add `new` units to `tokenizer` and grow `model`'s embeddings to match. Deterministic
    given the units and the torch seed: every worker of a run adds the same ones in the same
    order (and DDP broadcasts rank 0's weights when it wraps the model)."""
    if not new:
        return
    add_tokens(tokenizer, new)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def plan(model_cfg, infos, column: str, where: str, log) -> tuple[list[str], dict]:
    """The driver's vocabulary step, before any worker starts: the encoder's coverage of a
    sample of `column` in the input shards (`infos`), a warning on `log` when it cannot read
    it, and with `model_cfg.extend_vocab` the units every worker adds. `model_cfg` has
    name, trust_remote_code and extend_vocab. Returns (units to add, coverage record)."""
    from bertml import coverage
    from bertml.model import load_tokenizer

    extend_vocab = model_cfg.extend_vocab
    texts = coverage.sample_texts(infos, column, VOCAB_SAMPLE if extend_vocab else coverage.SAMPLE_TEXTS)
    tok = load_tokenizer(model_cfg.name, model_cfg.trust_remote_code)
    before = after = coverage.check(tok, texts)
    record = {"before": before.record()}
    added: list[str] = []
    if extend_vocab:
        added = units(tok, texts)
        add_tokens(tok, added)
        after = coverage.check(tok, texts)
        record.update(after=after.record(), added=len(added))
        log.info("model.extend_vocab: %d units added to the vocabulary (e.g. %s); [UNK] share of the sample "
                 "%.1f%% -> %.1f%%", len(added), added[:10], 100 * before.unk_rate, 100 * after.unk_rate)
    msg = coverage.warning(after, where)
    if msg:
        log.warning("%s%s", msg, "" if extend_vocab else ", or set model.extend_vocab=true")
    return added, record


VOCAB_SAMPLE = 20000  # input texts read for model.extend_vocab


def extend(tokenizer, model, texts: Iterable[object], max_new: int = MAX_NEW, min_count: int = MIN_COUNT) -> list[str]:
    """Add the frequent unknown units of `texts` to `tokenizer` and grow `model`'s
    embeddings to match; returns the units added (most frequent first)."""
    new = units(tokenizer, texts, max_new, min_count)
    add(tokenizer, model, new)
    return new
