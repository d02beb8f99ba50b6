"""Numerical faults stop a run cleanly and keep the last good checkpoint as `latest`."""

import pytest

from tests.conftest import REPO
from tests.distributed import run_ranks


def _pretrain_with_nan_at(rank, data, out, bad_call):
    import torch

    from ds_minimodel import pretrain
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.model import MLMEncoder

    forward, calls = MLMEncoder.forward, [0]

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls[0] += 1
            if calls[0] >= bad_call:
                out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    MLMEncoder.forward = poisoned
    cfg = load_config(PretrainConfig, REPO / "configs/tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.save_every=2", "train.grad_accum=1"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AssertionError) as exc:
        run_ranks(_pretrain_with_nan_at, 1, args=(tiny_corpus, out, 4))
    message = str(exc.value)
    assert "NonFiniteLoss" in message and "non-finite loss at step 4" in message
    assert "last good checkpoint: step_00000002" in message
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (out / "checkpoints" / "step_00000004").exists()
    assert not (out / "final").exists()


def _pretrain_rank(rank, data, out, resume, kill_rank_at_call):
    import os
    import signal

    from ds_minimodel import pretrain
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.model import MLMEncoder

    if kill_rank_at_call and rank == 1:
        forward, calls = MLMEncoder.forward, [0]

        def dies(self, *args, **kwargs):
            if self.training:
                calls[0] += 1
                if calls[0] == kill_rank_at_call:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no goodbye: a crashed node
            return forward(self, *args, **kwargs)

        MLMEncoder.forward = dies
    cfg = load_config(PretrainConfig, REPO / "configs/tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.save_every=2", "train.grad_accum=1",
                       "model.hidden_dropout=0.1", "train.collective_timeout_s=30"])
    pretrain.run(cfg, str(REPO / "ds_configs/z3.json"), resume=resume)


def test_sigkill_of_one_rank_fails_fast_and_resume_matches_uninterrupted(tiny_corpus, tmp_path):
    import time

    import torch

    from ds_minimodel.metrics import read_metrics

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_ranks(_pretrain_rank, 2, args=(tiny_corpus, straight, False, 0))
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as exc:
        run_ranks(_pretrain_rank, 2, args=(tiny_corpus, crashed, False, 4), timeout=120, kill_on_error=False)
    assert time.monotonic() - t0 < 100, "the surviving rank did not fail within a bounded time"
    report = str(exc.value)
    assert "rank 1 failed:\ndied without reporting (exit code -9)" in report
    assert "rank 0 failed:" in report and "timed out" not in report  # rank 0 raised by itself
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    run_ranks(_pretrain_rank, 2, args=(tiny_corpus, crashed, True, 0))
    a = torch.load(straight / "final" / "model.pt", weights_only=True)
    b = torch.load(crashed / "final" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"

    def log(run_dir):
        return [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]

    assert log(crashed) == log(straight)
