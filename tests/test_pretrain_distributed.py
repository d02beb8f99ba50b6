"""2-rank DeepSpeed pretraining against a single-process plain-PyTorch reference.

Ranks are forked inside pytest (tests/distributed.py) and run the real `pretrain.run` path;
the reference is an independent plain-PyTorch loop over the same global batches.
"""

import json

import pytest
import torch

from ds_minimodel.config import PretrainConfig, load_config
from ds_minimodel.data.loader import MLMLoader
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.pretrain import resolve_vocab
from ds_minimodel.steps.rules import set_requires_grad_for_step
from ds_minimodel.training.engine import lr_lambda, optimizer_groups
from ds_minimodel.training.metrics import read_metrics
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import assert_close_fp32

WORLD = 2


def tiny_config(data, out_dir, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/tiny.yaml",
                       [f"data.path={data}", f"train.out_dir={out_dir}", *extra])


def _pretrain_rank(rank, overrides, ds_config, resume):
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/tiny.yaml", overrides)
    pretrain.run(cfg, str(REPO / ds_config), resume=resume)


def pretrain_2rank(data, out_dir, ds_config, *extra, resume=False):
    overrides = [f"data.path={data}", f"train.out_dir={out_dir}", *extra]
    run_ranks(_pretrain_rank, WORLD, args=(overrides, ds_config, resume))


def reference_run(cfg: PretrainConfig):
    """Plain PyTorch: per-rank chunk losses averaged over ranks and micro-batches, AdamW, clip."""
    shards = TokenShards.open(cfg.data.path)
    mcfg = resolve_vocab(cfg.model, shards)
    torch.manual_seed(cfg.train.seed)
    model = MLMEncoder(mcfg)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    set_requires_grad_for_step(model, "pretrain_joint" if mcfg.mid_head_layer else "pretrain", freeze=cfg.train.freeze)
    opt = torch.optim.AdamW(optimizer_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.steps))
    mb, ga = cfg.train.micro_batch_size, cfg.train.grad_accum
    loader = MLMLoader(shards, "train", cfg.data.seq_len, mb * WORLD, ga, 0, 1, cfg.train.seed, cfg.data.mask_prob)
    losses = []
    for _ in range(cfg.train.steps):
        opt.zero_grad()
        total = 0.0
        for batch in loader.next_step():
            for r in range(WORLD):  # rank r's rows of this micro-step
                rows = slice(r * mb, (r + 1) * mb)
                out = model(batch["input_ids"][rows], labels=batch["labels"][rows], route="joint")
                (out["loss"] / (WORLD * ga)).backward()
                total += out["loss"].item() / (WORLD * ga)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(total)
    return initial, model.state_dict(), losses


def final_weights(run_dir):
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)


def training_bound(cfg: PretrainConfig) -> dict:
    """fp32 bound of a training run against the reference (tests/helpers.py): a step is a forward
    through embeddings, the layers and the head and a backward through them again; its longest
    sums are the weight gradients over every token of the global batch (the vocabulary's softmax
    and the MLP are shorter)."""
    m = resolve_vocab(cfg.model, TokenShards.open(cfg.data.path))
    tokens = cfg.train.micro_batch_size * cfg.train.grad_accum * WORLD * cfg.data.seq_len
    return dict(depth=2 * (m.num_layers + 2), reduction=max(tokens, m.intermediate_size, m.vocab_size))


def assert_same_training(got: dict, ref: dict, initial: dict, bound: dict, what: str) -> None:
    """Trained weights against the reference's, by what training changed: both runs start from
    the same initial weights bit for bit, and the rounding differences live in Adam's updates
    (lr times a normalised step, whatever the weight's size), so the error is relative to the
    change, not to the weight; one step's relative error, as Adam adds the steps up (helpers.py).
    (Each run also rounds the weights themselves, 1.2e-7 for a layer norm's weight near 1: far
    below the bound.)"""
    for name, ref_value in ref.items():
        assert name in got, f"consolidated checkpoint lacks {name}"
        assert_close_fp32(got[name] - initial[name], ref_value - initial[name], **bound,
                          what=f"{what}: change of {name}")


# Ten times the default weight decay: its effect (lr * 0.1 * |w| a step, ~5e-6) then stands well
# above the bound (~2e-6), so a ZeRO stage that drops or misapplies it fails (ZeRO-3 once did:
# its 1-D parameter shards all fell into the no-decay group).
DECAY = "optim.weight_decay=0.1"


@pytest.mark.parametrize("ds_config", ["ds_configs/z0.json", "ds_configs/z1.json", "ds_configs/z2.json",
                                       "ds_configs/z3.json", "ds_configs/z3_offload.json"])
def test_zero_stages_match_single_process_reference(tiny_corpus, tmp_path, ds_config):
    run_dir = tmp_path / "run"
    pretrain_2rank(tiny_corpus, run_dir, ds_config, DECAY)
    cfg = tiny_config(tiny_corpus, run_dir, DECAY)
    initial, ref_state, ref_losses = reference_run(cfg)
    bound = training_bound(cfg)
    assert_same_training(final_weights(run_dir), ref_state, initial, bound, ds_config)
    # A step's loss: its forward on weights that carry the earlier updates' (relative) errors.
    assert_close_fp32([r["loss"] for r in read_metrics(run_dir, "train")], ref_losses, **bound, what="losses")
    # The HF export exists and loads.
    assert (run_dir / "final" / "hf" / "config.json").is_file()


def test_minijoint_loss_is_weighted_sum_of_heads(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    pretrain_2rank(tiny_corpus, run_dir, "ds_configs/z2.json", "model.mid_head_weight=0.3")
    # Each logged value is a mean over grad_accum x WORLD micro-batch losses: one stage of 4-term
    # sums (tests/helpers.py).
    for r in read_metrics(run_dir, "train"):
        assert_close_fp32(r["loss"], r["final_loss"] + 0.3 * r["mid_loss"], depth=1, reduction=2 * WORLD,
                          what=f"loss at step {r['step']}")
    evals = read_metrics(run_dir, "eval")
    assert {"valid_final_loss", "valid_mid_loss"} <= set(evals[-1])


def test_frozen_parameters_stay_bit_identical_under_zero3(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    frozen = '["embeddings.*","layers.0.*"]'
    pretrain_2rank(tiny_corpus, run_dir, "ds_configs/z3.json", f"train.freeze={frozen}")
    cfg = tiny_config(tiny_corpus, run_dir, f"train.freeze={frozen}")
    initial, ref_state, _ = reference_run(cfg)
    got = final_weights(run_dir)
    frozen_names = [n for n in initial if n.startswith(("embeddings.", "layers.0.")) or n.endswith(".weight")
                    and n in ("lm_head.weight", "mid_head.weight")]
    for name in frozen_names:
        assert torch.equal(got[name], initial[name]), f"frozen {name} changed"
    assert not torch.equal(got["layers.1.fc1.weight"], initial["layers.1.fc1.weight"])
    trained = "layers.1.fc1.weight"
    assert_same_training(got, {trained: ref_state[trained]}, initial, training_bound(cfg), "z3 frozen")


def test_stop_and_resume_is_bit_identical(tiny_corpus, tmp_path):
    dropout = ["model.hidden_dropout=0.1", "model.attention_dropout=0.1", "train.save_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain_2rank(tiny_corpus, straight, "ds_configs/z3.json", *dropout)
    pretrain_2rank(tiny_corpus, resumed, "ds_configs/z3.json", *dropout, "train.stop_at_step=3")
    assert not (resumed / "final").exists()
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    pretrain_2rank(tiny_corpus, resumed, "ds_configs/z3.json", *dropout, resume=True)

    def train_log(run_dir):
        return [(r["step"], r["loss"], r["final_loss"], r["mid_loss"]) for r in read_metrics(run_dir, "train")]

    assert train_log(resumed) == train_log(straight)
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    meta = json.loads((resumed / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["data"]["position"] > 0 and meta["loop"]["step"] == 6
