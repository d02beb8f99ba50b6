"""adapt.init=focus (steps/adapt/focus.py): sparsemax and FOCUS's combination against cases worked
by hand, sparsemax against an independent bisection, and the whole init on a real corpus."""

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


def test_focus_init_on_a_real_corpus(tiny_corpus, tiny_target_corpus):
    """The English tiny tokenizer as source, Chichewa as target: specials copy by role, shared pieces
    copy their source rows (as copy_shared), pieces fastText saw become convex combinations of the
    shared rows, the rest keep the random start, and the
    whole is reproducible (one fastText thread, fixed seed)."""
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
    # (the random init copies the five special rows by role too)
    shared_rows = [i for i in range(target_tok.vocab_size) if not torch.equal(shared_word[i], random_word[i])]
    assert len(shared_rows) + 5 == record["rows_copied"] and 20 < len(shared_rows) < 256
    specials = sorted(target_tok.special_ids)
    assert torch.equal(word[specials], random_word[specials])
    assert torch.equal(word[shared_rows], shared_word[shared_rows])
    focus_rows = [i for i in range(target_tok.vocab_size)
                  if i not in shared_rows and not torch.equal(word[i], random_word[i])]
    assert len(focus_rows) == record["rows_focus"] > 20
    # The table (256 wide) is wider than there are shared rows, so a row's weights over them are
    # unique (least squares) and a row outside their convex hull cannot pass.
    hull = shared_word[shared_rows].double()
    weights = torch.linalg.lstsq(hull.T, word[focus_rows].double().T).solution.T
    assert torch.allclose(weights @ hull, word[focus_rows].double(), atol=1e-4)
    assert weights.min() > -1e-4 and torch.allclose(weights.sum(dim=1), torch.ones(len(focus_rows)).double(), atol=1e-4)
    assert ((weights.abs() < 1e-6).sum(dim=1) > 0).all()  # sparse: sparsemax, not softmax
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
