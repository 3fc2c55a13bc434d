"""Tokenization: windows, statuses, odd texts, other tokenizer families (no Ray)."""

import pytest

from bertml import checkpoint as ckpt_io
from bertml.tokenization import encode_batch

ODD = [None, "", "   \n\t", "足球 比赛 今天", "goal 🙂🎉", "tennis " * 20000, "ok\x00\x07 match", "bad \ud800 surrogate"]


@pytest.fixture(scope="module")
def tok(multi_ckpt):
    return ckpt_io.load(multi_ckpt)[1]


def test_odd_texts_get_a_status_and_never_crash(tok):
    ids, status = encode_batch(tok, ODD, 16)
    assert list(status) == ["empty", "empty", "empty", "ok", "ok", "truncated", "ok", "ok"]
    windows = ids.to_pylist()
    assert [len(w) for w in windows] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(len(w[0]) <= 16 for w in windows if w)


def test_chunk_mode_windows_overlap(tok):
    ids, status = encode_batch(tok, ["tennis match " * 30, "goal"], 16, chunk=True, stride=4, max_chunks=64)
    w = ids.to_pylist()
    assert status.tolist() == ["chunked", "ok"] and len(w[0]) > 1 and len(w[1]) == 1
    inner = [x[1:-1] for x in w[0]]  # strip [CLS] [SEP]
    assert inner[0][-4:] == inner[1][:4]  # stride tokens shared
    ids, status = encode_batch(tok, ["tennis match " * 30], 16, chunk=True, stride=4, max_chunks=2)
    assert status.tolist() == ["truncated"] and len(ids.to_pylist()[0]) == 2


@pytest.mark.parametrize("n_words", [1, 7, 13, 14, 29, 61])
def test_chunk_windows_cover_the_whole_text_exactly(tok, n_words):
    text = " ".join(["tennis", "bank", "足球", "software"][i % 4] for i in range(n_words))
    full = tok(text, add_special_tokens=False)["input_ids"]
    (windows,), (status,) = [x.to_pylist() if hasattr(x, "to_pylist") else list(x)
                             for x in encode_batch(tok, [text], 16, chunk=True, stride=4)]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 16 for w in windows)
    inner = [w[1:-1] for w in windows]
    assert all(a[-4:] == b[:4] for a, b in zip(inner, inner[1:]))  # consecutive windows share 4 tokens
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[4:]]
    assert rebuilt == full  # nothing lost, nothing repeated
    assert status == ("chunked" if len(full) > 14 else "ok")


def test_truncation_tokenizes_only_what_it_needs_and_matches_the_full_text(tok):
    import bertml.tokenization as tz

    class Recording:  # the real tokenizer, noting the longest text of each call
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __call__(self, texts, **kw):
            self.calls.append(max(map(len, texts)) if isinstance(texts, list) else len(texts))
            return self.inner(texts, **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    long_en = " ".join(["tennis", "match", "bank", "software", "chip"] * 400)  # 10k chars: cut near 240
    texts = [long_en, "x" * 3000 + " tail", "supercalifragilistic " * 300, "足球比赛" * 2000, "goal", "a " * 5000]
    rec = Recording(tok)
    ids, status = encode_batch(rec, texts[:1], 32)
    assert rec.calls[-1] <= 30 * tz._CHARS_PER_TOKEN_GUESS  # the 10k-character text was not tokenized whole
    assert ids.to_pylist() == [[tok(long_en, truncation=True, max_length=32)["input_ids"]]] and status[0] == "truncated"
    ids, status = encode_batch(rec, texts, 32)
    for text, windows in zip(texts, ids.to_pylist()):  # exactly the whole text's leading tokens
        assert windows == [tok(text, truncation=True, max_length=32)["input_ids"]]
    assert list(status) == ["truncated", "ok", "truncated", "truncated", "ok", "truncated"]
    assert tz._splits_at_whitespace(tok) and tz._word_cut("x" * 3000, 240) is None


# Texts whose characters per token run far above prose: whitespace or control runs that
# make no tokens, words too long for WordPiece (one [UNK] each), then real words.
SPARSE = ["football" + " " * 20000 + " bank" * 100, "\x00" * 9000 + " goal" * 80,
          " ".join(["x" * 300] * 100) + " bank" * 50, "tennis " + "\u200b " * 9000 + "chip " * 70]


@pytest.mark.parametrize("chunk", [False, True])
def test_sparse_texts_keep_the_tokens_a_direct_call_keeps(tok, chunk):
    """A cut that gave too few tokens is widened: the windows are those of the whole text."""
    from bertml.tokenization import special_tokens, tokenize_for_training

    ids, status = encode_batch(tok, SPARSE, 24, chunk=chunk, stride=4, max_chunks=3)
    prefix, suffix = special_tokens(tok)
    for text, windows, st in zip(SPARSE, ids.to_pylist(), status):
        full = tok(text, add_special_tokens=False)["input_ids"]
        step = 22 - (4 if chunk else 0)
        want = [prefix + full[k * step : k * step + 22] + suffix for k in range(3 if chunk else 1)]
        assert windows == want and st == "truncated", text[:20]
    enc = tokenize_for_training(tok, SPARSE + ["goal", None], 24)
    for text, row, mask in zip(SPARSE + ["goal", ""], enc["input_ids"], enc["attention_mask"]):
        assert row[mask == 1].tolist() == tok(text, truncation=True, max_length=24)["input_ids"]


def test_widening_stops_at_a_ceiling_and_says_truncated(tok, monkeypatch):
    """A huge text that makes few tokens is not tokenized whole: past the ceiling its
    head is scored and the row is `truncated`."""
    import bertml.tokenization as tz

    monkeypatch.setattr(tz, "_CHARS_CEILING", 50_000)
    calls = []
    real = tz._token_ids
    monkeypatch.setattr(tz, "_token_ids", lambda t, texts, need: calls.append(max(map(len, texts))) or real(t, texts, need))
    ids, status = encode_batch(tok, ["goal " + " " * 400_000 + "bank", "goal"], 16)
    assert list(status) == ["truncated", "ok"] and max(calls) <= 50_000
    assert ids.to_pylist()[0] == [tok("goal", truncation=True, max_length=16)["input_ids"]]


def test_text_the_tokenizer_drops_entirely_is_empty(tok):
    """Visible characters that make no token (combining marks, a soft hyphen, U+FFFD left
    by repaired bytes in this vocabulary) get status empty, not a [CLS][SEP] prediction."""
    texts = ["\u0301\u0301", "\u00ad", "goal"]
    ids, status = encode_batch(tok, texts, 16)
    dropped = [not tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert dropped == [True, True, False]
    assert list(status) == ["empty", "empty", "ok"] and [len(w) for w in ids.to_pylist()] == [0, 0, 1]


def _trained_tokenizer(kind: str):
    """A tiny RoBERTa-style (byte-level BPE) or XLM-R-style (SentencePiece unigram) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>"]
    corpus = [" ".join(["tennis", "match,", "bank", "software's", "chip.", "goal!", "Übung", "naïve"][i % 8:]) * 3
              for i in range(64)]
    if kind == "bpe":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tk = Tokenizer(models.Unigram())
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=special, unk_token="<unk>")
    tk.train_from_iterator(corpus, trainer)
    s, e = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", s), ("</s>", e)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_windows_match_the_tokenizer_for_other_tokenizer_families(kind):
    from bertml.tokenization import special_tokens

    t = _trained_tokenizer(kind)
    assert special_tokens(t) == ([t.bos_token_id], [t.eos_token_id])
    texts = ["tennis  match,\nbank software's chip. " * 200, "Übung naïve\tgoal! " * 150, "goal"]
    ids, status = encode_batch(t, texts, 24)
    for text, windows in zip(texts, ids.to_pylist()):
        assert windows == [t(text, truncation=True, max_length=24)["input_ids"]]
    assert list(status) == ["truncated", "truncated", "ok"]
    full = t(texts[0], add_special_tokens=False)["input_ids"]
    ids, _ = encode_batch(t, texts[:1], 24, chunk=True, stride=5, max_chunks=1000)
    inner = [w[1:-1] for w in ids.to_pylist()[0]]
    assert inner[0] + [x for w in inner[1:] for x in w[5:]] == full
