"""Adaptation checkpoints hold what the run trains, not the frozen body it trains over.

A multilingual-e5-small adaptation checkpoint was 118 MB, 86 MB of it the frozen body that
adapt.model_dir already holds. Now the body is rebuilt from the model directory on resume, and
meta.json keeps its sha256. What must hold:
- a checkpoint holds exactly the tensors the step's rules train (the reference: a fresh model
  frozen by `set_requires_grad_for_step`), under every engine and ZeRO stage adaptation allows;
- a stopped run resumes to the bit-identical result of an uninterrupted one (the reference);
- a resume over another body, or a checkpoint that lacks a trained tensor, is refused by name;
- a body shared under several names (MultiLanguageMLM's encoders) is left out under all of them.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from ds_minimodel.config import OptimConfig
from ds_minimodel.errors import UserError
from ds_minimodel.training.checkpoint import Checkpointer, consolidate
from ds_minimodel.training.engine import DistInfo
from ds_minimodel.training.torch_engine import TorchEngine
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import expect_rejected

TRAINED = {"embeddings.word", "lm_head.weight", "lm_head.bias"}  # lm_head.weight: the tied word table


def _adapt(rank, model_dir, data, out, engine, ds_json, extra):
    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.steps import adapt
    from ds_minimodel.training import engine as ds

    cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml",
                      [f"adapt.model_dir={model_dir}", f"data.path={data}", f"train.out_dir={out}", "adapt.language=ny",
                       f"train.engine={engine}", "train.steps=6", "train.save_every=3", "train.keep_last=3",
                       *[e for e in extra if e != "--resume"]])
    try:
        adapt.run(cfg, str(REPO / "ds_configs" / ds_json), resume="--resume" in extra)
    finally:
        ds.shutdown()


def adapt(model_dir, data, out, engine, ds_json, *extra):
    run_ranks(lambda r, *a: _adapt(r, *a[:5], list(a[5])), 1, args=(model_dir, data, out, engine, ds_json, extra))


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


@pytest.mark.parametrize("engine, ds_json", [("deepspeed", "z0.json"), ("deepspeed", "z1.json"),
                                             ("deepspeed", "z2.json"), ("torch", "z0.json")])
def test_checkpoints_hold_only_the_trained_tensors_and_resume_exactly(tiny_model_dir, tiny_target_corpus, tmp_path,
                                                                      engine, ds_json):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    adapt(tiny_model_dir, tiny_target_corpus, straight, engine, ds_json, "train.log_every=1")
    adapt(tiny_model_dir, tiny_target_corpus, stopped, engine, ds_json, "train.log_every=1", "train.stop_at_step=3")
    adapt(tiny_model_dir, tiny_target_corpus, stopped, engine, ds_json, "train.log_every=1", "--resume")

    # The resumed run is the uninterrupted one, bit for bit.
    assert losses(stopped) == losses(straight) and len(losses(straight)) == 6
    a, b = (load_file(str(run / "pack" / "embeddings.safetensors")) for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Every file of a checkpoint: the module states hold the trained tensors only, and no frozen
    # parameter's ZeRO-2 fragments ride along.
    ck = straight / "checkpoints" / "step_00000003"
    module = torch.load(ck / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    assert set(module["module"]) == TRAINED
    assert not module.get("frozen_param_fragments") and not module.get("frozen_param_shapes")
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["frozen"]["excluded"] is True and len(meta["frozen"]["sha256"]) == 64
    state, _ = consolidate(straight / "checkpoints", "step_00000003")
    assert set(state) <= TRAINED and {"embeddings.word", "lm_head.bias"} <= set(state)
    # Against the body: a checkpoint is now a small part of the model directory it adapts.
    body_bytes = (tiny_model_dir / "model.pt").stat().st_size
    assert (ck / "mp_rank_00_model_states.pt").stat().st_size < body_bytes


@pytest.fixture
def stopped_run(tiny_model_dir, tiny_target_corpus, tmp_path):
    run = tmp_path / "stopped"
    adapt(tiny_model_dir, tiny_target_corpus, run, "torch", "z0.json", "train.stop_at_step=3")
    return run


def test_export_of_an_adaptation_checkpoint_says_where_the_result_is(stopped_run, tmp_path, capsys):
    from launchers.consolidate import main

    expect_rejected(capsys, main, [str(stopped_run / "checkpoints"), "--out", str(tmp_path / "export")],
                    "holds only what its adapt_minijoint run trained", str(stopped_run / "pack"))
    assert not (tmp_path / "export").exists()


# ---- the Checkpointer itself, on a small module (train.engine=torch, one process) ------------

class Shared(torch.nn.Module):
    """A frozen body reachable under two names (as MultiLanguageMLM's encoders share theirs),
    and one trained tensor per name."""

    def __init__(self):
        super().__init__()
        body = torch.nn.Linear(4, 4)
        self.a, self.b = torch.nn.ModuleDict({"body": body}), torch.nn.ModuleDict({"body": body})
        self.a["head"], self.b["head"] = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        body.requires_grad_(False)

    def forward(self, x):
        return self.a["head"](self.a["body"](x)).sum() + self.b["head"](self.b["body"](x)).sum()


def _engine(model):
    return TorchEngine(model, {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1},
                       OptimConfig(lr=1e-2, warmup_steps=0), total_steps=4)


def _saved(tmp_path, model):
    engine = _engine(model)
    engine.backward(engine(torch.ones(1, 4)))
    engine.step()
    ck = Checkpointer(tmp_path, DistInfo(0, 1, 0), exclude_frozen=True)
    ck.save(engine, 1, {"config": {"model": {"v": 1}}})
    return ck


def test_a_shared_frozen_body_is_left_out_under_every_name(tmp_path):
    torch.manual_seed(0)
    model = Shared()
    _saved(tmp_path, model)
    module = torch.load(tmp_path / "checkpoints" / "step_00000001" / "mp_rank_00_model_states.pt",
                        weights_only=False)["module"]
    assert set(module) == {"a.head.weight", "a.head.bias", "b.head.weight", "b.head.bias"}
    # Outside the save the model's state dict is whole again.
    assert {"a.body.weight", "b.body.weight"} <= set(model.state_dict())

    # A resume onto the same body restores the trained tensors exactly.
    torch.manual_seed(0)
    fresh = Shared()
    for p in fresh.parameters():
        if p.requires_grad:
            p.data.zero_()
    Checkpointer(tmp_path, DistInfo(0, 1, 0), exclude_frozen=True).load(_engine(fresh), {"v": 1})
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name


def test_a_resume_over_another_body_is_refused(tmp_path):
    torch.manual_seed(0)
    _saved(tmp_path, Shared())
    torch.manual_seed(0)
    other = Shared()
    with torch.no_grad():
        other.a["body"].weight[0, 0] += 1e-3  # one number of the frozen body differs
    with pytest.raises(UserError, match="trained over other frozen parameters than this run's"):
        Checkpointer(tmp_path, DistInfo(0, 1, 0), exclude_frozen=True).load(_engine(other), {"v": 1})


def test_a_checkpoint_without_a_trained_tensor_is_refused(tmp_path):
    torch.manual_seed(0)
    _saved(tmp_path, Shared())
    torch.manual_seed(0)
    bigger = Shared()
    bigger.c = torch.nn.Linear(4, 1)  # trained here, absent from the checkpoint
    with pytest.raises(UserError, match=r"do not fit this model \(missing: \['c.bias', 'c.weight'\]"):
        Checkpointer(tmp_path, DistInfo(0, 1, 0), exclude_frozen=True).load(_engine(bigger), {"v": 1})
