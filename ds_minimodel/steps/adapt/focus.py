"""FOCUS initialisation of a new vocabulary's embeddings (Dobler & de Melo, EMNLP 2023,
arXiv 2305.14481), written from the paper.

A target piece that the source vocabulary also has keeps its source vector (as copy_shared does).
Every other target piece starts as a sparse convex combination of those shared pieces' source
vectors, weighted by how similar the pieces are in *auxiliary* embeddings: a small fastText CBOW
model trained on the target corpus, tokenized with the target tokenizer (so every target piece that
occurs often enough gets a vector, and shared and new pieces live in one space). The weights are
sparsemax (Martins & Astudillo, 2016) of the cosine similarities: most are exactly zero, so a new
piece borrows from its few nearest shared pieces instead of averaging the whole vocabulary.

Pieces too rare for fastText (fewer than `min_count` occurrences) keep the random start, as in
the authors' code (which draws them from the source table's statistics; ours is the `random`
init's noise, so the two inits differ only where FOCUS has something to say).

The auxiliary model is trained with one thread and fastText's fixed seed (its Python API takes
none), so the same corpus and tokenizer give the same vectors: `study` can rebuild a run's step-0
embeddings. train.seed varies only the random rows (the rare pieces) and, as for every init, the
data order and masks. Its cost (seconds on a
Bible) is not part of step 2's FLOP count: it is a one-time cost that standard adaptation does not
pay. `focus_init` returns its wall time and its FLOPs (method/focus_cost.py: fastText's CBOW
updates on the tokens and passes it actually trains on, and the combination's products) for the
pack's record; the study adds them to a "+focus" method's curve (study/one_time_cost.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ds_minimodel.errors import UserError
from ds_minimodel.method.focus_cost import cbow_cost, combine_flops

# The paper's auxiliary fastText settings (CBOW: closer to MLM than skip-gram), with a hash-bucket
# table sized for a Bible-scale corpus (fastText's default, 2M buckets x dim floats, is 800 MB).
FASTTEXT = {"model": "cbow", "dim": 100, "epoch": 3, "minCount": 10, "neg": 10, "bucket": 200_000}


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dimension: the Euclidean projection of z onto the probability
    simplex, argmin_p ||p - z||^2 with p >= 0, sum p = 1 (Martins & Astudillo 2016, Alg. 1).

    With z sorted descending, the support is the largest k with 1 + k z_(k) > sum_{j<=k} z_(j);
    tau = (sum_{j<=k} z_(j) - 1) / k and p = max(z - tau, 0).
    """
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)
    cumsum = z_sorted.cumsum(dim=-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    support = (1 + k * z_sorted > cumsum).to(z.dtype)
    k_z = support.sum(dim=-1, keepdim=True)  # >= 1: the largest entry is always in the support
    tau = (torch.gather(cumsum, -1, k_z.long() - 1) - 1) / k_z
    return torch.clamp(z - tau, min=0)


def focus_combine(new_aux: torch.Tensor, shared_aux: torch.Tensor, shared_source: torch.Tensor,
                  chunk: int = 4096) -> torch.Tensor:
    """[n, d] new vectors: row i = sum_j sparsemax(cos(new_aux_i, shared_aux_j))_j shared_source_j."""
    if shared_aux.shape[0] == 0:
        raise UserError("adapt.init=focus: the source and target vocabularies share no piece that the "
                        "target corpus uses often enough; use adapt.init=random")
    new_unit = torch.nn.functional.normalize(new_aux.double(), dim=1)
    shared_unit = torch.nn.functional.normalize(shared_aux.double(), dim=1)
    out = torch.empty(new_aux.shape[0], shared_source.shape[1], dtype=torch.float64)
    for start in range(0, new_aux.shape[0], chunk):  # bounded [chunk, shared] similarity blocks
        weights = sparsemax(new_unit[start:start + chunk] @ shared_unit.T)
        out[start:start + chunk] = weights @ shared_source.double()
    return out.to(shared_source.dtype)


def corpus_documents(tokens: np.ndarray, eos_id: int, special_ids) -> list[np.ndarray]:
    """A flat token stream (data/shards.py: documents each followed by eos) as its documents,
    without special tokens (they keep their source rows; fastText need not see them)."""
    tokens = np.asarray(tokens)
    docs = np.split(tokens, np.flatnonzero(tokens == eos_id) + 1)
    specials = np.fromiter(special_ids, dtype=np.int64)
    return [d[~np.isin(d, specials)] for d in docs if len(d)]


def fasttext_words(pieces: list[str]) -> list[str]:
    """The word fastText sees for each target id: the piece as the tokenizer spells it (unique
    within a vocabulary) so fastText's character n-grams see it; a piece with whitespace in it, if
    any, by its id."""
    return [p if p and not any(c.isspace() for c in p) else f"<id{i}>" for i, p in enumerate(pieces)]


def token_vectors(documents, pieces: list[str], threads: int = 1,
                  **settings) -> tuple[dict[int, np.ndarray], dict]:
    """({target id: fastText vector} for every piece that occurs at least minCount times in
    `documents` (iterables of target ids), the settings fastText trained with: its own record of
    them, defaults included)."""
    import fasttext  # optional dependency (the `focus` extra); imported only for init=focus

    words = fasttext_words(pieces)
    ids = {w: i for i, w in enumerate(words)}
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="focus-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc in documents:
                if len(doc):
                    f.write(" ".join(words[int(t)] for t in doc) + "\n")
        if os.path.getsize(path) == 0:
            raise UserError("adapt.init=focus: the target corpus's train split is empty")
        model = fasttext.train_unsupervised(path, **{**FASTTEXT, **settings}, thread=threads, verbose=0)
    finally:
        os.unlink(path)
    args = model.f.getArgs()
    used = {k: getattr(args, k) for k in ("dim", "ws", "epoch", "minCount", "neg", "minn", "maxn", "t")}
    return {ids[w]: model.get_word_vector(w) for w in model.words if w in ids}, {**used, "words": len(model.words)}


@dataclass
class FocusResult:
    combined: list[int]  # target ids initialised by FOCUS
    seconds: float  # auxiliary model and combination (wall-clock)
    flops: float  # the same, estimated (method/focus_cost.py)
    cost: dict  # the counts behind `flops`: fastText's passes, updates, context, n-grams


def focus_init(word: torch.Tensor, source_word: torch.Tensor, shared: list[tuple[int, int]], documents,
               target_pieces: list[str], special_ids, **fasttext_settings) -> FocusResult:
    """Fill `word` in place (the target table, already holding the random start, the special rows
    and the `shared` pieces' source rows): every other piece fastText knows gets its FOCUS row.
    Special tokens' rows stay (fastText's own end-of-line word "</s>" may spell one of them)."""
    t0 = time.perf_counter()
    documents = list(documents)  # read twice: by fastText, and by the cost estimate
    aux, used = token_vectors(documents, target_pieces, **fasttext_settings)
    shared_ids = {i for i, _ in shared}
    anchors = [(i, j) for i, j in shared if i in aux]
    new = [i for i in sorted(aux) if i not in shared_ids and i not in special_ids]
    if new:
        shared_aux = torch.from_numpy(np.stack([aux[i] for i, _ in anchors])) if anchors else torch.zeros(0, 1)
        rows = focus_combine(torch.from_numpy(np.stack([aux[i] for i in new])), shared_aux,
                             source_word[[j for _, j in anchors]])
        word[new] = rows.to(word.dtype)
    seconds = time.perf_counter() - t0  # the estimate below is bookkeeping, not FOCUS's cost
    fasttext_cost = cbow_cost(documents, fasttext_words(target_pieces), used)
    fasttext_cost["words_fasttext"] = used["words"]  # its dictionary's size beside the estimate's ("words")
    combine = combine_flops(len(new), len(anchors), int(used["dim"]), int(source_word.shape[1])) if new else 0.0
    return FocusResult(combined=new, seconds=seconds, flops=fasttext_cost["flops"] + combine,
                       cost={"fasttext": fasttext_cost, "combine_flops": combine})
