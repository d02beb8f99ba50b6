"""Task examples -> model tensors with a `Tokenizer`, in the layout of the model's family.

Two families (`tokenizers.layout.Layout`, chosen from the model config by `layout_for`):
- RoBERTa / XLM-R (and the models trained here): `<s> A </s>`, pairs `<s> A </s></s> B </s>`,
  no token_type_ids (one token type).
- BERT: `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]`, with token_type_ids 0 up to and
  including the first `[SEP]` and 1 for B and its `[SEP]` (0 on padding), as BERT was pretrained
  with and as Hugging Face's BERT tokenizers produce. `<s>`/`</s>` are the tokenizer's bos/eos,
  i.e. `[CLS]`/`[SEP]` for a BERT vocabulary.

- classification: one text or a pair; a pair too long for `max_len` is truncated longest-first
  (`truncate_longest_first`, as Hugging Face's tokenizers do for `truncation="longest_first"`);
  padded with `pad_id`; `attention_mask` 1 on real tokens.
- extractive QA: the question is segment A, a context window segment B. The question is cut to
  `max_query_len` tokens; a long context is covered by overlapping windows that start every
  `doc_stride` tokens (the BERT / XLM-R `run_squad` meaning of doc_stride; Hugging Face's
  `run_qa` passes the *overlap* as `stride`: theirs = window - ours), one feature per window.
  Token <-> character alignment comes from the tokenizer's offsets, so the answer's character
  span in the original context maps to start/end token positions, and a predicted token span maps
  back to the exact context substring. A feature whose window does not hold the whole answer is
  labelled (0, 0), the first token, as in SQuAD training scripts.

Everything is deterministic: the same examples and tokenizer give the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.tasks.formats import ClassificationExample, QAExample
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.layout import ROBERTA, Layout

Span = tuple[int, int]

def _segments(n_a: int, n: int, layout: Layout) -> list[int] | None:
    """token_type_ids of a packed row of n tokens whose first n_a tokens are segment A."""
    return [0] * n_a + [1] * (n - n_a) if layout.segment_ids else None


# --------------------------------------------------------------------------------------------
# Classification

SINGLE_SPECIALS = 2  # <s> A </s>


def truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of two sequences so that they fit `budget` tokens together, as Hugging
    Face's tokenizers library (every tokenizer of transformers 5, and the "fast" ones before)
    truncates `longest_first`: the shorter sequence stays whole when the longer one can give up
    enough; otherwise both keep budget // 2 tokens, the odd one going to the longer sequence (to
    the second on ties). (transformers' old slow tokenizers removed one token at a time and gave
    the odd token to the first sequence instead.)"""
    if len_a + len_b <= budget:
        return len_a, len_b
    short = min(len_a, len_b)
    if budget >= 2 * short:
        return (budget - len_b, len_b) if len_a > len_b else (len_a, budget - len_a)
    half, odd = budget // 2, budget % 2
    return (half + odd, half) if len_a > len_b else (half, half + odd)


def build_pair(tok: Tokenizer, a: list[int], b: list[int] | None, max_len: int,
               layout: Layout = ROBERTA) -> tuple[list[int], int]:
    """(ids, n_a): the packed row and how many of its first tokens are segment A (all of them
    for a single text); segment B (token type 1 for BERT) is the rest."""
    if b is None:
        if max_len < SINGLE_SPECIALS + 1:
            raise InvalidValueError(f"max_len {max_len} leaves no room for text after <s> and </s>")
        ids = [tok.bos_id] + a[:max_len - SINGLE_SPECIALS] + [tok.eos_id]
        return ids, len(ids)
    specials = 2 + layout.separators
    if max_len < specials + 2:
        raise InvalidValueError(f"max_len {max_len} leaves no room for a sentence pair after {specials} "
                                "special tokens")
    la, lb = truncate_longest_first(len(a), len(b), max_len - specials)
    head = [tok.bos_id] + a[:la] + [tok.eos_id]
    return head + [tok.eos_id] * (layout.separators - 1) + b[:lb] + [tok.eos_id], len(head)


@dataclass
class EncodedTexts:
    """Unpadded rows of token ids and, for layouts with segment ids, their token_type_ids."""
    ids: list[list[int]]
    type_ids: list[list[int]] | None = None


def encode_texts(examples: Sequence[ClassificationExample], tok: Tokenizer, max_len: int = 128,
                 layout: Layout = ROBERTA) -> EncodedTexts:
    """Each example packed as its model family expects (pad them per batch with `pad_sequences`)."""
    a_ids = tok.encode_batch([ex.text_a for ex in examples])
    pair_idx = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    b_ids = dict(zip(pair_idx, tok.encode_batch([examples[i].text_b for i in pair_idx])))
    rows = [build_pair(tok, a_ids[i], b_ids.get(i), max_len, layout) for i in range(len(examples))]
    types = [_segments(n_a, len(ids), layout) for ids, n_a in rows] if layout.segment_ids else None
    return EncodedTexts([ids for ids, _ in rows], types)


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


def padded_batch(enc: EncodedTexts, idx: Sequence[int], pad_id: int, length: int | None = None) -> dict:
    """Rows `idx` of `enc` as padded tensors: input_ids, attention_mask (and token_type_ids,
    padded with type 0 as Hugging Face's tokenizers do)."""
    ids, mask = pad_sequences([enc.ids[i] for i in idx], pad_id, length)
    out = {"input_ids": ids, "attention_mask": mask}
    if enc.type_ids is not None:
        out["token_type_ids"] = pad_sequences([enc.type_ids[i] for i in idx], 0, ids.shape[1])[0]
    return out


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
    `token_type_ids` is None unless the layout feeds segment ids (BERT): then 1 on the context
    window and its closing [SEP].
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start_positions: torch.Tensor
    end_positions: torch.Tensor
    example_index: list[int]
    offsets: list[list[Span | None]]
    max_context: list[list[bool]]
    unlocated: list[str] = field(default_factory=list)
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.example_index)

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model inputs and labels of features `idx`, trimmed to their longest row."""
        idx = list(idx)
        width = int(self.attention_mask[idx].sum(dim=1).max().item()) if idx else 0
        out = {"input_ids": self.input_ids[idx, :width], "attention_mask": self.attention_mask[idx, :width],
               "start_positions": self.start_positions[idx], "end_positions": self.end_positions[idx]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[idx, :width]
        return out

    def select(self, idx: Sequence[int]) -> "QAFeatures":
        """Features `idx` only; `example_index` still points into the same examples list."""
        idx = list(idx)
        types = None if self.token_type_ids is None else self.token_type_ids[idx]
        return QAFeatures(self.input_ids[idx], self.attention_mask[idx], self.start_positions[idx],
                          self.end_positions[idx], [self.example_index[i] for i in idx],
                          [self.offsets[i] for i in idx], [self.max_context[i] for i in idx],
                          list(self.unlocated), types)


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
              max_query_len: int = 64, layout: Layout = ROBERTA) -> QAFeatures:
    """Features (one per context window) of `examples`; start/end positions from the first answer.

    Rows are `<s> question </s></s> window </s>` (BERT layout: `[CLS] question [SEP] window [SEP]`)."""
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
    types: list[list[int]] = []
    for ei, ex in enumerate(examples):
        question = tok.encode(ex.question)[:max_query_len]
        ctx_ids, spans = tok.encode_with_offsets(ex.context)
        prefix = 1 + len(question) + layout.separators  # <s> question </s></s> | [CLS] question [SEP]
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
            rows.append([tok.bos_id] + question + [tok.eos_id] * layout.separators + ctx_ids[ws:ws + wl]
                        + [tok.eos_id])
            if layout.segment_ids:
                types.append(_segments(prefix, len(rows[-1]), layout))
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
    type_ids = pad_sequences(types, 0, ids.shape[1])[0] if layout.segment_ids else None
    return QAFeatures(ids, mask, torch.tensor(starts_pos, dtype=torch.long), torch.tensor(ends_pos, dtype=torch.long),
                      example_index, offsets, max_context, unlocated, type_ids)


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
