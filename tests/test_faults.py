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
