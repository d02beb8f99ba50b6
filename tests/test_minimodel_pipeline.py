"""Steps 1b-4 on tiny models: what must stay bit-identical stays so, and bad packs are refused."""

import json

import pytest
import torch

from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import (
    extract_layers,
    fingerprint,
    minijoint_mini,
    plug_embeddings,
)
from ds_minimodel.config import ModelConfig, from_dict
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import MLMEncoder
from tests.helpers import expect_rejected, run_step


def _tiny_state():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=101, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                      mini_depth=1, max_positions=40)
    return MLMEncoder(cfg).state_dict(), cfg


def test_extract_then_plug_leaves_every_other_tensor_bit_identical():
    state, cfg = _tiny_state()
    reference = {k: v.clone() for k, v in state.items()}
    mini, mini_cfg = minijoint_mini(state, cfg)
    word, bias = torch.randn(57, 32), torch.randn(57)
    plugged, plugged_cfg = plug_embeddings(state, cfg, word, bias, pad_token_id=1)
    assert plugged_cfg.vocab_size == 57 and mini_cfg.num_layers == 1
    replaced = {"embeddings.word", "lm_head.weight", "mid_head.weight", "lm_head.bias", "mid_head.bias"}
    for name, tensor in reference.items():
        if name not in replaced:
            assert torch.equal(plugged[name], tensor), name
    for name in ("layers.0.fc1.weight", "embeddings.position", "embeddings.layer_norm.weight"):
        assert torch.equal(mini[name], reference[name])
    assert torch.equal(mini["lm_head.dense.weight"], reference["mid_head.dense.weight"])
    assert plugged["lm_head.weight"] is word and plugged["mid_head.bias"] is bias
    # The fingerprint of layers 1..k is the same for the full model and the carved mini-model.
    assert fingerprint(mini, 1) == fingerprint(state, 1) == fingerprint(plugged, 1)
    assert fingerprint(state, 2) != fingerprint(state, 1)
    sub, _ = extract_layers(state, cfg, 2)
    assert not any(k.startswith(("layers.2", "lm_head", "mid_head")) for k in sub)


def assert_ran_as(run_dir, kind):
    """What ran is on record as step kind `kind`: in every checkpoint's meta.json, in the metrics
    log, and in the logged FLOPs (MFU's numerator), which are that kind's count for the model the
    run trained, micro-batch by micro-batch of its loader."""
    from ds_minimodel.method.flops import step_flops
    from ds_minimodel.config import ModelConfig, from_dict
    from ds_minimodel.data.loader import MLMLoader
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.training.metrics import read_metrics

    metas = [json.loads(p.read_text()) for p in sorted((run_dir / "checkpoints").glob("step_*/meta.json"))]
    assert metas and [m["step_kind"] for m in metas] == [kind] * len(metas)
    assert [r["step_kind"] for r in read_metrics(run_dir, "start")] == [kind]
    config = metas[-1]["config"]
    model_cfg = from_dict(ModelConfig, config["model"])
    data, train = config["data"], config["train"]
    loader = MLMLoader(TokenShards.open(data["path"]), "train", data["seq_len"], train["micro_batch_size"],
                       train["grad_accum"], 0, 1, train["seed"], data["mask_prob"])
    k = config["minipost"]["mini_depth"] if kind == "minipost_top" else None
    total = 0
    for record in read_metrics(run_dir, "train"):
        for micro in loader.next_step():
            B, T = micro["input_ids"].shape
            total += step_flops(model_cfg, kind, B, T, int(micro["labels"].ne(-100).sum()),
                                mini_depth=k).total
        assert record["flops"] == total, record["step"]


@pytest.mark.parametrize("through", ["mini", "full"])
def test_adaptation_changes_only_the_new_embeddings_and_output_bias(tiny_model_dir, tiny_target_corpus, tmp_path,
                                                                   through):
    out = tmp_path / "adapt"
    run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={tiny_model_dir}", f"data.path={tiny_target_corpus}",
             f"train.out_dir={out}", f"adapt.through={through}", "adapt.language=ny")
    from ds_minimodel.steps.adapt.common import select_body
    from ds_minimodel.training.checkpoint import consolidate

    source, cfg, lineage = read_model_dir(tiny_model_dir)
    body, _, _, k = select_body(source, cfg, lineage, through, "test")
    first = torch.load(out / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt", weights_only=False)
    final, _ = consolidate(out / "checkpoints")
    # What the run trained is all its checkpoints hold (the frozen body is adapt.model_dir's), and
    # the body the last checkpoint was trained over is the source model's, unchanged.
    trained = {"embeddings.word", "lm_head.weight", "lm_head.bias"}
    assert set(first["module"]) == trained and set(final) <= trained
    from ds_minimodel.training.checkpoint import frozen_fingerprint

    model = MLMEncoder(from_dict(ModelConfig, json.loads((out / "checkpoints" / "step_00000004" / "meta.json")
                                                         .read_text())["config"]["model"]))
    model.load_state_dict({**body, "embeddings.word": final["embeddings.word"], "lm_head.weight": final["embeddings.word"],
                           "lm_head.bias": final["lm_head.bias"]}, strict=True)
    set_requires_grad_for_step(model, {"mini": "adapt_minijoint", "full": "adapt_full"}[through])
    meta = json.loads((out / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert meta["frozen"]["sha256"] == frozen_fingerprint(model)
    assert not torch.equal(final["lm_head.bias"], torch.zeros_like(final["lm_head.bias"]))
    assert final["embeddings.word"].shape[0] == 180
    assert first["module"]["embeddings.word"].shape == final["embeddings.word"].shape
    pack = json.loads((out / "pack" / "pack.json").read_text())
    assert pack["method"] == {"mini": "minijoint", "full": "full"}[through]
    assert_ran_as(out, {"mini": "adapt_minijoint", "full": "adapt_full"}[through])
    assert pack["mini_depth"] == k and pack["body_fingerprint"] == lineage["body_fingerprints"][str(k)]


def test_minipost_top_trains_while_bottom_stays_bit_identical(tiny_model_dir, tiny_corpus, tiny_target_corpus,
                                                              tmp_path):
    out = tmp_path / "minipost"
    run_step("minipost", "tests/fixtures/minipost-tiny.yaml", f"minipost.source={tiny_model_dir}", f"data.path={tiny_corpus}",
             f"train.out_dir={out}", "minipost.mini_depth=2", "minipost.top_layers=1")
    source, _, _ = read_model_dir(tiny_model_dir)
    mini, mini_cfg, lineage = read_model_dir(out / "final")
    assert mini_cfg.num_layers == 3 and lineage["kind"] == "minipost" and lineage["mini_depth"] == 2
    for name, tensor in mini.items():
        if name.startswith(("embeddings.", "layers.0.", "layers.1.")):
            assert torch.equal(tensor, source[name]), f"frozen {name} changed"
    assert not torch.equal(mini["layers.2.fc1.weight"], source["layers.2.fc1.weight"])
    assert not torch.equal(mini["lm_head.dense.weight"], source["lm_head.dense.weight"])
    assert torch.equal(mini["lm_head.weight"], source["embeddings.word"])
    assert_ran_as(out, "minipost_top")
    # Adaptation through the MiniPost mini-model runs, and is recorded, as adapt_minipost.
    adapt = tmp_path / "adapt"
    run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={out / 'final'}", f"data.path={tiny_target_corpus}",
             f"train.out_dir={adapt}", "adapt.through=mini", "adapt.language=ny")
    assert json.loads((adapt / "pack" / "pack.json").read_text())["method"] == "minipost"
    assert_ran_as(adapt, "adapt_minipost")


def test_finetune_then_transfer_and_mismatched_pack_refused(tiny_model_dir, tiny_target_corpus, tmp_path, capsys):
    from launchers.evaluate import main as evaluate_main

    ft = tmp_path / "ft"
    run_step("finetune", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={tiny_model_dir}", f"train.out_dir={ft}")
    source, _, _ = read_model_dir(tiny_model_dir)
    tuned = torch.load(ft / "final" / "model.pt", weights_only=True)
    for name in ("embeddings.word", "embeddings.position", "embeddings.layer_norm.weight"):
        assert torch.equal(tuned[f"encoder.{name}"], source[name]), f"{name} changed during fine-tuning"
    assert not torch.equal(tuned["encoder.layers.3.fc1.weight"], source["layers.3.fc1.weight"])

    adapt = tmp_path / "adapt"
    run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={tiny_model_dir}", f"data.path={tiny_target_corpus}",
             f"train.out_dir={adapt}", "adapt.language=ny")
    result = tmp_path / "transfer.json"
    evaluate_main(["--model", str(ft / "final"), "--pack", str(adapt / "pack"), "--out", str(result)])
    scores = json.loads(result.read_text())["classification"]["packs"][str(adapt / "pack")]
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["method"] == "minijoint"
    for key in ("correct", "control_correct"):  # per-example results, in test order, agree with the totals
        assert len(scores[key]) == scores["examples"] and set(scores[key]) <= {"0", "1"}
        assert scores[key].count("1") / scores["examples"] == pytest.approx(scores[key.replace("correct", "accuracy")])
    # ...and with the classification head's own num_correct, batch by batch, on the plugged model
    # (not the toolkit's accuracy function, which transfer itself uses).
    from ds_minimodel.artefacts.langpack import load_pack
    from ds_minimodel.config import FinetuneConfig, from_dict
    from ds_minimodel.steps import transfer
    from ds_minimodel.steps.finetune.classification import load_task
    from ds_minimodel.steps.finetune.common import load_classifier
    from ds_minimodel.tasks.batching import encode_texts, padded_batch
    from ds_minimodel.tokenizers.layout import layout_for

    model, config, lineage = load_classifier(str(ft / "final"))
    info, tensors, tok = load_pack(str(adapt / "pack"))
    test = load_task(from_dict(FinetuneConfig, config["finetune"])).tests["ny"]
    plugged = transfer.plugged_model(model, info, tensors, lineage, str(ft / "final"))
    enc = encode_texts(test, tok, config["task"]["max_len"], layout_for(plugged.encoder.cfg))
    hits = 0
    with torch.no_grad():
        for start in range(0, len(test), 7):
            chunk = range(start, min(start + 7, len(test)))
            out = plugged.eval()(**padded_batch(enc, chunk, tok.pad_id),
                                 labels=torch.tensor([test[i].label for i in chunk]))
            hits += int(out["num_correct"])
    assert scores["accuracy"] == pytest.approx(hits / len(test))
    assert scores["ids"] == [ex.id for ex in test]  # the verse of each per-example result

    # A pack whose body fingerprint belongs to another model: refused, nothing written.
    bad = tmp_path / "bad_pack"
    import shutil

    shutil.copytree(adapt / "pack", bad)
    info = json.loads((bad / "pack.json").read_text())
    info["body_fingerprint"] = "0123456789abcdef"
    (bad / "pack.json").write_text(json.dumps(info))
    capsys.readouterr()
    out = tmp_path / "bad.json"
    expect_rejected(capsys, evaluate_main, ["--model", str(ft / "final"), "--pack", str(bad), "--out", str(out)],
                    "does not fit", "0123456789abcdef", watch=[ft, bad])
    assert not out.exists()
