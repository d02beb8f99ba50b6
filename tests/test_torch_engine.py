"""train.engine=torch: adaptation without DeepSpeed computes what DeepSpeed ZeRO-0 computes.

The reference is the DeepSpeed engine on the same config, seed and ranks: the losses and the
trained embeddings must agree, on one rank and on two (gradients averaged by all_reduce), and a
stopped plain-PyTorch run resumes to the bit-identical result of an uninterrupted one.
"""

import json

import pytest
import torch

from ds_minimodel.training.checkpoint import consolidate
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import assert_close_fp32


def _adapt(rank, model_dir, data, out, engine, extra):
    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.steps import adapt
    from ds_minimodel.training import engine as ds

    cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml",
                      [f"adapt.model_dir={model_dir}", f"data.path={data}", f"train.out_dir={out}", "adapt.language=ny",
                       f"train.engine={engine}", "train.steps=6", "train.save_every=3", "optim.grad_clip=1.0",
                       *[e for e in extra if e != "--resume"]])
    try:
        adapt.run(cfg, str(REPO / "ds_configs/z0.json"), resume="--resume" in extra)
    finally:
        ds.shutdown()


def run(world, model_dir, data, out, engine, *extra):
    run_ranks(lambda r, *a: _adapt(r, *a[:4], list(a[4])), world, args=(model_dir, data, out, engine, extra))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    return consolidate(out / "checkpoints")[0], losses


# tests/fixtures/adapt-tiny.yaml trains without weight decay; here the word table decays (its bias does
# not), so each engine's own handling of decay is compared too. Its effect, lr * 0.1 * |w| a step
# (5e-4 of the largest weights at the peak lr, 1e-4 of a 0.05 weight over the 6 steps), stands
# well above the bound below (1.3e-4 relative to the largest weight, ~1e-5 on one rank).
DECAY = "optim.weight_decay=0.1"


@pytest.mark.parametrize("world", [1, 2])
def test_torch_engine_matches_deepspeed_zero0(tiny_model_dir, tiny_target_corpus, tmp_path, world):
    ref, ref_losses = run(world, tiny_model_dir, tiny_target_corpus, tmp_path / "ds", "deepspeed", "train.log_every=1",
                          DECAY)
    got, losses = run(world, tiny_model_dir, tiny_target_corpus, tmp_path / "torch", "torch", "train.log_every=1",
                      DECAY)
    assert len(losses) == len(ref_losses) == 6
    # fp32 bound (tests/helpers.py): a step is a forward through the mini-model (embeddings,
    # layer 1, its head) and a backward through it; the longest sum is the word-table gradient
    # over the step's tokens (micro-batch 4 x 32 per rank). Adam adds up updates of that relative
    # error: compared at the size of the trained tensors (max |w|: their initial values are not at
    # hand here, and it is at least what 6 steps of lr 5e-3 can move them, 0.03).
    bound = dict(depth=2 * (1 + 2), reduction=4 * 32 * world)
    assert_close_fp32(losses, ref_losses, **bound, what="losses")
    assert set(got) == set(ref)
    trained = {"embeddings.word", "lm_head.weight", "lm_head.bias"}
    for name in ref:
        if name in trained:
            assert_close_fp32(got[name], ref[name], **bound, what=name)
        else:  # frozen: never written by either engine
            assert torch.equal(got[name], ref[name]), name
    # Something trained: the word table moved from where both runs started.
    first = torch.load(tmp_path / "torch" / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt",
                       weights_only=False)["module"]
    assert not torch.equal(first["embeddings.word"], got["embeddings.word"])


def test_torch_engine_resume_is_bit_identical(tiny_model_dir, tiny_target_corpus, tmp_path):
    whole, whole_losses = run(1, tiny_model_dir, tiny_target_corpus, tmp_path / "a", "torch", "train.log_every=1")
    run(1, tiny_model_dir, tiny_target_corpus, tmp_path / "b", "torch", "train.log_every=1", "train.stop_at_step=3")
    resumed, losses = run(1, tiny_model_dir, tiny_target_corpus, tmp_path / "b", "torch", "train.log_every=1",
                          "--resume")
    assert losses == whole_losses
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name


def test_torch_engine_refuses_zero_and_bf16(tiny_model_dir, tiny_target_corpus, tmp_path):
    from ds_minimodel.config import AdaptConfig, ConfigError, load_config
    from ds_minimodel.errors import UserError
    from ds_minimodel.steps import adapt

    with pytest.raises(ConfigError, match="fp32 only"):
        load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml", ["train.engine=torch", "train.dtype=bf16"])
    with pytest.raises(ConfigError, match="train.engine"):
        load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml", ["train.engine=jax"])
    cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml",
                      [f"adapt.model_dir={tiny_model_dir}", f"data.path={tiny_target_corpus}",
                       f"train.out_dir={tmp_path / 'x'}", "train.engine=torch"])
    with pytest.raises(UserError, match="no ZeRO"):
        adapt.run(cfg, str(REPO / "ds_configs/z2.json"))
    assert not (tmp_path / "x").exists()
