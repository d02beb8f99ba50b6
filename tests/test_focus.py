"""adapt.init=focus (steps/adapt/focus.py): sparsemax and FOCUS's combination against cases worked
by hand, sparsemax against an independent bisection, the whole init's rows against hand-worked
values (hand-made auxiliary vectors in place of fastText's), and the real fastText init."""

import numpy as np
import pytest
import torch

from ds_minimodel.steps.adapt.focus import corpus_documents, focus_combine, sparsemax


def test_sparsemax_hand_cases():
    # z = (1, 0.8, 0.1): support {1, 2} (1 + 2 * 0.8 > 1.8 but 1 + 3 * 0.1 < 1.9), tau = (1.8 - 1) / 2.
    assert torch.allclose(sparsemax(torch.tensor([1.0, 0.8, 0.1])), torch.tensor([0.6, 0.4, 0.0]))
    # One entry far ahead takes everything; ties split evenly; order does not matter.
    assert torch.equal(sparsemax(torch.tensor([3.0, 0.0, 0.0])), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(sparsemax(torch.tensor([0.5, 0.5])), torch.tensor([0.5, 0.5]))
    assert torch.allclose(sparsemax(torch.tensor([0.1, 1.0, 0.8])), torch.tensor([0.0, 0.6, 0.4]))


def _sparsemax_by_bisection(z: np.ndarray) -> np.ndarray:
    """The simplex projection from its definition: the tau with sum(max(z - tau, 0)) = 1."""
    lo, hi = z.max() - 1.0, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.maximum(z - tau, 0).sum() > 1 else (lo, tau)
    return np.maximum(z - (lo + hi) / 2, 0)


def test_sparsemax_matches_bisection_on_random_rows():
    z = torch.randn(64, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    p = sparsemax(z)
    expected = np.stack([_sparsemax_by_bisection(row) for row in z.numpy()])
    np.testing.assert_allclose(p.numpy(), expected, atol=1e-12)
    assert torch.allclose(p.sum(dim=1), torch.ones(64, dtype=torch.float64))
    assert (p == 0).any(dim=1).all()  # sparse: some weight of every row is exactly zero


def test_focus_combine_hand_case():
    # Shared pieces a, b, c with auxiliary vectors (1,0), (0,1), (-1,0) and source vectors sa, sb, sc.
    shared_aux = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sa, sb, sc = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-4.0, 0.0, 8.0]), torch.tensor([100.0, 100.0, 100.0])
    shared_source = torch.stack([sa, sb, sc])
    new_aux = torch.tensor([[1.0, 1.0], [2.0, 0.5]])
    rows = focus_combine(new_aux, shared_aux, shared_source)
    # (1, 1): cosines (0.7071, 0.7071, -0.7071) -> sparsemax (0.5, 0.5, 0): the midpoint of sa and sb.
    assert torch.allclose(rows[0], (sa + sb) / 2)
    # (2, 0.5): cosines (0.9701, 0.2425, -0.9701); support {a, b} (1 + 2 * 0.2425 > 1.2127),
    # tau = (1.2127 - 1) / 2 = 0.1063 -> weights (0.8638, 0.1362, 0).
    w_a = 0.9701425 - (0.9701425 + 0.2425356 - 1) / 2
    assert abs(w_a - 0.8638) < 1e-4
    assert torch.allclose(rows[1], w_a * sa + (1 - w_a) * sb, atol=1e-5)
    # sc (far from both) gets no weight at all, however large it is.


def test_corpus_documents_split_at_eos_and_drop_specials():
    eos, pad, mask = 2, 1, 4
    stream = np.array([5, 6, eos, 7, mask, 8, eos, 9, eos], dtype=np.uint16)
    docs = corpus_documents(stream, eos, {eos, pad, mask, 0, 3})
    assert [d.tolist() for d in docs] == [[5, 6], [7, 8], [9]]


def test_focus_init_rows_by_hand(tiny_corpus, tiny_target_corpus, monkeypatch):
    """The whole init (common.init_embeddings) with hand-made auxiliary vectors in place of
    fastText's: each new piece's row against the combination worked out by hand from the source
    rows of the pieces it shares, paired by spelling here (so pairing an anchor with the wrong
    source row, or taking the similarities from the source space, fails)."""
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.steps.adapt import focus
    from ds_minimodel.steps.adapt.common import init_embeddings

    source, corpus = TokenShards.open(str(tiny_corpus)), TokenShards.open(str(tiny_target_corpus))
    source_tok, target_tok = source.tokenizer(), corpus.tokenizer()
    specials = set(target_tok.special_ids)
    # Pieces of the target vocabulary that the source spells alike, and pieces it lacks.
    shared = [(i, source_tok.token_id(target_tok.piece(i))) for i in range(target_tok.vocab_size) if i not in specials
              and source_tok.token_id(target_tok.piece(i)) not in (None, *source_tok.special_ids)]
    new = [i for i in range(target_tok.vocab_size)
           if i not in specials and source_tok.token_id(target_tok.piece(i)) is None]
    assert len(shared) >= 4 and len(new) >= 4
    (a, sa), (b, sb), (c, sc) = shared[:3]
    n1, n2, n3, n4 = new[:4]
    # Anchors a, b, c on the axes; the other shared pieces are unseen by the auxiliary model (no
    # anchors); n4 unseen too (keeps its random start); the mask token seen (keeps its source row).
    aux = {a: [1.0, 0, 0], b: [0, 1.0, 0], c: [0, 0, 1.0],
           n1: [1.0, 1.0, 0],  # cosines (0.7071, 0.7071, 0): tau 0.2071 -> weights (0.5, 0.5, 0)
           n2: [1.6, 1.2, 0],  # (0.8, 0.6, 0): support {a, b}, tau (1.4 - 1) / 2 = 0.2 -> (0.6, 0.4, 0)
           n3: [0.6, 0.48, 0.64],  # unit: support all three, tau (1.72 - 1) / 3 = 0.24 -> (0.36, 0.24, 0.40)
           target_tok.mask_id: [1.0, 0, 0]}
    seen = []

    def hand_made(documents, pieces, threads=1, **settings):
        seen.append(len(pieces))
        return {i: np.array(v, dtype=np.float32) for i, v in aux.items()}, {"dim": 3, "words": len(aux)}

    monkeypatch.setattr(focus, "token_vectors", hand_made)
    S = torch.randn(source_tok.vocab_size, 8, generator=torch.Generator().manual_seed(1))
    word, _, record = init_embeddings("focus", S, source_tok, target_tok, seed=3, corpus=corpus)
    random_word, _, _ = init_embeddings("random", S, source_tok, target_tok, seed=3)
    assert seen == [target_tok.vocab_size]
    S64 = S.double()
    expected = {n1: 0.5 * S64[sa] + 0.5 * S64[sb], n2: 0.6 * S64[sa] + 0.4 * S64[sb],
                n3: 0.36 * S64[sa] + 0.24 * S64[sb] + 0.40 * S64[sc]}
    for i, row in expected.items():  # computed in float64, stored as float32: within 2 ulps
        torch.testing.assert_close(word[i].double(), row, rtol=2.5e-7, atol=1e-12,
                                   msg=lambda m, i=i: f"piece {i}: {m}")
    for i, j in shared:  # every shared piece (anchor or not) keeps its source row
        assert torch.equal(word[i], S[j]), (i, j)
    assert torch.equal(word[target_tok.mask_id], S[source_tok.mask_id])
    assert torch.equal(word[n4], random_word[n4])
    assert record["rows_focus"] == 3 and record["rows_copied"] == 5 + len(shared)


def test_focus_init_with_fasttext_on_a_real_corpus(tiny_corpus, tiny_target_corpus):
    """The real auxiliary model (fastText CBOW on the Chichewa corpus) behind the same init: the
    pieces it saw often enough, other than shared and special ones, get FOCUS rows, the rest keep
    the random start, and the whole is reproducible (one fastText thread, fixed seed). Rows by
    hand: test_focus_init_rows_by_hand."""
    pytest.importorskip("fasttext", reason="the focus extra (fasttext-wheel) is part of make install")
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.steps.adapt.common import init_embeddings

    source, corpus = TokenShards.open(str(tiny_corpus)), TokenShards.open(str(tiny_target_corpus))
    source_tok, target_tok = source.tokenizer(), corpus.tokenizer()
    source_word = torch.randn(source_tok.vocab_size, 256, generator=torch.Generator().manual_seed(1))
    word, _, record = init_embeddings("focus", source_word, source_tok, target_tok, seed=3, corpus=corpus)
    shared_word, _, shared_record = init_embeddings("copy_shared", source_word, source_tok, target_tok, seed=3)
    random_word, _, _ = init_embeddings("random", source_word, source_tok, target_tok, seed=3)

    assert record["rows_copied"] == shared_record["rows_copied"]
    shared_rows = [i for i in range(target_tok.vocab_size) if not torch.equal(shared_word[i], random_word[i])]
    assert torch.equal(word[shared_rows], shared_word[shared_rows])
    focus_rows = [i for i in range(target_tok.vocab_size)
                  if i not in shared_rows and not torch.equal(word[i], random_word[i])]
    assert len(focus_rows) == record["rows_focus"] > 20
    again, _, _ = init_embeddings("focus", source_word, source_tok, target_tok, seed=3, corpus=corpus)
    assert torch.equal(again, word)


def test_focus_needs_the_corpus_and_the_source_tokenizer(tiny_target_corpus):
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.errors import UserError
    from ds_minimodel.steps.adapt.common import init_embeddings

    corpus = TokenShards.open(str(tiny_target_corpus))
    tok = corpus.tokenizer()
    with pytest.raises(UserError, match="adapt.init=focus needs the source model's tokenizer"):
        init_embeddings("focus", torch.randn(tok.vocab_size, 8), None, tok, seed=0, corpus=corpus)
    with pytest.raises(UserError, match="needs the target corpus"):
        init_embeddings("focus", torch.randn(tok.vocab_size, 8), tok, tok, seed=0)
