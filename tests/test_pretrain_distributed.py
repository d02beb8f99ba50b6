"""2-rank DeepSpeed pretraining against a single-process plain-PyTorch reference.

Ranks are forked inside pytest (tests/distributed.py) and run the real `pretrain.run` path. The
reference is written here from torch alone: torch.optim.AdamW with the decay and no-decay groups
named here, the learning rate set at each step by the schedule written here, requires_grad set
here, and batches read straight from the shard file with numpy. Only the model (MLMEncoder, with
its own parity tests against Hugging Face) is the library's.

Both sides train on the same masks without sharing masking code: the ranks' loader draws its
masks with `content_masks` below instead of the library's mask_tokens (tested on its own in
test_data.py), so the rows the loader builds and hands each rank are still its own, and the
reference masks the rows it reads itself with the same rule.
"""

import dataclasses
import fnmatch
import json
import math

import numpy as np
import pytest
import torch

from ds_minimodel.config import OptimConfig, PretrainConfig, load_config
from ds_minimodel.model import MLMEncoder
from ds_minimodel.training.metrics import read_metrics
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import assert_close_fp32

WORLD = 2


def tiny_config(data, out_dir, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                       [f"data.path={data}", f"train.out_dir={out_dir}", *extra])


def content_masks(input_ids, generator_seeds, mask_prob, mask_id, vocab_size, special_ids):
    """mask_tokens' signature, the test's rule: a position is masked where a hash of its token and
    column falls in the lowest 15%, never on a special token, at least one per row; every
    selected token becomes <mask>. A function of the row's content alone, so the ranks and the
    reference mask the same row alike whoever reads it, seeds and probability unused."""
    ids = input_ids.to(torch.long)
    columns = torch.arange(ids.shape[1])
    special = torch.tensor(sorted(int(i) for i in special_ids))
    maskable = ~torch.isin(ids, special)
    selected = maskable & ((ids * 2654435761 + columns * 40503) % 100 < 15)
    for row in range(ids.shape[0]):
        if not selected[row].any():
            selected[row, maskable[row].nonzero()[0]] = True
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    return torch.where(selected, torch.full_like(ids, mask_id), ids), labels


def _pretrain_rank(rank, overrides, ds_config, resume, own_masks):
    import ds_minimodel.data.loader
    from ds_minimodel.steps import pretrain

    if own_masks:  # this forked rank only
        ds_minimodel.data.loader.mask_tokens = content_masks
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml", overrides)
    pretrain.run(cfg, str(REPO / ds_config), resume=resume)


def pretrain_2rank(data, out_dir, ds_config, *extra, resume=False, own_masks=False):
    overrides = [f"data.path={data}", f"train.out_dir={out_dir}", *extra]
    run_ranks(_pretrain_rank, WORLD, args=(overrides, ds_config, resume, own_masks))


def lr_at(optim: OptimConfig, total_steps: int, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) as the config says: a linear warm-up
    whose step s runs at (s + 1) / warmup_steps of optim.lr, then a linear or cosine decay from
    optim.lr to optim.lr * min_lr_ratio at total_steps (constant: none)."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    done = (step - optim.warmup_steps) / (total_steps - optim.warmup_steps)
    left = 1 - done if optim.schedule == "linear" else (1 + math.cos(math.pi * done)) / 2
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * left)


def test_the_references_schedule_by_hand():
    """configs/pretrain-tiny.yaml (lr 1e-3, 2 warm-up steps, 6 steps, linear to 0), and cosine to 0.1."""
    tiny = OptimConfig(lr=1e-3, warmup_steps=2)
    assert [lr_at(tiny, 6, s) for s in range(6)] == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cosine = OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    # cos(pi t) at t = 0, 1/4, 1/2, 3/4: 1, 0.7071, 0, -0.7071
    assert [lr_at(cosine, 6, s) for s in range(2, 6)] == pytest.approx(
        [1e-3, 1e-4 + 9e-4 * 0.8535534, 1e-4 + 9e-4 * 0.5, 1e-4 + 9e-4 * 0.1464466])


def no_decay(name: str) -> bool:
    """RoBERTa's rule: no weight decay on biases and layer norms (MLMEncoder's names: *.bias,
    embeddings.layer_norm.*, layers.N.attention_norm.*, layers.N.mlp_norm.*, *_head.layer_norm.*)."""
    return name.endswith(".bias") or name.split(".")[-2].endswith("norm")


def read_batches(cfg: PretrainConfig) -> list[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """[step][micro-step][rank] (input_ids, labels), straight from the train split's file: sample i
    is tokens i*(T-2) .. (i+1)*(T-2) between <s> and </s>; an epoch visits the samples in numpy's
    PCG64 permutation seeded by (train.seed, epoch); each step takes the next micro x accum x WORLD
    of them, micro-step m of rank r the micro-batch at (m * WORLD + r) * micro (data/loader.py's
    documented order); the remainder of an epoch is dropped."""
    data = cfg.data.path
    index = json.loads((REPO / data / "index.json").read_text())
    split = index["splits"]["train"]
    tokens = np.fromfile(REPO / data / split["file"], dtype=split["dtype"]).astype(np.int64)
    special = index["special"]
    body = cfg.data.seq_len - 2
    samples = len(tokens) // body
    mb, ga = cfg.train.micro_batch_size, cfg.train.grad_accum
    epoch, position, steps = 0, 0, []
    for _ in range(cfg.train.steps):
        if position + mb * ga * WORLD > samples:
            epoch, position = epoch + 1, 0
        order = np.random.Generator(np.random.PCG64([cfg.train.seed, epoch])).permutation(samples)
        step = []
        for m in range(ga):
            ranks = []
            for r in range(WORLD):
                start = position + (m * WORLD + r) * mb
                rows = np.stack([np.concatenate([[special["bos"]], tokens[i * body:(i + 1) * body], [special["eos"]]])
                                 for i in order[start:start + mb]])
                ranks.append(content_masks(torch.from_numpy(rows), None, None, special["mask"], None,
                                           special.values()))
            step.append(ranks)
        steps.append(step)
        position += mb * ga * WORLD
    return steps


def reference_run(cfg: PretrainConfig):
    """Plain PyTorch: per-rank chunk losses averaged over ranks and micro-batches, AdamW, clip."""
    assert cfg.model.mini_depth is not None, "the reference trains MiniJoint (route joint): every parameter"
    vocab = json.loads((REPO / cfg.data.path / "index.json").read_text())["vocab_size"]
    torch.manual_seed(cfg.train.seed)
    model = MLMEncoder(dataclasses.replace(cfg.model, vocab_size=vocab))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(not any(fnmatch.fnmatchcase(name, pattern) for pattern in cfg.train.freeze))
        if p.requires_grad:
            trained.append((name, p))
    opt = torch.optim.AdamW([{"params": [p for n, p in trained if not no_decay(n)],
                              "weight_decay": cfg.optim.weight_decay},
                             {"params": [p for n, p in trained if no_decay(n)], "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    ga = cfg.train.grad_accum
    losses = []
    for step, micro_steps in enumerate(read_batches(cfg)):
        opt.zero_grad()
        total = 0.0
        for ranks in micro_steps:
            for input_ids, labels in ranks:
                out = model(input_ids, labels=labels, route="joint")
                (out["loss"] / (WORLD * ga)).backward()
                total += out["loss"].item() / (WORLD * ga)
        torch.nn.utils.clip_grad_norm_([p for _, p in trained], cfg.optim.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg.optim, cfg.train.steps, step)
        opt.step()
        losses.append(total)
    return initial, model.state_dict(), losses


def final_weights(run_dir):
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)


def training_bound(cfg: PretrainConfig) -> dict:
    """fp32 bound of a training run against the reference (tests/helpers.py): a step is a forward
    through embeddings, the layers and the head and a backward through them again; its longest
    sums are the weight gradients over every token of the global batch (the vocabulary's softmax
    and the MLP are shorter)."""
    m = cfg.model
    vocab = json.loads((REPO / cfg.data.path / "index.json").read_text())["vocab_size"]
    tokens = cfg.train.micro_batch_size * cfg.train.grad_accum * WORLD * cfg.data.seq_len
    return dict(depth=2 * (m.num_layers + 2), reduction=max(tokens, m.intermediate_size, vocab))


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


# Each stage's run also takes one of the schedules the config offers, so that every shape of the
# schedule is compared with the reference's at no extra run: configs/pretrain-tiny.yaml's linear decay to
# 0, cosine to 0.1, linear to 0.2 (2 warm-up steps of 6 in each).
SCHEDULES = {"ds_configs/z0.json": (), "ds_configs/z1.json": ("optim.schedule=cosine", "optim.min_lr_ratio=0.1"),
             "ds_configs/z2.json": ("optim.min_lr_ratio=0.2",), "ds_configs/z3.json": ("optim.schedule=cosine",),
             "ds_configs/z3_offload.json": ()}


@pytest.mark.parametrize("ds_config", list(SCHEDULES))
def test_zero_stages_match_single_process_reference(tiny_corpus, tmp_path, ds_config):
    run_dir = tmp_path / "run"
    pretrain_2rank(tiny_corpus, run_dir, ds_config, DECAY, *SCHEDULES[ds_config], own_masks=True)
    cfg = tiny_config(tiny_corpus, run_dir, DECAY, *SCHEDULES[ds_config])
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
    pretrain_2rank(tiny_corpus, run_dir, "ds_configs/z3.json", f"train.freeze={frozen}", own_masks=True)
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
