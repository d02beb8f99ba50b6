"""FOCUS's one-time cost in FLOPs: the auxiliary fastText CBOW model it trains on the target text
(steps/adapt/focus.py) and the combination of source rows. Standard adaptation pays neither; the
study adds this to every point of a "+focus" method's FLOP curve (study/one_time_cost.py).

The unit is the one of flops.py: a multiply and an add are one FLOP each (a multiply-add is 2),
scalar work per update (the sigmoid's table lookup, the learning rate) is not counted, nor is
drawing negatives. fastText does everything with vector loops, so the count is exact per update.

One CBOW update (fastText 0.9.2: FastText::cbow, Model::update, NegativeSamplingLoss::forward,
BinaryLogisticLoss::binaryLogistic), for a target token whose bag of inputs has R rows of the
input matrix (each context word's own row and its character n-grams' rows), dim d, `neg`
negatives:

  hidden  h = (1/R) sum of the R input rows         R*d adds + d multiplies         = d*(R + 1)
  for the target and each of the neg negatives (1 + neg output rows o):
    score   sigmoid(wo[o] . h)                       d multiplies + d adds           = 2d
    grad   += alpha * wo[o]                          (the gradient to h)             = 2d
    wo[o]  += alpha * h                              (the output row's update)       = 2d
  for each of the R input rows i:
    wi[i]  += 1.0 * grad                             (addVectorToRow multiplies too) = 2d  (CBOW
                                                     does not average the gradient: only the
                                                     supervised model normalizes it)

  per update: d*(R + 1) + 6d*(1 + neg) + 2d*R = d * (3R + 1 + 6*(1 + neg)),   R = C * (1 + g)

with C the context words in the bag and g the n-grams per context word. C: fastText draws the
window half-width b uniformly from 1..ws for each token, so in the middle of a line C = 2 E[b] =
ws + 1; at a line's ends, and on lines shortened by subsampling, it is smaller: we measure C and g
on the corpus (`cbow_cost`) rather than assume them.

Which tokens, how many times ("tokens and epochs actually used"):
- fastText's dictionary keeps the words seen at least minCount times, plus its end-of-line word
  "</s>" (one per line; it has no n-grams); pruned words are skipped when a line is read;
- each in-vocabulary token is kept with probability min(1, sqrt(t/f) + t/f) (f: its frequency
  among all tokens): frequent-word subsampling, which drops most of the commonest pieces;
- a line is what getLine reads: a document and its "</s>", cut after 1025 in-vocabulary tokens
  (MAX_LINE_SIZE 1024); a kept token with at least one kept neighbour in its line is one update
  (an empty bag makes no update);
- training stops once the in-vocabulary tokens read reach epoch x ntokens, and ntokens counts
  every token of the file, pruned ones included: so fastText makes epoch x ntokens / (in-vocabulary
  tokens) passes, slightly more than `epoch` when minCount prunes anything.

Subsampling is random: one realisation of it (a fixed numpy seed, so the estimate is
reproducible) over the whole corpus gives the per-pass counts; over a corpus of any useful size its
sampling error is far below a percent.

The combination (focus_combine) costs 2*n*s*d_aux for the cosine similarities of the n new pieces
with the s shared ones (a [n, d_aux] @ [d_aux, s] product) and 2*n*s*d for the sparse weights
applied to the shared pieces' d-wide source rows (done as a dense [n, s] @ [s, d] product).
Normalisation and sparsemax are elementwise and sorting: not counted, as in flops.py.
"""

from __future__ import annotations

import numpy as np

EOS = "</s>"
MAX_LINE_SIZE = 1024  # fastText's dictionary.h: getLine stops after more than this many tokens
# fastText's own defaults for the settings focus.FASTTEXT leaves to it (python train_unsupervised).
DEFAULTS = {"dim": 100, "ws": 5, "epoch": 5, "minCount": 5, "neg": 5, "minn": 3, "maxn": 6, "t": 1e-4}


def ngram_count(word: str, minn: int, maxn: int) -> int:
    """How many character n-grams fastText's computeSubwords gives `word`: the n-grams of
    "<" + word + ">" of minn..maxn characters (code points: it skips UTF-8 continuation bytes),
    but not the lone "<" or ">". Counted with repeats, as fastText adds a repeated n-gram's row twice.
    The end-of-line word "</s>" has none."""
    if word == EOS or maxn < 1:
        return 0
    length = len(word) + 2  # with "<" and ">"
    count = 0
    for n in range(max(minn, 1), min(maxn, length) + 1):
        count += length - n + 1
        if n == 1:
            count -= 2  # "<" and ">" alone
    return count


def cbow_update_flops(dim: int, context_words: float, ngrams_per_word: float, neg: int) -> float:
    """FLOPs of one CBOW update (the module docstring's derivation): d * (3R + 1 + 6(1 + neg)),
    R = context_words * (1 + ngrams_per_word) input rows in the bag."""
    rows = context_words * (1 + ngrams_per_word)
    return dim * (3 * rows + 1 + 6 * (1 + neg))


def cbow_cost(documents, words: list[str], settings: dict | None = None, seed: int = 0) -> dict:
    """FLOPs fastText's CBOW training spends on `documents` (iterables of ids into `words`, one line
    each, as focus.token_vectors writes them) with `settings` (fastText's argument names; missing
    ones take fastText's defaults). Returns the counts behind the estimate, for the record."""
    s = {**DEFAULTS, **(settings or {})}
    dim, ws, neg, epoch = int(s["dim"]), int(s["ws"]), int(s["neg"]), float(s["epoch"])
    docs = [np.asarray(d, dtype=np.int64) for d in documents]
    docs = [d for d in docs if len(d)]
    eos = len(words)  # "</s>" as one more word id
    counts = np.bincount(np.concatenate(docs + [np.zeros(0, np.int64)]), minlength=eos + 1)
    counts[eos] = len(docs)
    ntokens = int(counts.sum())  # every token fastText reads, pruned ones included
    vocab = counts >= s["minCount"]
    in_vocab = int(counts[vocab].sum())
    if in_vocab == 0:
        return {"flops": 0.0, "passes": 0.0, "updates": 0.0, "tokens": ntokens, "words": 0}  # fastText refuses this
    t_over_f = np.divide(s["t"] * ntokens, counts, out=np.zeros(len(counts)), where=counts > 0)
    keep_p = np.sqrt(t_over_f) + t_over_f  # fastText's pdiscard: a token is kept when a uniform draw is below it
    rows = 1 + np.array([ngram_count(w, int(s["minn"]), int(s["maxn"])) for w in words] + [0], dtype=np.float64)

    # One pass: every line's in-vocabulary tokens (with its "</s>"), cut into getLine's lines.
    toks, line_ids = [], []
    n_lines = 0
    for d in docs:
        t = np.append(d[vocab[d]], eos) if vocab[eos] else d[vocab[d]]
        toks.append(t)
        line_ids.append(n_lines + np.arange(len(t)) // (MAX_LINE_SIZE + 1))
        n_lines += (len(t) + MAX_LINE_SIZE) // (MAX_LINE_SIZE + 1) if len(t) else 0
    tok = np.concatenate(toks)
    line = np.concatenate(line_ids)
    keep = np.random.default_rng(seed).random(len(tok)) < keep_p[tok]
    tok, line = tok[keep], line[keep]
    r = rows[tok]
    context = np.zeros(len(tok))  # expected context words per kept token, over the window draw
    bag = np.zeros(len(tok))  # expected input rows in its bag
    has_neighbour = np.zeros(len(tok), dtype=bool)
    for dist in range(1, ws + 1):
        q = (ws - dist + 1) / ws  # P(b >= dist) for b uniform on 1..ws
        same = line[dist:] == line[:-dist]  # token i and i + dist are in one line
        for here, there in ((slice(dist, None), slice(None, -dist)), (slice(None, -dist), slice(dist, None))):
            context[here] += q * same
            bag[here] += q * same * r[there]
            if dist == 1:
                has_neighbour[here] |= same
    updates = int(has_neighbour.sum())
    passes = epoch * ntokens / in_vocab
    per_pass = dim * (3 * bag.sum() + updates * (1 + 6 * (1 + neg)))
    context_words = float(context.sum() / updates) if updates else 0.0
    ngrams_per_word = float(bag.sum() / context.sum() - 1) if updates else 0.0
    return {"flops": float(passes * per_pass), "passes": passes, "tokens": ntokens, "tokens_in_vocab": in_vocab,
            "kept_per_pass": int(keep.sum()), "updates_per_pass": updates, "updates": passes * updates,
            "context_words": context_words, "ngrams_per_word": ngrams_per_word,
            "flops_per_update": cbow_update_flops(dim, context_words, ngrams_per_word, neg) if updates else 0.0,
            "words": int(vocab.sum()), "settings": {k: s[k] for k in DEFAULTS}}


def combine_flops(new: int, shared: int, aux_dim: int, model_dim: int) -> float:
    """focus_combine's matrix products: similarities [new, aux_dim] @ [aux_dim, shared] and the
    weights [new, shared] @ [shared, model_dim]."""
    return 2.0 * new * shared * (aux_dim + model_dim)
