"""The k x vocabulary sweep (study/sweep.py) end to end on a tiny regular model: a real
tokenizer per vocabulary from the built-in Chichewa corpus, a real MiniPost per k, every arm's
adaptation runs for two seeds through the adapt launcher, the per-vocabulary studies, the table,
the plot and the merge into a study. Step budgets and the head's share are checked against
FlopCounterMode on plain-PyTorch models, not against the analytic counter the runs use."""

import dataclasses
import json
import math
import os

import pytest
from torch.utils.flop_counter import FlopCounterMode

from ds_minimodel.errors import UserError
from tests.conftest import REPO
from tests.distributed import run_ranks


def _pretrain_regular(rank, data, out):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "model.mini_depth=null"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


def _finetune(rank, model_dir, out):
    from ds_minimodel.config import FinetuneConfig, load_config
    from ds_minimodel.steps import finetune

    cfg = load_config(FinetuneConfig, REPO / "tests/fixtures/finetune-tiny.yaml",
                      [f"finetune.model_dir={model_dir}", f"train.out_dir={out}"])
    finetune.run(cfg, str(REPO / "ds_configs/z0.json"))


def _launch(rank, launcher, argv):
    import importlib

    importlib.import_module(f"ds_minimodel.cli.{launcher}").main(argv)


def in_process_runner(calls):
    """The sweep's runner without a subprocess: each launcher's main, forked in-process."""
    def run(cmd, log):
        assert cmd[1] == "-m" and cmd[2].startswith("ds_minimodel.cli."), cmd
        launcher = cmd[2].removeprefix("ds_minimodel.cli.")
        assert launcher in ("prepare_data", "minipost", "adapt"), cmd
        calls.append((launcher, cmd))
        run_ranks(_launch, 1, args=(launcher, cmd[3:]))
        return 0.0
    return run


@pytest.fixture(scope="module")
def sweep_run(tiny_corpus, tmp_path_factory):
    from ds_minimodel.study.compare import StudyOptions
    from ds_minimodel.study.scoring import AccuracyScorer
    from ds_minimodel.study.sweep import SweepOptions, run_sweep

    root = tmp_path_factory.mktemp("sweep")
    run_ranks(_pretrain_regular, 1, args=(tiny_corpus, root / "regular"))
    run_ranks(_finetune, 1, args=(root / "regular" / "final", root / "ft"))
    opts = SweepOptions(out=root / "sweep", pretrained=root / "regular" / "final", english_data=tiny_corpus,
                        target_recipe="bible-ny", target_max_chars=150_000, ks=(1, 2), vocabs=(150, 300),
                        full_steps=4, seeds=(0, 1), checkpoints=2, config="tests/fixtures/adapt-tiny.yaml",
                        minipost_config="tests/fixtures/minipost-tiny.yaml", overrides=["adapt.language=ny"])
    calls = []
    result = run_sweep(opts, AccuracyScorer(root / "ft" / "final", eval_examples=120),
                       StudyOptions(bootstrap=40, loss_sequences=8, level=0.9), runner=in_process_runner(calls), log=lambda s: None)
    return {"opts": opts, "result": result, "calls": calls, "root": root}


def _measured(cfg, kind: str, batch: int, seq: int, masked: int) -> tuple[int, int]:
    """(step FLOPs, of which the MLM head's) counted by FlopCounterMode on a plain-PyTorch model:
    everything the step counts that is not attributed to a transformer layer is the head's (the
    embedding lookups are no matmuls)."""
    from ds_minimodel.method.flops_check import build_step, step_loss

    # Explicit attention: CPU SDPA without dropout runs a fused kernel FlopCounterMode does not count.
    step = build_step(dataclasses.replace(cfg, kernels="off", attention="explicit"), kind, batch, seq, masked)
    with FlopCounterMode(display=False) as counter:
        step_loss(step["model"], kind, step["input_ids"], step["labels"], None).backward()
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    layers = sum(counts.get(f"MLMEncoder.layers.{i}", 0) for i in range(cfg.num_layers))
    return counts["Global"], counts["Global"] - layers


def test_sweep_prepares_one_dataset_per_vocabulary_and_one_minipost_per_k(sweep_run):
    from ds_minimodel.artefacts.modeldir import read_model_dir
    from ds_minimodel.steps.mlm_job import open_corpus

    opts, calls = sweep_run["opts"], sweep_run["calls"]
    launched = [name for name, _ in calls]
    assert launched[:4] == ["prepare_data", "prepare_data", "minipost", "minipost"]
    # Each vocabulary's runs seed by seed: every arm of seed 0, then of seed 1.
    names = [c[c.index("--config") + 2:][3].rsplit("/", 2)[1:] for name, c in calls if name == "adapt"]
    assert names == [[f"v{v}", f"adapt-{arm}-s{s}"] for v in (150, 300) for s in (0, 1) for arm in ("full", "k1", "k2")]
    _, _, regular_lineage = read_model_dir(opts.pretrained)
    for k in (1, 2):
        _, cfg, lineage = read_model_dir(opts.out / f"minipost-k{k}" / "final")
        assert cfg.num_layers == k + 1
        assert lineage["body_fingerprints"][str(k)] == regular_lineage["body_fingerprints"][str(k)]
    for v in (150, 300):
        tok = open_corpus(opts.out / "data" / f"bible-ny-v{v}").tokenizer()
        assert tok.vocab_size <= v


def test_sweep_budgets_and_head_share_match_flop_counter_mode(sweep_run):
    from ds_minimodel.method.flops import expected_masked, minipost_config
    from ds_minimodel.artefacts.modeldir import read_model_dir

    opts, result = sweep_run["opts"], sweep_run["result"]
    _, regular, _ = read_model_dir(opts.pretrained)
    batch, seq = 4, 32  # tests/fixtures/adapt-tiny.yaml
    masked = expected_masked(batch, seq, 0.15)
    assert {(p["k"], p["vocab"]) for p in result["points"]} == {(k, v) for k in (1, 2) for v in (150, 300)}
    for p in result["points"]:
        full, _ = _measured(dataclasses.replace(regular, vocab_size=p["vocab_size"]), "adapt_full", batch, seq, masked)
        mini_cfg = dataclasses.replace(minipost_config(regular, p["k"]), vocab_size=p["vocab_size"])
        mini, head = _measured(mini_cfg, "adapt_minipost", batch, seq, masked)
        # Every arm gets the baseline's FLOP budget: the fewest steps whose FLOPs reach 4 full steps'.
        assert p["steps"] == math.ceil(4 * full / mini)
        assert p["head_share"] == pytest.approx(head / mini, rel=1e-9)
        # Measured in the runs, on their real masks: close to the expected-mask ratio.
        assert p["step_flops_ratio"] == pytest.approx(full / mini, rel=0.05)
        assert p["step_seconds_ratio"] > 0
    # A deeper mini-model: a smaller saving a step, and the head a smaller part of it.
    for v in (150, 300):
        k1, k2 = sorted((p for p in result["points"] if p["vocab"] == v), key=lambda p: p["k"])
        assert k1["step_flops_ratio"] > k2["step_flops_ratio"] and k1["head_share"] > k2["head_share"]


def test_sweep_points_carry_each_vocabularys_study(sweep_run):
    opts, result = sweep_run["opts"], sweep_run["result"]
    for p in result["points"]:
        study = json.loads((opts.out / f"v{p['vocab']}" / "study.json").read_text())
        for metric in ("accuracy", "mlm_loss"):
            m = study["metrics"][metric]["matched"]["methods"][f"k{p['k']}"]
            assert p[metric]["ratio"] == m["ratio_value"] and p[metric]["interval"] == m["interval_flops"]
            assert p[metric]["steps_to_target"] == m["step_to_target"]
            if p[metric]["steps_to_target"] is not None:
                assert 0 <= p[metric]["steps_to_target"] <= p["steps"]
        # The plug gap is the one the arm's study prints in its own table (the formula is checked
        # against values worked by hand in test_study_stats, not re-derived here).
        lines = (opts.out / f"v{p['vocab']}" / "study.md").read_text().splitlines()
        header = next(i for i, line in enumerate(lines)
                      if line.startswith("| method | seeds | own final loss | full model, plugged | gap | beyond"))
        table = lines[header + 2:]
        cells = [row.strip("| ").split(" | ") for row in table[:table.index("")]]
        assert {c[0]: c[5] for c in cells}[f"k{p['k']}"] == f"{p['plug_gap']:+.3f}"
    from ds_minimodel.study.render import sweep_lines

    text = (opts.out / "sweep.md").read_text()
    assert text.count("\n| 1 |") == 2 and text.count("\n| 2 |") == 2  # a row per point
    # The intervals are the studies' (level 0.9 here), and the table and the printed lines say so.
    assert result["level"] == study["level"] == 0.9 and "| 90% interval |" in text and "95%" not in text
    assert "| plug gap beyond the baseline's |" in text
    # (a line without an interval says "no 90% interval" and why)
    assert all("90% interval" in line and "95%" not in line for line in sweep_lines(result))
    assert (opts.out / "sweep.png").stat().st_size > 10_000


def test_sweep_table_merges_into_a_study(sweep_run, tmp_path):
    from ds_minimodel.study.sweep import merge_into_study

    opts, result = sweep_run["opts"], sweep_run["result"]
    assert merge_into_study(result, opts.out, tmp_path) is False  # no study there yet: nothing written
    assert not (tmp_path / "study.md").exists()
    study = json.loads((opts.out / "v150" / "study.json").read_text())
    (tmp_path / "study.json").write_text(json.dumps(study))
    assert merge_into_study(result, opts.out, tmp_path) is True
    merged = json.loads((tmp_path / "study.json").read_text())
    assert merged["sweep"]["points"] == result["points"]
    md = (tmp_path / "study.md").read_text()
    assert "The k x vocabulary frontier" in md
    assert f"![sweep]({os.path.relpath(opts.out, tmp_path)}/sweep.png)" in md  # the plot, from the study's directory


def test_sweep_refuses_bad_axes_and_a_model_with_a_mid_head(tiny_model_dir, tiny_corpus, tmp_path):
    from ds_minimodel.study.sweep import SweepOptions, check_options
    from ds_minimodel.cli.study import parse_sweep

    assert parse_sweep(["k=1,2,3,4", "vocab=8000,32000"]) == ((1, 2, 3, 4), (8000, 32000))
    for bad in (["k=1,2"], ["k=1,x", "vocab=8"], ["k=1", "k=2", "vocab=8"], ["depth=1", "vocab=8"]):
        with pytest.raises(UserError):
            parse_sweep(bad)
    opts = SweepOptions(out=tmp_path, pretrained=tiny_model_dir, english_data=tiny_corpus, target_recipe="bible-ny",
                        ks=(1, 4), vocabs=(150, 150))
    with pytest.raises(UserError) as e:
        check_options(opts)
    message = str(e.value)  # every problem at once
    assert "has a mid head" in message and "k=1,4" in message and "vocab=150,150" in message
    with pytest.raises(UserError, match="not a built-in corpus"):
        check_options(dataclasses.replace(opts, target_recipe="bible-xx"))
    # --set reaches every adaptation run: checked against the adaptation config with the rest.
    with pytest.raises(UserError) as e:
        check_options(dataclasses.replace(opts, overrides=["nosuch.key=1"]))
    assert "unknown key nosuch" in str(e.value) and "has a mid head" in str(e.value)
