"""The mini-model depth k has one name, mini_depth (issue 24 item 5). A user's config with one of
its old names is refused naming the new key; files an older version wrote (model directories'
config.json and lineage.json, language packs' pack.json, saved configs) still load. The old-format
files here are written by hand, key by key, as the older version wrote them."""

import json

import pytest
import torch

from ds_minimodel.artefacts.langpack import PackInfo, load_pack, save_pack
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.config import (ConfigError, MiniPostConfig, ModelConfig, PretrainConfig, from_dict,
                                 load_config, migrate_renamed)
from ds_minimodel.model import MLMEncoder
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer


@pytest.mark.parametrize("cls, yaml_text, old, new", [
    (PretrainConfig, "model:\n  num_layers: 4\n  mid_head_layer: 2\n", "model.mid_head_layer", "model.mini_depth"),
    (MiniPostConfig, "minipost:\n  layers: 2\n", "minipost.layers", "minipost.mini_depth"),
])
def test_an_old_key_in_a_users_config_is_refused_naming_the_new_one(tmp_path, cls, yaml_text, old, new):
    path = tmp_path / "old.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(cls, path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert f"{old} is {new} now" in msg
    # The same through a command-line override.
    with pytest.raises(ConfigError, match=f"{old} is {new} now"):
        load_config(cls, None, [f"{old}=1"])


def test_the_new_keys_load():
    cfg = load_config(PretrainConfig, None, ["model.num_layers=4", "model.mini_depth=3"])
    assert cfg.model.mini_depth == 3
    assert load_config(MiniPostConfig, None, ["minipost.mini_depth=5"]).minipost.mini_depth == 5


def test_a_saved_config_with_old_keys_is_migrated():
    # A pretraining run's resolved config as the older version saved it.
    saved = {"model": {"num_layers": 4, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                       "mid_head_layer": 1, "mid_head_weight": 0.5}, "train": {"steps": 7}}
    cfg = from_dict(PretrainConfig, saved)
    assert (cfg.model.mini_depth, cfg.model.mid_head_weight, cfg.train.steps) == (1, 0.5, 7)
    assert saved["model"]["mid_head_layer"] == 1  # the caller's dict is left as it was
    # A MiniPost config saved in the section layout, and one saved before step settings had sections.
    assert from_dict(MiniPostConfig, {"minipost": {"layers": 3, "top_layers": 2}}).minipost.mini_depth == 3
    old_flat = from_dict(MiniPostConfig, {"source": "runs/x", "layers": 2, "top_layers": 0})
    assert (old_flat.minipost.source, old_flat.minipost.mini_depth, old_flat.minipost.top_layers) == ("runs/x", 2, 0)
    # A checkpoint's meta.json model section compares equal to today's after migration.
    today = {"num_layers": 4, "mini_depth": 1}
    assert migrate_renamed(ModelConfig, {"num_layers": 4, "mid_head_layer": 1}) == today
    assert migrate_renamed(ModelConfig, {"num_layers": 4, "mid_head_layer": None}) == {"num_layers": 4,
                                                                                        "mini_depth": None}


def test_an_old_model_directory_loads(tmp_path):
    model = {"vocab_size": 40, "hidden_size": 16, "num_layers": 3, "num_heads": 2, "intermediate_size": 32,
             "max_positions": 40, "mid_head_layer": 1}
    cfg = ModelConfig(**{("mini_depth" if k == "mid_head_layer" else k): v for k, v in model.items()})
    d = tmp_path / "final"
    d.mkdir()
    torch.save(MLMEncoder(cfg).state_dict(), d / "model.pt")
    (d / "config.json").write_text(json.dumps({"model": model, "train": {"steps": 3}}), encoding="utf-8")
    (d / "lineage.json").write_text(json.dumps({"kind": "minipost", "mini_layers": 2, "top_layers": 1,
                                                "source_layers": 3}), encoding="utf-8")
    _, got_cfg, lineage = read_model_dir(d)
    assert got_cfg.mini_depth == 1
    assert lineage["mini_depth"] == 2 and "mini_layers" not in lineage
    assert (lineage["kind"], lineage["top_layers"], lineage["source_layers"]) == ("minipost", 1, 3)


def test_an_old_language_pack_loads(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"mau {i} a chiyankhulo cha {i % 7}" for i in range(300)) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(text)], str(tmp_path / "spm"), 40)
    info = PackInfo(language="ny", method="minipost", vocab_size=tok.vocab_size, hidden_size=8,
                    pad_token_id=tok.pad_id, special={"pad": tok.pad_id}, body_fingerprint="abc",
                    mini_depth=2, tokenizer_fingerprint=tok.fingerprint())
    pack = save_pack(tmp_path / "pack", info, torch.zeros(tok.vocab_size, 8), torch.zeros(tok.vocab_size),
                     str(tmp_path / "spm.model"))
    # pack.json as the older version wrote it: the depth under "fingerprint_layers".
    old = {"language": "ny", "method": "minipost", "vocab_size": tok.vocab_size, "hidden_size": 8,
           "pad_token_id": tok.pad_id, "special": {"pad": tok.pad_id}, "body_fingerprint": "abc",
           "fingerprint_layers": 2, "tokenizer_fingerprint": tok.fingerprint(), "provenance": {}, "format": 1}
    (pack / "pack.json").write_text(json.dumps(old), encoding="utf-8")
    got, tensors, _ = load_pack(pack)
    assert (got.mini_depth, got.body_fingerprint, got.language) == (2, "abc", "ny")
    assert tuple(tensors["word"].shape) == (tok.vocab_size, 8)
