"""Task examples -> model tensors with a sentencepiece `Tokenizer`, in RoBERTa / XLM-R layout.

- classification: `<s> A </s>` or `<s> A </s></s> B </s>`; a pair too long for `max_len` is
  truncated longest-first (one token at a time from the longer text, the second on ties, as
  Hugging Face's `truncation="longest_first"`); padded with `pad_id`; `attention_mask` 1 on
  real tokens. No token_type_ids: RoBERTa-style models have none.
- extractive QA: `<s> question </s></s> context-window </s>`. The question is cut to
  `max_query_len` tokens; a long context is covered by overlapping windows that start every
  `doc_stride` tokens (the BERT / XLM-R `run_squad` meaning of doc_stride), one feature per
  window. Token <-> character alignment comes from sentencepiece's offsets, so the answer's
  character span in the original context maps to start/end token positions, and a predicted
  token span maps back to the exact context substring. A feature whose window does not hold
  the whole answer is labelled (0, 0), the `<s>` position, as in SQuAD training scripts.

Everything is deterministic: the same examples and tokenizer give the same tensors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Sequence

import sentencepiece as spm
import torch

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.tasks.formats import ClassificationExample, QAExample
from ds_minimodel.tokenizer import Tokenizer

Span = tuple[int, int]

# --------------------------------------------------------------------------------------------
# Token offsets


@lru_cache(maxsize=8)
def _load_processor(path: str) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=path)


def _processor(tok: Tokenizer) -> spm.SentencePieceProcessor:
    # The Tokenizer's own processor when it exposes one (no second copy of the model).
    sp = getattr(tok, "_sp", None)
    return sp if sp is not None else _load_processor(tok.path)


def _byte_to_char(text: str) -> list[int]:
    table = []
    for i, ch in enumerate(text):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(text))
    return table


def encode_with_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[Span]]:
    """Token ids of `text` (as `tok.encode`) and each token's [begin, end) *character* span.

    A piece with a leading "▁" spans the whitespace before its word too (sentencepiece's
    surface), so a span's text may start with spaces. sentencepiece >= 0.2.1 returns character
    offsets with `out_type="offset_mapping"`; older versions (0.1.99-0.2.0) only have
    `out_type="immutable_proto"`, whose offsets are converted to characters when they are bytes.
    """
    if hasattr(tok, "encode_with_offsets"):  # a tokenizer.json: the library gives character offsets
        return tok.encode_with_offsets(text)
    sp = _processor(tok)
    try:
        result = sp.encode(text, out_type="offset_mapping")
        return [int(i) for i in result["ids"]], [(int(b), int(e)) for b, e in result["offsets"]]
    except (ValueError, TypeError, KeyError):
        pass
    proto = sp.encode(text, out_type="immutable_proto")
    ids = [int(p.id) for p in proto.pieces]
    spans = [(int(p.begin), int(p.end)) for p in proto.pieces]
    if any(text[b:e] != p.surface for (b, e), p in zip(spans, proto.pieces)):
        table = _byte_to_char(text)
        spans = [(table[b], table[e]) for b, e in spans]
    return ids, spans


# --------------------------------------------------------------------------------------------
# Classification

PAIR_SPECIALS = 4    # <s> A </s></s> B </s>
SINGLE_SPECIALS = 2  # <s> A </s>


def truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of two sequences so that they fit `budget` tokens together, removing
    one token at a time from the longer one (from the second when they are equal)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    # Closed form of the token-at-a-time loop: trim the longer down to the shorter, then
    # alternate, the extra token (odd budget) staying with the first sequence.
    short = min(len_a, len_b)
    if budget <= 2 * short:
        keep_a = (budget + 1) // 2
        return keep_a, budget - keep_a
    return (budget - len_b, len_b) if len_a > len_b else (len_a, budget - len_a)


def build_classification_ids(tok: Tokenizer, a: list[int], b: list[int] | None, max_len: int) -> list[int]:
    """`<s> A </s>` or `<s> A </s></s> B </s>` from token ids, truncated to `max_len` tokens."""
    if b is None:
        if max_len < SINGLE_SPECIALS + 1:
            raise InvalidValueError(f"max_len {max_len} leaves no room for text after <s> and </s>")
        return [tok.bos_id] + a[:max_len - SINGLE_SPECIALS] + [tok.eos_id]
    if max_len < PAIR_SPECIALS + 2:
        raise InvalidValueError(f"max_len {max_len} leaves no room for a sentence pair after 4 special tokens")
    la, lb = truncate_longest_first(len(a), len(b), max_len - PAIR_SPECIALS)
    return [tok.bos_id] + a[:la] + [tok.eos_id, tok.eos_id] + b[:lb] + [tok.eos_id]


def encode_classification(examples: Sequence[ClassificationExample], tok: Tokenizer,
                          max_len: int = 128) -> list[list[int]]:
    """Unpadded token ids of each example (pad them per batch with `pad_sequences`)."""
    a_ids = tok.encode_batch([ex.text_a for ex in examples])
    pair_idx = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    b_ids = dict(zip(pair_idx, tok.encode_batch([examples[i].text_b for i in pair_idx])))
    return [build_classification_ids(tok, a_ids[i], b_ids.get(i), max_len) for i in range(len(examples))]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int,
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) LongTensors [N, length]; `length` defaults to the longest."""
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if longest > length:
        raise InvalidValueError(f"a sequence of {longest} tokens does not fit length {length}")
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def classification_batch(examples: Sequence[ClassificationExample], tok: Tokenizer, max_len: int = 128,
                         pad_to_max_len: bool = False) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask", "labels"} for `examples`, padded to the longest (or max_len)."""
    ids, mask = pad_sequences(encode_classification(examples, tok, max_len), tok.pad_id,
                              max_len if pad_to_max_len else None)
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([ex.label for ex in examples], dtype=torch.long)}


def batch_order(n: int, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                drop_last: bool = False) -> list[list[int]]:
    """Example indices of each batch; shuffled by (seed, epoch) when `shuffle`."""
    if batch_size < 1:
        raise InvalidValueError(f"batch_size {batch_size} must be positive")
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def classification_batches(examples: Sequence[ClassificationExample], tok: Tokenizer, batch_size: int,
                           max_len: int = 128, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                           drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `classification_batch` form; tokenised once, each batch padded to its longest."""
    encoded = encode_classification(examples, tok, max_len)
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    for idx in batch_order(len(examples), batch_size, shuffle, seed, epoch, drop_last):
        ids, mask = pad_sequences([encoded[i] for i in idx], tok.pad_id)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels[idx]}


# --------------------------------------------------------------------------------------------
# Extractive QA


@dataclass
class QAFeatures:
    """One row per context window.

    `offsets[f][t]` is the [begin, end) character span in the example's context of token t of
    feature f, None for question, special and padding tokens; `max_context[f][t]` says whether
    feature f is the window where token t has the most context on both sides (a span is only
    predicted from the window where its start token is best placed). `unlocated` lists example
    ids whose first answer could not be aligned to tokens (their features are labelled (0, 0)).
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start_positions: torch.Tensor
    end_positions: torch.Tensor
    example_index: list[int]
    offsets: list[list[Span | None]]
    max_context: list[list[bool]]
    unlocated: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.example_index)

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model inputs and labels of features `idx`, trimmed to their longest row."""
        idx = list(idx)
        width = int(self.attention_mask[idx].sum(dim=1).max().item()) if idx else 0
        return {"input_ids": self.input_ids[idx, :width], "attention_mask": self.attention_mask[idx, :width],
                "start_positions": self.start_positions[idx], "end_positions": self.end_positions[idx]}


def _window_starts(n: int, window: int, doc_stride: int) -> list[int]:
    # BERT's loop: windows of `window` tokens every min(window, doc_stride) tokens, the last
    # one ending at the context's end; an empty context still gets one (empty) window.
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + window >= n:
            return starts
        start += min(window, doc_stride)


def _answer_tokens(example: QAExample, spans: list[Span]) -> tuple[int, int] | None:
    """Context token indices (first, last) covering the first answer, or None."""
    if not example.answers:
        return None
    answer = example.answers[0]
    text, begin = answer["text"], int(answer["answer_start"])
    end = begin + len(text)
    if not text.strip() or example.context[begin:end] != text:
        return None
    first = next((t for t, (b, e) in enumerate(spans) if e > begin and b < end), None)
    last = next((t for t in range(len(spans) - 1, -1, -1) if spans[t][0] < end and spans[t][1] > begin), None)
    if first is None or last is None or first > last:
        return None
    return first, last


def encode_qa(examples: Sequence[QAExample], tok: Tokenizer, max_len: int = 384, doc_stride: int = 128,
              max_query_len: int = 64) -> QAFeatures:
    """Features (one per context window) of `examples`; start/end positions from the first answer."""
    if doc_stride < 1:
        raise InvalidValueError(f"doc_stride {doc_stride} must be positive")
    if max_query_len < 1:
        raise InvalidValueError(f"max_query_len {max_query_len} must be positive")
    rows: list[list[int]] = []
    starts_pos: list[int] = []
    ends_pos: list[int] = []
    example_index: list[int] = []
    offsets: list[list[Span | None]] = []
    max_context: list[list[bool]] = []
    unlocated: list[str] = []
    for ei, ex in enumerate(examples):
        question = tok.encode(ex.question)[:max_query_len]
        ctx_ids, spans = encode_with_offsets(tok, ex.context)
        prefix = 1 + len(question) + 2  # <s> question </s></s>
        window = max_len - prefix - 1
        if window < 1:
            raise InvalidValueError(f"max_len {max_len} leaves no room for context after a {len(question)}-token "
                                    f"question (example {ex.id}); raise max_len or lower max_query_len")
        answer = _answer_tokens(ex, spans)
        if ex.answers and answer is None:
            unlocated.append(ex.id)
        n = len(ctx_ids)
        wstarts = _window_starts(n, window, doc_stride)
        # Token t's best window: the one maximising min(left, right) context + 0.01 * length;
        # the first such window on ties (BERT's _check_is_max_context).
        best: list[int] = [0] * n
        best_score = [float("-inf")] * n
        for w, ws in enumerate(wstarts):
            wl = min(window, n - ws)
            for t in range(ws, ws + wl):
                score = min(t - ws, ws + wl - 1 - t) + 0.01 * wl
                if score > best_score[t]:
                    best_score[t], best[t] = score, w
        for w, ws in enumerate(wstarts):
            wl = min(window, n - ws)
            rows.append([tok.bos_id] + question + [tok.eos_id, tok.eos_id] + ctx_ids[ws:ws + wl] + [tok.eos_id])
            offsets.append([None] * prefix + list(spans[ws:ws + wl]) + [None])
            max_context.append([False] * prefix + [best[t] == w for t in range(ws, ws + wl)] + [False])
            if answer is not None and ws <= answer[0] and answer[1] < ws + wl:
                starts_pos.append(prefix + answer[0] - ws)
                ends_pos.append(prefix + answer[1] - ws)
            else:
                starts_pos.append(0)
                ends_pos.append(0)
            example_index.append(ei)
    ids, mask = pad_sequences(rows, tok.pad_id)
    return QAFeatures(ids, mask, torch.tensor(starts_pos, dtype=torch.long), torch.tensor(ends_pos, dtype=torch.long),
                      example_index, offsets, max_context, unlocated)


def span_text(example: QAExample, offsets: Sequence[Span | None], start: int, end: int) -> str:
    """The context substring of feature tokens start..end (inclusive), trimmed of the
    whitespace that "▁" pieces carry; "" when either end is not a context token."""
    if not (0 <= start <= end < len(offsets)) or offsets[start] is None or offsets[end] is None:
        return ""
    return example.context[offsets[start][0]:offsets[end][1]].strip()


def qa_predictions(features: QAFeatures, examples: Sequence[QAExample], start_logits: torch.Tensor,
                   end_logits: torch.Tensor, n_best: int = 20, max_answer_len: int = 30) -> dict[str, str]:
    """Best answer text per example id from per-feature start/end logits [F, T>=row length].

    Over all features of an example: the `n_best` highest start and end logits among context
    tokens, spans with start <= end, at most `max_answer_len` tokens, and a start token in its
    max-context window; score = start logit + end logit. Ties go to the earlier feature/span.
    """
    start_logits = torch.as_tensor(start_logits).detach().float().cpu()
    end_logits = torch.as_tensor(end_logits).detach().float().cpu()
    if start_logits.shape[0] != len(features) or end_logits.shape[0] != len(features):
        raise InvalidValueError(f"logits for {start_logits.shape[0]}/{end_logits.shape[0]} features, "
                                f"expected {len(features)}")
    best: dict[int, tuple[float, str]] = {}
    for f, ei in enumerate(features.example_index):
        offs, maxctx = features.offsets[f], features.max_context[f]
        n = len(offs)
        sl, el = start_logits[f, :n], end_logits[f, :n]
        s_order = [int(i) for i in torch.argsort(sl, descending=True, stable=True)
                   if offs[int(i)] is not None and maxctx[int(i)]][:n_best]
        e_order = [int(i) for i in torch.argsort(el, descending=True, stable=True) if offs[int(i)] is not None][:n_best]
        for s in s_order:
            for e in e_order:
                if e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(sl[s] + el[e])
                if ei not in best or score > best[ei][0]:
                    best[ei] = (score, span_text(examples[ei], offs, s, e))
    return {ex.id: best[i][1] if i in best else "" for i, ex in enumerate(examples)}
