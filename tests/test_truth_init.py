"""adapt.init=known_rows, the start-from-truth diagnostic (issue 25): a cipher language's rows start
as their known correct source rows (steps/adapt/common.init_embeddings, start_state).

What is checked, each against something independent of the code under test:

* with the source tokenizer ciphered (every row known), the start is the source table and output
  bias in the ciphered vocabulary's order, row for row; the reference map is read off the two
  vocabularies' spellings (a target piece deciphers to its source piece), not known_rows.json; and
  the body with that start plugged in gives, on ciphered test verses, the English outputs on the
  plain ones, through the full model and through the MiniJoint mini-model (whose head is the mid
  head: its bias, not the final head's, is the known rows' bias);
* with a tokenizer trained on the ciphered text, only the rows whose deciphered spelling is a
  source piece are copied; every other row is bit for bit the "random" init's row (the same
  generator draw) and its bias 0;
* the refusals: data with no known_rows.json, a map of another target tokenizer, a map onto
  another source tokenizer; and a caller that does not say which bias to copy (the study
  rebuilds a run's start with init_embeddings).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from ds_minimodel.config import AdaptConfig, AdaptSettings, ConfigError, ModelConfig, TrainConfig, load_config
from ds_minimodel.data import cipher
from ds_minimodel.data.bibles import english_verses
from ds_minimodel.data.cipher_prep import ciphered_source_tokenizer, trained_known_rows
from ds_minimodel.data.shards import TokenShards, write_shards
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.adapt.common import Body, init_embeddings, pack_info, select_body, start_state
from ds_minimodel.tasks.batching import encode_texts, padded_batch
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.layout import ROBERTA
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer
from tests.conftest import REPO
from tests.helpers import assert_close_fp32

VOCAB = 320
N_VERSES = 2500
SEED = 3
ROLES = ("bos", "pad", "eos", "unk", "mask")


@pytest.fixture(scope="module")
def verses() -> list[str]:
    kjv = english_verses("kjv")
    return [kjv[k] for k in sorted(kjv)[:N_VERSES]]


@pytest.fixture(scope="module")
def source_tok(verses, tmp_path_factory):
    root = tmp_path_factory.mktemp("truth_source")
    (root / "en.txt").write_text("\n".join(verses) + "\n", encoding="utf-8")
    return train_tokenizer([str(root / "en.txt")], str(root / "en"), VOCAB)


def _dataset(out, tok_path: str, verses: list[str], extra: dict) -> TokenShards:
    """A cipher-language dataset as prepare_data writes it: shards of the ciphered verses, the
    tokenizer, known_rows.json (`extra`) beside them."""
    tok = load_tokenizer(tok_path)
    docs = [tok.encode(cipher.encipher(v)) for v in verses[:400]]
    write_shards(str(out), {"train": docs[:300], "valid": docs[300:]}, tok_path, {"language": "en-cipher"},
                 extra_files=extra)
    return TokenShards.open(str(out))


@pytest.fixture(scope="module")
def ciphered_data(source_tok, verses, tmp_path_factory) -> TokenShards:
    """The source tokenizer ciphered (prepare_data --cipher-tokenizer's code): every row known."""
    root = tmp_path_factory.mktemp("truth_ciphered")
    tok, _, extra = ciphered_source_tokenizer(source_tok.path, str(root), [cipher.encipher(v) for v in verses],
                                              seed=0, num_threads=1, log=lambda _: None)
    return _dataset(root / "data", tok.path, verses, extra)


@pytest.fixture(scope="module")
def trained_data(source_tok, verses, tmp_path_factory) -> TokenShards:
    """A tokenizer trained on the ciphered text (prepare_data --known-rows-from's code): some rows known."""
    root = tmp_path_factory.mktemp("truth_trained")
    (root / "cipher.txt").write_text("\n".join(cipher.encipher(v) for v in verses[::-1]) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(root / "cipher.txt")], str(root / "trained"), VOCAB, seed=1)
    _, extra = trained_known_rows(tok, source_tok.path, log=lambda _: None)
    return _dataset(root / "data", tok.path, verses, extra)


def _model_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                       max_positions=80, mini_depth=2, hidden_dropout=0.0, attention_dropout=0.0,
                       init_std=0.2)  # 10x BERT's: outputs that depend on the input and every layer


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    model = MLMEncoder(_model_cfg()).eval()
    with torch.no_grad():  # two different non-zero biases: the wrong head's bias shows
        model.lm_head.bias.normal_(0, 0.5)
        model.mid_head.bias.normal_(0, 0.5)
    return model


def _body(model: MLMEncoder, source_tok, through: str) -> Body:
    state, cfg = model.state_dict(), model.cfg
    body, body_cfg, method, k = select_body(state, cfg, {"kind": "pretrain"}, through, "the test's model")
    return Body(body, body_cfg, method, k, "fp", source_tok, cfg.kernels)


def _cfg(init: str = "known_rows") -> AdaptConfig:
    return AdaptConfig(adapt=AdaptSettings(init=init), train=TrainConfig(out_dir="unused", seed=SEED))


def _truth(target_tok, source_tok) -> dict[int, int]:
    """{target id: source id} from the spellings: specials by role, every other target piece to
    the source piece it deciphers to, when there is one (not a special)."""
    src = source_tok.special_role_ids()
    rows = {tid: src[role] for role, tid in target_tok.special_role_ids().items()}
    for t in range(target_tok.vocab_size):
        if t not in target_tok.special_ids:
            s = source_tok.token_id(cipher.decipher(target_tok.piece(t)))
            if s is not None and s not in source_tok.special_ids:
                rows[t] = s
    return rows


def _batch(examples, tok, max_len=64) -> dict:
    return padded_batch(encode_texts(examples, tok, max_len, ROBERTA), range(len(examples)), tok.pad_id)


@pytest.mark.parametrize("through,head,route", [("full", "lm_head", "final"), ("mini", "mid_head", "mid")])
def test_known_rows_of_the_ciphered_source_tokenizer_start_as_the_english_model(
        through, head, route, source_model, source_tok, ciphered_data):
    from ds_minimodel.tasks.bible import genre_test_set

    target_tok = ciphered_data.tokenizer()
    truth = _truth(target_tok, source_tok)
    assert len(truth) == VOCAB and sorted(truth.values()) == list(range(VOCAB))  # every row, a permutation
    perm = torch.tensor([truth[t] for t in range(VOCAB)])
    assert not torch.equal(perm, torch.arange(VOCAB))  # the ids are shuffled: a plug ignoring the map fails

    body = _body(source_model, source_tok, through)
    start, model_cfg, record = start_state(body, ciphered_data, _cfg())
    state = source_model.state_dict()
    assert torch.equal(start["embeddings.word"], state["embeddings.word"][perm])
    assert torch.equal(start["lm_head.bias"], state[f"{head}.bias"][perm])  # the head it trains through
    assert record == {"rows_copied": VOCAB, "rows_known": VOCAB - 5, "bias_copied": VOCAB,
                      "bias": "the source head's"}
    info = pack_info(_cfg(), body, target_tok, "en-cipher", record, model_cfg.num_layers)
    assert info.provenance["init"] == "known_rows" and info.provenance["rows_known"] == VOCAB - 5

    # The plugged body on ciphered test verses is the source model on the English ones.
    en = genre_test_set("en")[0][:48]
    ciphered = genre_test_set("en-cipher")[0][:48]
    en_batch, cipher_batch = _batch(en, source_tok), _batch(ciphered, target_tok)
    assert torch.equal(perm[cipher_batch["input_ids"]], en_batch["input_ids"])
    plugged = MLMEncoder(model_cfg).eval()
    plugged.load_state_dict(start, strict=True)
    with torch.no_grad():
        expected = source_model(en_batch["input_ids"], attention_mask=en_batch["attention_mask"], route=route)
        got = plugged(cipher_batch["input_ids"], attention_mask=cipher_batch["attention_mask"], route="final")
    depth = body.cfg.num_layers
    assert_close_fp32(got["hidden"], expected["hidden"], depth=depth, reduction=model_cfg.intermediate_size,
                      what="ciphered hidden states")
    # Column t of the ciphered logits is the source's column perm[t]; one GEMM in another column
    # order may round differently.
    assert_close_fp32(got["logits"], expected["logits"][..., perm], depth=depth + 1,
                      reduction=model_cfg.intermediate_size, what="ciphered MLM logits")


def test_a_trained_tokenizer_copies_its_known_rows_only(source_model, source_tok, trained_data):
    target_tok = trained_data.tokenizer()
    truth = _truth(target_tok, source_tok)
    normal = VOCAB - 5
    assert normal // 2 < len(truth) - 5 < normal  # some rows known, some not

    body = _body(source_model, source_tok, "full")
    start, _, record = start_state(body, trained_data, _cfg())
    state = source_model.state_dict()
    random_word, random_bias, _ = init_embeddings("random", state["embeddings.word"], source_tok, target_tok, SEED)
    word, bias = start["embeddings.word"], start["lm_head.bias"]
    for t in range(VOCAB):
        if t in truth:
            assert torch.equal(word[t], state["embeddings.word"][truth[t]]), t
            assert bias[t] == state["lm_head.bias"][truth[t]], t
        else:  # the "random" start's row, from the same draw, and no bias
            assert torch.equal(word[t], random_word[t]) and bias[t] == 0, t
    assert not torch.equal(word, random_word)
    assert record == {"rows_copied": len(truth), "rows_known": len(truth) - 5, "bias_copied": len(truth),
                      "bias": "the source head's"}


def test_a_body_without_an_output_bias_keeps_zeros_and_says_so(source_model, source_tok, ciphered_data):
    state, target_tok = source_model.state_dict(), ciphered_data.tokenizer()
    word, bias, record = init_embeddings("known_rows", state["embeddings.word"], source_tok, target_tok, SEED,
                                         ciphered_data, source_bias=None)
    assert torch.equal(bias, torch.zeros(VOCAB))
    assert record == {"rows_copied": VOCAB, "rows_known": VOCAB - 5, "bias_copied": 0,
                      "bias": "zeros: the body has no output bias to copy"}
    # A caller that does not say (the study rebuilding a run's start) is a bug, not a zero bias.
    with pytest.raises(AssertionError, match="pass source_bias"):
        init_embeddings("known_rows", state["embeddings.word"], source_tok, target_tok, SEED, ciphered_data)


def test_known_rows_is_refused_without_a_map_of_these_tokenizers(source_model, source_tok, ciphered_data,
                                                                 trained_data, tmp_path):
    body = _body(source_model, source_tok, "full")

    def refused(corpus, error, body=body) -> str:
        with pytest.raises(error) as exc:
            start_state(body, corpus, _cfg())
        message = str(exc.value)
        assert "\n" not in message and message.startswith("adapt.init=known_rows"), message
        return message

    plain = tmp_path / "plain"  # a dataset that is no cipher language: no known_rows.json
    shutil.copytree(ciphered_data.path, plain)
    (plain / "known_rows.json").unlink()
    assert refused(TokenShards.open(str(plain)), MissingFileError) == (
        f"adapt.init=known_rows needs a cipher language's known_rows.json, and {plain} has none (prepare_data.py "
        "--recipe bible-<code>-cipher with --cipher-tokenizer SOURCE or --known-rows-from SOURCE writes it)")

    other = tmp_path / "other"  # the trained tokenizer's map beside the ciphered tokenizer's shards
    shutil.copytree(ciphered_data.path, other)
    shutil.copyfile(f"{trained_data.path}/known_rows.json", other / "known_rows.json")
    assert "maps the rows of tokenizer" in refused(TokenShards.open(str(other)), InvalidValueError)

    # A body whose own tokenizer is not the one the map's source ids are ids of.
    stranger = dataclasses.replace(body, source_tokenizer=ciphered_data.tokenizer())
    message = refused(ciphered_data, InvalidValueError, body=stranger)
    assert f"maps onto source tokenizer {source_tok.path}" in message and "would name other rows" in message

    # A source id outside the model's table.
    big = tmp_path / "big"
    shutil.copytree(ciphered_data.path, big)
    record = json.loads((big / "known_rows.json").read_text(encoding="utf-8"))
    record["rows"]["7"] = VOCAB
    (big / "known_rows.json").write_text(json.dumps(record), encoding="utf-8")
    assert "maps target row 7 to source row 320, outside" in refused(TokenShards.open(str(big)), InvalidValueError)


def test_adapt_init_known_rows_is_a_config_value(source_tok):
    cfg = load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", ["adapt.init=known_rows"])
    assert cfg.adapt.init == "known_rows"
    with pytest.raises(ConfigError, match="adapt.init must be one of .*'known_rows', got 'truth'"):
        load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", ["adapt.init=truth"])
    with pytest.raises(UserError, match="adapt.init=known_rows needs the source model's tokenizer"):
        init_embeddings("known_rows", torch.randn(VOCAB, 8), None, source_tok, SEED, source_bias=None)
