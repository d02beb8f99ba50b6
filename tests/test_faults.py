"""Faults stop a run cleanly and lose nothing.

A NaN loss stops the run naming the step. A rank SIGKILLed in the middle of a step or in the
middle of writing a checkpoint makes its peer fail within a bounded time; `latest` then names a
complete checkpoint, a partial directory is never taken for one, and `--resume` ends with the
weights and loss log of an uninterrupted run, bit for bit (fp32, CPU). The same for adaptation.

Faults strike at exact points through DSM_FAULT (ds_minimodel/training/faults.py), set inside the forked
ranks only. Each crash test records, for bench/faults.py (`make faults`):
  steps_lost   checkpointed steps the resume did not continue from: the newest complete
               checkpoint on disk after the crash minus the step the resume started at (0 unless
               a finished checkpoint was ignored), plus any step short of train.steps at the end;
  steps_rerun  steps done after that checkpoint and before the crash, which had to run again
               (the price of the checkpoint interval, not a loss).
Tests marked `faults` are slower variants that only `make faults` runs.
"""

import os
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import (
    assert_same_tensors,
    crash_then_resume,
    failing,
    loss_log,
    pretrain_with_nan_at,
)

# ---- what the tests measure, read from disk independently of ds_minimodel.training.checkpoint


# ---- numerical faults -----------------------------------------------------------------------


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AssertionError) as exc:
        run_ranks(pretrain_with_nan_at, 1, args=(tiny_corpus, out, 4))
    message = str(exc.value)
    assert "NonFiniteLoss" in message and "non-finite loss at step 4" in message
    assert "last good checkpoint: step_00000002" in message
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (out / "checkpoints" / "step_00000004").exists()
    assert not (out / "final").exists()


# ---- crashes of 2-rank ZeRO-3 pretraining ---------------------------------------------------

def _pretrain_rank(rank, data, out, resume, kill_rank_at_call=0, fault=None):
    import os
    import signal

    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.model import MLMEncoder
    from ds_minimodel.steps import pretrain

    if fault:
        os.environ["DSM_FAULT"] = fault  # this forked rank only
    if kill_rank_at_call and rank == 1:
        forward, calls = MLMEncoder.forward, [0]

        def dies(self, *args, **kwargs):
            if self.training:
                calls[0] += 1
                if calls[0] == kill_rank_at_call:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no goodbye: a crashed node
            return forward(self, *args, **kwargs)

        MLMEncoder.forward = dies
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.save_every=2", "train.grad_accum=1",
                       "model.hidden_dropout=0.1", "train.collective_timeout_s=30"])
    pretrain.run(cfg, str(REPO / "ds_configs/z3.json"), resume=resume)


@pytest.fixture(scope="module")
def straight_z3(tiny_corpus, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank ZeRO-3 run every crash is compared with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run_ranks(_pretrain_rank, 2, args=(tiny_corpus, out, False))
    return out


def assert_same_as_straight(run_dir: Path, straight: Path) -> None:
    assert_same_tensors(torch.load(straight / "final" / "model.pt", weights_only=True),
                        torch.load(run_dir / "final" / "model.pt", weights_only=True), "weights")
    assert loss_log(run_dir) == loss_log(straight)


@pytest.mark.crash_resume
def test_sigkill_of_one_rank_fails_fast_and_resume_matches_uninterrupted(tiny_corpus, tmp_path, straight_z3,
                                                                         record_property):
    crashed = tmp_path / "crashed"
    t0 = time.monotonic()

    def crash():
        return failing(_pretrain_rank, 2, args=(tiny_corpus, crashed, False, 4), timeout=120, kill_on_error=False)

    def resume():
        assert time.monotonic() - t0 < 100, "the surviving rank did not fail within a bounded time"
        assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000002"
        run_ranks(_pretrain_rank, 2, args=(tiny_corpus, crashed, True))

    report = crash_then_resume(record_property, crashed, crash, resume, steps=6)
    assert "rank 1 failed:\ndied without reporting (exit code -9)" in report
    assert "rank 0 failed:" in report and "timed out" not in report  # rank 0 raised by itself
    assert_same_as_straight(crashed, straight_z3)


@pytest.mark.parametrize("point, rank", [
    # rank 1 dies after writing its shards, before meta.json: step 4 is a partial directory
    pytest.param("save_shards", 1, id="after-shards"),
    # rank 0 dies after meta.json, before moving `latest`: step 4 is complete, `latest` is stale
    pytest.param("save_meta", 0, id="after-meta", marks=pytest.mark.faults),
])
@pytest.mark.crash_resume
def test_kill_during_save_checkpoint(tiny_corpus, tmp_path, straight_z3, record_property, point, rank):
    from ds_minimodel.training.checkpoint import Checkpointer
    from ds_minimodel.training.engine import DistInfo

    crashed = tmp_path / "crashed"
    t0 = time.monotonic()

    def crash():
        return failing(_pretrain_rank, 2, args=(tiny_corpus, crashed, False, 0, f"kill:{point}:4:{rank}"),
                       timeout=120, kill_on_error=False)

    def resume():
        assert time.monotonic() - t0 < 100, "the surviving rank did not fail within a bounded time"
        ck = crashed / "checkpoints"
        assert (ck / "step_00000004").is_dir(), "the fault did not strike inside the save of step 4"
        if point == "save_shards":
            assert not (ck / "step_00000004" / "meta.json").exists()
            assert (ck / "latest").read_text().strip() == "step_00000002"
            assert Checkpointer(crashed, DistInfo(0, 2, 0)).latest_tag() == "step_00000002"
        else:
            assert (ck / "latest").read_text().strip() == "step_00000002"  # the pointer lags...
            assert Checkpointer(crashed, DistInfo(0, 2, 0)).latest_tag() == "step_00000004"  # ...not the resume
        run_ranks(_pretrain_rank, 2, args=(tiny_corpus, crashed, True))

    report = crash_then_resume(record_property, crashed, crash, resume, steps=6)
    assert f"rank {rank} failed:\ndied without reporting (exit code -9)" in report
    assert f"rank {1 - rank} failed:" in report and "timed out" not in report
    assert_same_as_straight(crashed, straight_z3)
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert not (crashed / "checkpoints" / "step_00000002").exists(), "keep_last=2 pruning"


# ---- crashes of adaptation (step 2) ---------------------------------------------------------

def _adapt_rank(rank, model_dir, data, out, resume, fault=None):
    import os

    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.steps import adapt

    if fault:
        os.environ["DSM_FAULT"] = fault
    cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml",
                      [f"adapt.model_dir={model_dir}", f"data.path={data}", f"train.out_dir={out}", "adapt.language=ny",
                       "train.steps=6", "train.save_every=2", "train.collective_timeout_s=30"])
    adapt.run(cfg, str(REPO / "ds_configs/z2.json"), resume=resume)


@pytest.mark.parametrize("fault, world", [
    pytest.param("kill:step:4", 1, id="mid-run"),
    pytest.param("kill:save_shards:4:1", 2, id="during-save-2-ranks", marks=pytest.mark.faults),
])
@pytest.mark.crash_resume
def test_adaptation_crash_and_resume_matches_uninterrupted(tiny_model_dir, tiny_target_corpus, tmp_path,
                                                           record_property, fault, world):
    from safetensors.torch import load_file

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_ranks(_adapt_rank, world, args=(tiny_model_dir, tiny_target_corpus, straight, False))

    def crash():
        return failing(_adapt_rank, world, args=(tiny_model_dir, tiny_target_corpus, crashed, False, fault),
                       timeout=120, kill_on_error=False)

    def resume():
        assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000002"
        assert not (crashed / "pack").exists()
        run_ranks(_adapt_rank, world, args=(tiny_model_dir, tiny_target_corpus, crashed, True))

    report = crash_then_resume(record_property, crashed, crash, resume, steps=6)
    assert "died without reporting (exit code -9)" in report
    assert_same_tensors(load_file(str(straight / "pack" / "embeddings.safetensors")),
                        load_file(str(crashed / "pack" / "embeddings.safetensors")), "language pack")
    assert loss_log(crashed) == loss_log(straight)


# ---- a full disk ----------------------------------------------------------------------------

def _resume_tiny(rank, data, out):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml", [f"data.path={data}", f"train.out_dir={out}"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"), resume=True)


@pytest.mark.faults
@pytest.mark.crash_resume
def test_disk_full_then_space_freed_resumes_like_uninterrupted(tmp_path, tiny_corpus, tiny_model_dir,
                                                                record_property):
    """Checkpoint 6 does not fit (a tiny tmpfs); once the device grows, --resume finishes the
    run exactly as the uninterrupted one (tiny_model_dir's run: same config, same seed)."""
    import subprocess
    import sys

    from tests.helpers import disk_full_run

    run, env, how = disk_full_run(tmp_path, tiny_corpus)
    record_property("simulated_by", how)
    try:
        def crash():
            proc = subprocess.run([sys.executable, "launchers/pretrain.py", "--resume", "--config", "configs/pretrain-tiny.yaml",
                                   f"data.path={tiny_corpus}", f"train.out_dir={run}"], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO), **env},
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2 and "no space left on device" in proc.stderr, proc.stderr[-2000:]
            return proc.stderr

        def resume():
            if how == "tmpfs":  # the operator makes room
                subprocess.run(["mount", "-o", "remount,size=64m", str(run.parent)], check=True)
            run_ranks(_resume_tiny, 1, args=(tiny_corpus, run))

        crash_then_resume(record_property, run, crash, resume, steps=6)
        assert_same_as_straight(run, tiny_model_dir.parent)
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(run.parent)], check=True)
