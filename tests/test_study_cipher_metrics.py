"""The study's cipher-language diagnostics: row precision@1 of a checkpoint's table
(study/row_scoring.py) and the plugged MLM loss with the output bias refit (study/loss_scoring.py),
each against a reference computed here by other means."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ds_minimodel.artefacts.langpack import PackInfo
from ds_minimodel.artefacts.modeldir import write_model_dir
from ds_minimodel.config import ModelConfig, to_dict
from ds_minimodel.data.cipher_vocab import KNOWN_ROWS_FILE, known_rows_record
from ds_minimodel.data.masking import mask_tokens
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder
from ds_minimodel.study.loss_scoring import masked_logits, refit_output_bias, sequence_losses
from ds_minimodel.study.row_scoring import RowPrecisionScorer
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

VOCAB = 200


def _cfg() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       max_positions=80, hidden_dropout=0.0, attention_dropout=0.0, init_std=0.2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from ds_minimodel.data.bibles import english_verses

    root = tmp_path_factory.mktemp("rows_tok")
    kjv = english_verses("kjv")
    (root / "en.txt").write_text("\n".join(kjv[k] for k in sorted(kjv)[:1500]) + "\n", encoding="utf-8")
    return train_tokenizer([str(root / "en.txt")], str(root / "en"), VOCAB)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MLMEncoder(_cfg()).eval()
    with torch.no_grad():
        m.lm_head.bias.normal_(0, 0.5)
    return m


def _info(tok) -> PackInfo:
    return PackInfo(language="en-cipher", method="full", vocab_size=tok.vocab_size, hidden_size=32,
                    pad_token_id=tok.pad_id, special=tok.special_role_ids(), body_fingerprint="x", mini_depth=2,
                    tokenizer_fingerprint=tok.fingerprint())


def test_row_precision_counts_the_rows_whose_nearest_source_row_is_the_known_one(model, tokenizer, tmp_path):
    model_dir = write_model_dir(tmp_path / "model", model.state_dict(), {"model": to_dict(model.cfg)},
                                {"kind": "pretrain"}, tokenizer.path)
    data = tmp_path / "data"
    data.mkdir()
    normal = [i for i in range(VOCAB) if i not in tokenizer.special_ids]
    # A known map that is not the identity: target row t's right answer is source row rows[t].
    rng = np.random.default_rng(0)
    answers = rng.permutation(normal)
    rows = {t: int(s) for t, s in zip(normal[:120], answers[:120])}
    (data / KNOWN_ROWS_FILE).write_text(json.dumps(known_rows_record(tokenizer, tokenizer, rows, "trained")))
    source = model.state_dict()["embeddings.word"]
    # The learned table: each known row its right source row, scaled (cosine ignores the norm) and
    # nudged; 30 of them instead another row's source row, which is then their nearest: wrong.
    word = torch.randn(VOCAB, 32)
    wrong = set(list(rows)[::4])
    for t, s in rows.items():
        word[t] = source[s if t not in wrong else (s + 1) % VOCAB] * 3.0 + 1e-4 * torch.randn(32)
    scorer = RowPrecisionScorer(model_dir, data)
    units = scorer.score(_info(tokenizer), {"word": word, "output_bias": torch.zeros(VOCAB)}, tokenizer.path)
    assert len(units.num) == 120 and units.value == pytest.approx(1 - len(wrong) / 120)
    # unit order is target-id order, each 0/1 as constructed
    assert [int(v) for v in units.num] == [0 if t in wrong else 1 for t in sorted(rows)]
    assert scorer.references("en-cipher")["known_rows"] == 120

    with pytest.raises(MissingFileError, match="known_rows.json does not exist"):
        RowPrecisionScorer(model_dir, tmp_path)
    # A map written for another tokenizer is refused, naming both.
    record = json.loads((data / KNOWN_ROWS_FILE).read_text())
    record["target_tokenizer"]["fingerprint"] = "another"
    (data / KNOWN_ROWS_FILE).write_text(json.dumps(record))
    with pytest.raises(InvalidValueError, match="maps the rows of tokenizer"):
        RowPrecisionScorer(model_dir, data).score(_info(tokenizer), {"word": word, "output_bias": torch.zeros(VOCAB)},
                                                  tokenizer.path)


def _batches(seed: int, n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB // 4, (8, 24), generator=g)  # a quarter of the vocabulary: most rows unseen
        seeds = torch.randint(0, 2**31, (8,), generator=g).tolist()
        inputs, labels = mask_tokens(ids, seeds, 0.3, mask_id=4, vocab_size=VOCAB, special_ids=range(5))
        out.append({"input_ids": inputs, "labels": labels})
    return out


def test_bias_refit_is_the_stationary_point_of_its_objective_and_lowers_the_loss(model):
    batches = _batches(0)
    start = model.lm_head.bias.detach().double().clone()
    fitted = refit_output_bias(model, batches).double()
    # The stationarity condition, by hand: the mean softmax over the refit tokens minus their
    # label frequencies, plus the prior's pull (weight 1/T per entry), is zero at the optimum.
    with torch.no_grad():
        z = torch.cat([masked_logits(model, b, bias=False)[0] for b in batches]).double()
    gold = torch.cat([b["labels"][b["labels"] != IGNORE_INDEX] for b in batches])
    t = len(gold)
    probs = torch.softmax(z + fitted, dim=1).mean(dim=0)
    freq = torch.bincount(gold, minlength=VOCAB).double() / t
    grad = probs - freq + (fitted - start) / t
    assert grad.abs().max() < 1e-7
    assert not torch.equal(fitted, start)

    def loss(bias: torch.Tensor) -> float:
        return float(F.cross_entropy(z + bias, gold))
    assert loss(fitted) < loss(start)
    # A piece the refit tokens never show only goes down (by T x its mean probability, where the
    # prior holds it), and pieces that are seen go both ways.
    unseen = freq == 0
    assert unseen.any() and bool(((fitted - start)[unseen] < 0).all())
    assert bool(((fitted - start)[~unseen] > 0).any()) and bool(((fitted - start)[~unseen] < 0).any())


def test_bias_refit_recovers_a_bias_spoiled_by_a_per_token_offset(model):
    """The output side of a plug gap in miniature: a bias shifted away from the model's own loses
    loss on held-out batches; refit on other batches of the same distribution takes most of it back
    (the refit sees only the bias, so the input side is untouched)."""
    fit_on, held_out = _batches(1, 16), _batches(2, 4)

    def held_out_loss(m) -> float:
        parts = [sequence_losses(m, b) for b in held_out]
        return sum(p[0].sum() for p in parts) / sum(p[1].sum() for p in parts)

    good = held_out_loss(model)
    spoiled = MLMEncoder(model.cfg).eval()
    spoiled.load_state_dict(model.state_dict())
    with torch.no_grad():
        spoiled.lm_head.bias.add_(torch.randn(VOCAB, generator=torch.Generator().manual_seed(3)) * 2.0)
    bad = held_out_loss(spoiled)
    with torch.no_grad():
        spoiled.lm_head.bias.copy_(refit_output_bias(spoiled, fit_on))
    refit = held_out_loss(spoiled)
    assert bad > good + 0.5
    assert refit < good + 0.5 * (bad - good)
