"""Parity with Hugging Face RoBERTa / XLM-R / BERT, both ways, on tiny random-init models (CPU).

Every parameter (layer norms and biases too) is randomised, so a swapped or dropped tensor
shows up in the logits.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from ds_minimodel.artefacts import hf
from ds_minimodel.config import ModelConfig
from ds_minimodel.errors import UserError
from ds_minimodel.model import MLMEncoder
from tests.helpers import (
    HF,
    LAYER,
    D,
    H,
    I,
    L,
    P,
    V,
    assert_close_fp32,
    hf_batch,
    hf_config,
    randomise,
)

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

LOGITS = dict(depth=L + 2, **LAYER)


def hf_mlm(model_type: str, seed: int = 0):
    return randomise(HF[model_type][1](hf_config(model_type)), seed)


def save_hf_dir(model, path, fmt: str = "safetensors", prefix_strip: str | None = None, add_prefix: str | None = None):
    """A Hugging Face directory as `save_pretrained` would write it, optionally with renamed keys."""
    path.mkdir(parents=True)
    model.config.save_pretrained(str(path))
    sd = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    if add_prefix:
        sd = {add_prefix + k: v for k, v in sd.items()}
    if fmt == "safetensors":
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """One saved random-init *ForMaskedLM directory per model type (shared by tests)."""
    out = {}
    for i, mt in enumerate(HF):
        m = hf_mlm(mt, seed=i)
        d = tmp_path_factory.mktemp(mt)
        m.save_pretrained(str(d / "m"))
        out[mt] = (m, d / "m")
    return out


# ---------------------------------------------------------------------------------------------
# (a) Hugging Face -> ours


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("model_type", list(HF))
def test_hf_to_ours_logits_and_hidden(hf_dirs, model_type, attention):
    ref, path = hf_dirs[model_type]
    ours = hf.load_hf_pretrained(path, overrides={"attention": attention})
    assert ours.hf_fresh_init == ()
    assert ours.cfg.position_style == ("bert" if model_type == "bert" else "roberta")
    assert ours.cfg.layer_norm_eps == HF[model_type][3] and ours.cfg.type_vocab_size == HF[model_type][4]
    assert ours.lm_head.weight is ours.embeddings.word
    ids, mask = hf_batch(ours.cfg.pad_token_id)
    with torch.no_grad():
        for m in (mask, None):
            want = ref(input_ids=ids, attention_mask=m, output_hidden_states=True)
            got = ours(ids, attention_mask=m)
            states = ours.encode(ids, attention_mask=m)
            assert_close_fp32(got["logits"], want.logits, **LOGITS, what="logits")
            assert len(states) == len(want.hidden_states) == L + 1
            for layer, (s_ours, s_hf) in enumerate(zip(states, want.hidden_states)):
                assert_close_fp32(s_ours, s_hf, depth=layer + 1, **LAYER, what=f"hidden state {layer}")
            assert_close_fp32(got["hidden"], want.hidden_states[-1], depth=L + 1, **LAYER, what="hidden")


def test_state_dict_from_hf_is_pure_and_qkv_is_concatenated():
    ref = hf_mlm("xlm-roberta")
    hsd = ref.state_dict()
    sd, has_head = hf.state_dict_from_hf(hsd, "xlm-roberta")
    assert has_head
    q, k, v = (hsd[f"roberta.encoder.layer.2.attention.self.{n}.weight"] for n in ("query", "key", "value"))
    assert torch.equal(sd["layers.2.attention.qkv.weight"], torch.cat([q, k, v]))
    assert sd["lm_head.weight"] is sd["embeddings.word"]
    assert set(sd) == set(MLMEncoder(hf.config_from_hf(ref.config)).state_dict())
    # and the adapters are inverse to each other
    back = hf.state_dict_to_hf(sd, hf.config_from_hf(ref.config))
    saved = {k for k in hsd if ".decoder." not in k}
    assert set(back) == saved
    for key in saved:
        assert torch.equal(back[key], hsd[key]), key
    # old TF-converted BERT checkpoints: LayerNorm.gamma / beta, plus the NSP head and pooler
    bsd = hf_mlm("bert").state_dict()
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in bsd.items()}
    old.update({"cls.seq_relationship.weight": torch.zeros(2, D), "bert.pooler.dense.bias": torch.zeros(D)})
    a, _ = hf.state_dict_from_hf(bsd, "bert")
    b, _ = hf.state_dict_from_hf(old, "bert")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# (b) ours -> Hugging Face


def our_model(position_style: str, attention: str = "sdpa", seed: int = 3) -> MLMEncoder:
    cfg = ModelConfig(vocab_size=V, hidden_size=D, num_layers=L, num_heads=H, intermediate_size=I,
                      max_positions=P, position_style=position_style, pad_token_id=1 if position_style == "roberta" else 0,
                      type_vocab_size=1 if position_style == "roberta" else 2, layer_norm_eps=1e-6,
                      attention=attention, mini_depth=1, kernels="off")
    torch.manual_seed(seed)
    return randomise(MLMEncoder(cfg), seed)


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("model_type", list(HF))
def test_export_roundtrip(tmp_path, model_type, attention):
    style = "bert" if model_type == "bert" else "roberta"
    ours = our_model(style, attention)
    spm = tmp_path / "spm.model"
    spm.write_bytes(b"fake sentencepiece bytes")
    out = hf.export_hf(ours, ours.cfg, tmp_path / "export", tokenizer_path=spm, model_type=model_type)
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "model.safetensors", "mid_head.safetensors", "ds_minimodel.json", "sentencepiece.bpe.model"]
    )
    assert (out / "sentencepiece.bpe.model").read_bytes() == spm.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    ref, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert type(ref).__name__ == hf._MLM_CLASS[model_type]
    assert all(not v for v in info.values()), info  # no missing / unexpected / mismatched keys
    ref.eval()
    ids, mask = hf_batch(ours.cfg.pad_token_id, seed=5)
    with torch.no_grad():
        assert_close_fp32(ours(ids, attention_mask=mask)["logits"], ref(input_ids=ids, attention_mask=mask).logits,
                          **LOGITS, what="logits")

    back = hf.load_hf_pretrained(out)
    assert back.cfg == ours.cfg and back.hf_fresh_init == ()
    a, b = ours.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert back.mid_head.weight is back.embeddings.word
    with torch.no_grad():
        assert torch.equal(ours(ids, attention_mask=mask, route="mid")["logits"],
                           back(ids, attention_mask=mask, route="mid")["logits"])

    # a consolidated state dict without the tied aliases exports the same tensors
    plain = {k: v for k, v in ours.state_dict().items() if k not in ("lm_head.weight", "mid_head.weight")}
    again = hf.state_dict_to_hf(plain, ours.cfg, model_type)
    assert all(torch.equal(again[k], v) for k, v in load_file(str(out / "model.safetensors")).items())

    # re-exporting over a previous export replaces it; a mid-head layer that would drop it is refused
    hf.export_hf(back.state_dict(), back.cfg, out, model_type=model_type)
    assert "sentencepiece.bpe.model" not in os.listdir(out)
    with pytest.raises(UserError, match="mid head at layer 1"):
        hf.load_hf_pretrained(out, mini_depth=2)


def test_export_refuses_foreign_dir_and_bad_state_dict(tmp_path):
    ours = our_model("roberta")
    foreign = tmp_path / "someone_elses_run"
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="not a previous ds_minimodel export"):
        hf.export_hf(ours, ours.cfg, foreign)
    assert os.listdir(foreign) == ["metrics.jsonl"]

    sd = dict(ours.state_dict())
    sd["layers.1.fc1.weight"] = torch.zeros(I + 1, D)
    with pytest.raises(UserError, match=r"layers\.1\.fc1\.weight has shape \(65, 32\).*\(64, 32\)"):
        hf.export_hf(sd, ours.cfg, tmp_path / "bad")
    del sd["layers.1.fc1.weight"]
    with pytest.raises(UserError, match=r"missing tensor\(s\) layers\.1\.fc1\.weight"):
        hf.export_hf(sd, ours.cfg, tmp_path / "bad")
    with pytest.raises(UserError, match="position_style"):
        hf.export_hf(ours, ours.cfg, tmp_path / "bad", model_type="bert")
    assert sorted(os.listdir(tmp_path)) == ["someone_elses_run"]  # nothing written, no temp dirs


# ---------------------------------------------------------------------------------------------
# (c) masked-only loss == Hugging Face's labels= loss


@pytest.mark.parametrize("model_type", list(HF))
def test_masked_loss_matches_hf(hf_dirs, model_type):
    ref, path = hf_dirs[model_type]
    ours = hf.load_hf_pretrained(path)
    ids, mask = hf_batch(ours.cfg.pad_token_id, seed=7)
    g = torch.Generator().manual_seed(8)
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    pick[0, 0] = True
    labels[pick] = torch.randint(0, V, (int(pick.sum()),), generator=g)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = ours(ids, labels=labels, attention_mask=mask)
        full = ours(ids, attention_mask=mask)["logits"]
    assert int(got["num_masked"]) == int(pick.sum())
    assert_close_fp32(got["loss"], want, depth=L + 2, reduction=max(D, I, V), what="loss")
    # The same hidden states (same ops on the same input); only the head runs on other row sets.
    assert_close_fp32(got["final_loss"], F.cross_entropy(full.reshape(-1, V), labels.reshape(-1)),
                      depth=1, reduction=V, what="masked-only loss vs full-logit loss")


# ---------------------------------------------------------------------------------------------
# (d) bare encoders (no MLM head): fresh head, same hidden states


@pytest.mark.parametrize(
    "model_type, prefix, fmt",
    [("bert", None, "safetensors"), ("bert", "bert.", "bin"), ("xlm-roberta", "roberta.", "safetensors")],
)
def test_bare_encoder_gets_fresh_head(tmp_path, model_type, prefix, fmt):
    ref = randomise(HF[model_type][2](hf_config(model_type)), seed=11)  # with a pooler, which is dropped
    path = save_hf_dir(ref, tmp_path / "bare", fmt=fmt, add_prefix=prefix)
    ours = hf.load_hf_pretrained(path, mini_depth=2)
    assert ours.hf_fresh_init == ("lm_head", "mid_head")
    assert ours.lm_head.weight is ours.embeddings.word
    assert torch.equal(ours.lm_head.layer_norm.weight, torch.ones(D)) and not ours.lm_head.bias.any()
    assert torch.equal(ours.embeddings.word, ref.embeddings.word_embeddings.weight)
    ids, mask = hf_batch(ours.cfg.pad_token_id, seed=12)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
    assert_close_fp32(got["hidden"], want, depth=L + 1, **LAYER, what="hidden")
    assert got["logits"].shape == (3, 11, V)
    sd, has_head = hf.state_dict_from_hf(load_file(str(path / "model.safetensors")) if fmt == "safetensors"
                                         else torch.load(path / "pytorch_model.bin"), model_type)
    assert not has_head and not any(k.startswith("lm_head.") for k in sd)


# ---------------------------------------------------------------------------------------------
# (e) bad checkpoints: clear UserError


def test_bad_checkpoints_raise_user_error(tmp_path, hf_dirs):
    # weights from a wider model under a config that says hidden 32
    wide = randomise(transformers.RobertaForMaskedLM(hf_config("roberta", hidden_size=48)), seed=2)
    d = save_hf_dir(wide, tmp_path / "wide")
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "hidden_size": D}))
    with pytest.raises(UserError, match=r"roberta\.embeddings\.word_embeddings\.weight has shape \(120, 48\).*\(120, 32\)"):
        hf.load_hf_pretrained(d)

    # a model type we do not support
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(UserError, match=r"config\.json: model_type 'gpt2' is not supported"):
        hf.load_hf_pretrained(gpt)

    # a BERT config pointing at RoBERTa weights
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    hf_config("bert").save_pretrained(str(mixed))
    save_file({k: v.contiguous() for k, v in hf_dirs["roberta"][0].state_dict().items() if ".decoder." not in k},
              str(mixed / "model.safetensors"))
    with pytest.raises(UserError, match="not a bert encoder"):
        hf.load_hf_pretrained(mixed)

    # an activation we do not implement
    act = tmp_path / "act"
    act.mkdir()
    hf_config("bert", hidden_act="gelu_new").save_pretrained(str(act))
    with pytest.raises(UserError, match="hidden_act 'gelu_new'"):
        hf.load_hf_pretrained(act)

    # fewer layers in the weights than config.json says; a missing weights file; no config at all
    short = save_hf_dir(randomise(transformers.BertForMaskedLM(hf_config("bert", num_hidden_layers=2)), 3), tmp_path / "short")
    (short / "config.json").write_text(json.dumps({**json.loads((short / "config.json").read_text()), "num_hidden_layers": L}))
    with pytest.raises(UserError, match=r"lacks tensor\(s\).*layers\.2\."):
        hf.load_hf_pretrained(short)
    os.remove(short / "model.safetensors")
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        hf.load_hf_pretrained(short)
    with pytest.raises(UserError, match="no config.json"):
        hf.load_hf_pretrained(tmp_path)

    # unexpected tensors and an untied decoder, at the state-dict level
    hsd = dict(hf_dirs["xlm-roberta"][0].state_dict())
    with pytest.raises(UserError, match="unexpected tensor.*classifier.weight"):
        hf.state_dict_from_hf({**hsd, "classifier.weight": torch.zeros(2, D)}, "xlm-roberta")
    hsd["lm_head.decoder.weight"] = hsd["lm_head.decoder.weight"] + 1
    with pytest.raises(UserError, match="untied"):
        hf.state_dict_from_hf(hsd, "xlm-roberta")
    # none of these wrote anything next to the inputs
    assert sorted(os.listdir(tmp_path)) == ["act", "gpt2", "mixed", "short", "wide"]
