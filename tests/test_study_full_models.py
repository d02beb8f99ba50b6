"""The study's full-model comparison (full_models.py): what the mid head costs the full model, from
each fine-tuned model's pretraining run and its English results, paired by example id; checked
against numpy on made-up runs."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ds_minimodel.errors import UserError
from ds_minimodel.study.full_models import compare_full_models, markdown


def _model(root, name, mini_depth, flops, losses, ids, correct):
    """A pretraining run (metrics.jsonl, final/config.json) and a fine-tuned model dir over it; the
    scorer stand-in carries what AccuracyScorer computes for its English test set."""
    run = root / name / "pretrain"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text(json.dumps(
        {"model": {"mini_depth": mini_depth}, "train": {"out_dir": str(run)}}))
    rows = [{"kind": "train", "step": 10 * (i + 1), "flops": flops * (i + 1) // len(losses)} for i in range(len(losses))]
    rows += [{"kind": "eval", "step": 10 * (i + 1), "valid_final_loss": v} for i, v in enumerate(losses)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fine = root / name / "finetune" / "final"
    fine.mkdir(parents=True)
    # As finetune writes it: the whole FinetuneConfig under "finetune" (its own "finetune" section inside).
    (fine / "config.json").write_text(json.dumps({"finetune": {"finetune": {"model_dir": str(run / "final")},
                                                               "train": {}}}))
    correct = np.asarray(correct, dtype=bool)
    return SimpleNamespace(model_dir=fine, source_ids=list(ids), source_correct=correct,
                           source_accuracy=float(correct.mean()))


def test_mid_head_model_paired_with_the_regular_one_by_example_id(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(200)]
    a = rng.random(200) < 0.6
    b = rng.random(200) < 0.5
    # The MiniJoint model's test set in another order and missing 20 examples: pairing goes by id.
    order = rng.permutation(200)[:180]
    regular = _model(tmp_path, "regular", None, 1000, [6.0, 5.5], ids, a)
    minijoint = _model(tmp_path, "minijoint", 2, 1200, [6.1, 5.7], [ids[i] for i in order], b[order])

    result = compare_full_models([regular, minijoint])

    assert result["reference"] == str(regular.model_dir)
    reg, mj = result["models"]
    assert (reg["mini_depth"], mj["mini_depth"]) == (None, 2)
    assert (reg["pretraining_flops"], mj["pretraining_flops"]) == (1000, 1200)
    assert (reg["pretraining_steps"], reg["valid_final_loss"]) == (20, 5.5)
    assert mj["valid_final_loss_vs_reference"] == pytest.approx(0.2)
    assert mj["source_accuracy"] == pytest.approx(b[order].mean())
    kept = np.sort(order)  # the ids both have, in the regular model's order
    d = b[kept].astype(float) - a[kept].astype(float)
    vs = mj["source_vs_reference"]
    assert vs["examples"] == 180
    assert vs["difference"] == pytest.approx(d.mean())
    assert vs["standard_error"] == pytest.approx(d.std(ddof=1) / np.sqrt(180))
    assert "source_vs_reference" not in reg
    json.dumps(result)  # study.json carries it: no numpy or per-example leftovers
    assert not any(k.startswith("_") for r in result["models"] for k in r)

    text = "\n".join(markdown(result))
    assert "What the mid head costs the full model" in text
    assert f"{100 * d.mean():+.1f} ± {100 * d.std(ddof=1) / np.sqrt(180):.1f}" in text


def test_one_model_has_no_comparison_and_a_missing_source_is_named(tmp_path):
    only = _model(tmp_path, "regular", None, 1000, [5.0], ["a", "b"], [True, False])
    assert compare_full_models([only]) is None
    assert markdown(None) == []
    other = _model(tmp_path, "minijoint", 2, 1000, [5.0], ["a", "b"], [True, True])
    (tmp_path / "minijoint" / "pretrain" / "final" / "config.json").unlink()
    with pytest.raises(UserError, match="fine-tuned from .*not a model directory"):
        compare_full_models([only, other])


def test_the_paired_difference_says_it_covers_test_example_sampling_of_one_model_each(tmp_path):
    """The ± of the mid head's cost is the paired standard error over test examples, for one
    fine-tuned model each: study.md must say so, not present it as the mid head's cost in general."""
    ids = [f"v{i}" for i in range(50)]
    rng = np.random.default_rng(1)
    regular = _model(tmp_path, "regular", None, 1000, [6.5], ids, rng.random(50) < 0.6)
    joint = _model(tmp_path, "joint", 2, 1100, [6.6], ids, rng.random(50) < 0.5)
    text = "\n".join(markdown(compare_full_models([regular, joint])))
    assert "test-example sampling" in text and "one model each" in text, text
