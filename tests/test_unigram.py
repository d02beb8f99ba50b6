"""The unigram baseline (data/unigram.py) against a count written here from the corpus's text."""

import math
from collections import Counter

import numpy as np
import pytest

from ds_minimodel.data.shards import TokenShards
from ds_minimodel.data.unigram import unigram_baseline


def _reference(data_path):
    """Re-encode nothing: read the shards as plain numpy, count with Counter, smooth by hand."""
    shards = TokenShards.open(str(data_path))
    special = set(shards.special_ids)
    vocab = shards.vocab_size
    train = Counter(int(t) for t in shards.tokens("train") if int(t) not in special)
    valid = [int(t) for t in shards.tokens("valid") if int(t) not in special]
    regular = [i for i in range(vocab) if i not in special]
    total = sum(train[i] + 1 for i in regular)
    nats = -sum(math.log((train[t] + 1) / total) for t in valid) / len(valid)
    return nats, len(valid)


def test_unigram_matches_hand_count(tiny_corpus):
    nats, n = _reference(tiny_corpus)
    got = unigram_baseline(str(tiny_corpus))
    assert got.tokens == n
    assert got.nats_per_token == pytest.approx(nats, rel=1e-12)


def test_bits_per_char_counts_the_decoded_text(tiny_corpus):
    shards = TokenShards.open(str(tiny_corpus))
    tok = shards.tokenizer()
    ids = np.asarray(shards.tokens("valid"))
    special = shards.special_ids
    # Documents are the runs between special ids; each decodes to one of the corpus's lines.
    docs, cur = [], []
    for t in ids.tolist():
        if t in special:
            if cur:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        docs.append(cur)
    chars = sum(len(tok.decode(d)) for d in docs)
    got = unigram_baseline(str(tiny_corpus))
    assert got.chars == chars
    # A loss equal to the baseline is 0 below it; one nat per token is 1 / (chars/token) / ln 2 bits/char.
    assert got.distance(got.nats_per_token) == {"nats_per_token": 0.0, "bits_per_char": 0.0}
    assert got.distance(got.nats_per_token - 1.0)["bits_per_char"] == pytest.approx(
        got.tokens / chars / math.log(2))


def _fake_run(root, data, losses):
    """A run directory as pretraining leaves it: config.yaml naming the data, eval records."""
    import json

    run = root / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  path: {data}\n", encoding="utf-8")
    rows = [{"kind": "eval", "step": s, "valid_final_loss": f, "valid_mid_loss": m} for s, f, m in losses]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


@pytest.mark.parametrize("below, passed", [(1.2, True), (0.9, False)])
def test_body_gate(tmp_path, tiny_corpus, capsys, below, passed):
    from ds_minimodel.analysis.body import read_gate
    from launchers import summarize

    nats, _ = _reference(tiny_corpus)
    run = _fake_run(tmp_path, tiny_corpus, [(0, nats + 3, nats + 3), (100, nats - below, nats - below + 0.1)])
    code = 0
    try:
        summarize.main([str(run), "--require-body-gate"])
    except SystemExit as exc:
        code = exc.code
    assert (code == 0) == passed
    gate = read_gate(run / "final")
    assert gate["passed"] == passed
    assert gate["final_head_below_unigram_nats"] == pytest.approx(below, abs=1e-9)
    assert f"{below:.3f} nats/token" in capsys.readouterr().out
