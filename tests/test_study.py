"""The compute-budget study: matched-compute math on synthetic curves, and one tiny end-to-end study."""

import json
import math
import random

import pytest
import torch

from ds_minimodel.analysis.study.matching import Point, first_crossing, matched_compute
from ds_minimodel.errors import UserError
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import expect_rejected


def curve(*pairs, seconds_per_flop=1e-3):
    """Points from (flops, metric) pairs; step = index + 1, seconds proportional to FLOPs."""
    return [Point(i + 1, f, f * seconds_per_flop, m, f"step_{i + 1}") for i, (f, m) in enumerate(pairs)]


# ---- matched-compute math ---------------------------------------------------------------------

def test_crossing_between_checkpoints_is_interpolated_linearly():
    pts = curve((100, 0.2), (200, 0.4), (300, 0.6))
    c = first_crossing(pts, 0.5)
    assert c.reached and not c.at_first_point
    assert c.flops == pytest.approx(250.0) and c.seconds == pytest.approx(0.25) and c.step == pytest.approx(2.5)
    assert c.flops_bracket == (200.0, 300.0)
    # Exactly at a checkpoint's value: that checkpoint, not an interpolation.
    assert first_crossing(pts, 0.4).flops == pytest.approx(200.0)


def test_first_crossing_ignores_later_dips_and_earlier_near_misses():
    pts = curve((100, 0.49), (200, 0.3), (300, 0.7), (400, 0.2), (500, 0.9))
    c = first_crossing(pts, 0.5)
    assert c.flops == pytest.approx(200 + (0.2 / 0.4) * 100)  # between 0.3 and 0.7, not 0.49 -> 0.3


def test_first_point_already_at_target_is_an_upper_bound():
    c = first_crossing(curve((100, 0.8), (200, 0.9)), 0.5)
    assert c.reached and c.at_first_point and c.flops == 100 and c.flops_bracket == (100.0, 100.0)


def test_never_reaching_the_target_has_no_ratio():
    curves = {"full": curve((100, 0.3), (200, 0.5), (300, 0.6)),
              "minijoint": curve((30, 0.2), (60, 0.4), (90, 0.55))}
    r = matched_compute(curves, fraction=1.0)
    assert r["target"] == pytest.approx(0.6)
    mj = r["methods"]["minijoint"]
    assert mj["reached"] is False and mj["ratio_flops"] is None and mj["ratio_seconds"] is None
    assert mj["flops_to_target"] is None and "never reached" in mj["note"]
    json.dumps(r)  # serialisable as is
    # The baseline reaches its own final value at the latest at its last point.
    assert r["methods"]["full"]["reached"] and r["methods"]["full"]["ratio_flops"] == pytest.approx(1.0)


def test_ratio_uses_the_baselines_own_crossing_or_its_whole_run():
    curves = {"full": curve((100, 0.2), (200, 0.6), (300, 0.8), (400, 0.8)),
              "minijoint": curve((20, 0.3), (40, 0.5), (60, 0.7), (80, 0.9))}
    r = matched_compute(curves, fraction=1.0)
    # target 0.8: baseline first reaches it at its 3rd point (300); minijoint between 60 and 80: 70
    assert r["baseline_flops_to_target"] == pytest.approx(300.0)
    mj = r["methods"]["minijoint"]
    assert mj["flops_to_target"] == pytest.approx(70.0) and mj["ratio_flops"] == pytest.approx(300 / 70)
    assert mj["ratio_seconds"] == pytest.approx(300 / 70)
    whole = matched_compute(curves, fraction=1.0, baseline_at="final")
    assert whole["methods"]["minijoint"]["ratio_flops"] == pytest.approx(400 / 70)
    # A smaller fraction: target 0.5 * 0.8 = 0.4; baseline at 100 + (0.2 / 0.4) * 100 = 150, mini at 30.
    half = matched_compute(curves, fraction=0.5)
    assert half["methods"]["minijoint"]["ratio_flops"] == pytest.approx(150 / 30)


def test_reaching_the_target_at_zero_compute_gives_no_ratio():
    init = Point(0, 0, 0.0, 0.5, "init")
    curves = {"full": [init] + curve((100, 0.45), (200, 0.5)), "minijoint": [init] + curve((30, 0.6))}
    r = matched_compute(curves)
    assert r["methods"]["minijoint"]["flops_to_target"] == 0 and r["methods"]["minijoint"]["ratio_flops"] is None
    assert r["methods"]["full"]["ratio_flops"] is None and "0 FLOPs" in r["methods"]["full"]["note"]


def test_crossing_is_monotone_in_the_target_and_inside_its_bracket():
    rng = random.Random(0)
    for _ in range(50):
        flops = sorted(rng.sample(range(1, 10_000), 8))
        pts = curve(*[(f, rng.random()) for f in flops])
        previous = -math.inf
        for target in [i / 40 for i in range(41)]:
            c = first_crossing(pts, target)
            if not c.reached:
                assert all(p.metric < target for p in pts)
                previous = math.inf
                continue
            assert c.flops >= previous, "a higher target was reached earlier"
            lo, hi = c.flops_bracket
            assert lo <= c.flops <= hi and (c.at_first_point or lo < c.flops)
            previous = c.flops


def test_matched_compute_is_deterministic_and_checks_its_input():
    curves = {"full": curve((100, 0.2), (200, 0.6)), "minipost": curve((50, 0.1), (90, 0.7))}
    a = json.dumps(matched_compute(curves, fraction=0.9), sort_keys=True)
    assert a == json.dumps(matched_compute(dict(curves), fraction=0.9), sort_keys=True)
    with pytest.raises(UserError, match="not ordered"):
        matched_compute({"full": curve((200, 0.1), (100, 0.2))})
    with pytest.raises(UserError, match="fraction"):
        matched_compute(curves, fraction=0.0)
    with pytest.raises(UserError, match="baseline 'standard'"):
        matched_compute(curves, baseline="standard")


# ---- a tiny end-to-end study --------------------------------------------------------------------

def _finetune(rank, model_dir, out):
    from ds_minimodel.config import FinetuneConfig, load_config
    from ds_minimodel.steps import finetune

    cfg = load_config(FinetuneConfig, REPO / "configs/finetune-tiny.yaml", [f"finetune.model_dir={model_dir}",
                                                                           f"train.out_dir={out}"])
    finetune.run(cfg, str(REPO / "ds_configs/z0.json"))


def _launch(rank, argv):
    from launchers.adapt import main

    main(argv)


def in_process_runner(calls):
    """run_experiments' runner without a subprocess: the same adapt launcher, forked in-process."""
    def run(cmd, log):
        assert cmd[1].endswith("launchers/adapt.py")
        calls.append(cmd)
        run_ranks(_launch, 1, args=(cmd[2:],))
        return 0.0
    return run


@pytest.fixture(scope="module")
def tiny_study(tiny_model_dir, tiny_target_corpus, tmp_path_factory):
    """A fine-tuned tiny classifier and two adaptation runs (full, minijoint) of 6 steps with a
    checkpoint every 2, made by run_experiments."""
    from ds_minimodel.analysis.study.experiments import (
        ExperimentOptions,
        run_experiments,
    )

    root = tmp_path_factory.mktemp("study")
    run_ranks(_finetune, 1, args=(tiny_model_dir, root / "ft"))
    opts = ExperimentOptions(out=root / "exp", pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps={"full": 6, "minijoint": 6}, checkpoints=3,
                             config="configs/adapt-tiny.yaml", overrides=["adapt.language=ny"])
    calls = []
    runs = run_experiments(opts, runner=in_process_runner(calls), log=lambda s: None)
    assert len(calls) == 2
    return {"root": root, "model": root / "ft" / "final", "runs": runs, "opts": opts}


def test_run_experiments_keeps_every_checkpoint_and_reuses_finished_runs(tiny_study):
    from ds_minimodel.analysis.study.experiments import run_experiments

    for method, run_dir in tiny_study["runs"].items():
        tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
        assert tags == ["step_00000002", "step_00000004", "step_00000006"], method
        assert (run_dir / "pack" / "pack.json").is_file()
    calls = []
    run_experiments(tiny_study["opts"], runner=in_process_runner(calls), log=lambda s: None)
    assert calls == []  # finished runs with the planned settings are reused
    import dataclasses

    other = dataclasses.replace(tiny_study["opts"], steps={"full": 8, "minijoint": 6})
    with pytest.raises(UserError, match="other settings.*train.steps=6 \\(planned 8\\)"):
        run_experiments(other, runner=in_process_runner(calls), log=lambda s: None)
    assert calls == []


def test_init_point_is_the_runs_starting_embeddings(tiny_study):
    """Rebuilt initial embeddings are within two Adam steps (|update| <= lr each) of the step-2
    checkpoint; embeddings from another seed are not."""
    import dataclasses

    from ds_minimodel.analysis.study.runs import (
        checkpoint_tensors,
        init_tensors,
        open_run,
    )

    run = open_run("minijoint", tiny_study["runs"]["minijoint"])
    lr = run.config.optim.lr
    init, ckpt = init_tensors(run), checkpoint_tensors(run, "step_00000002")
    assert (ckpt["word"] - init["word"]).abs().max() <= 2 * lr * 1.01
    other = dataclasses.replace(run, config=dataclasses.replace(
        run.config, train=dataclasses.replace(run.config.train, seed=1)))
    assert (ckpt["word"] - init_tensors(other)["word"]).abs().max() > 4 * lr


def test_study_reads_the_runs_and_writes_json_markdown_and_plots(tiny_study, tmp_path, capsys):
    from launchers.study import main

    runs = tiny_study["runs"]
    argv = ["--runs", f"full={runs['full']}", f"minijoint={runs['minijoint']}", "--model", str(tiny_study["model"]),
            "--metric", "accuracy", "--fraction", "0.9", "--eval-examples", "400"]
    main(argv + ["--out", str(tmp_path / "a")])
    assert "target accuracy" in capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "study.json").read_text())
    for name in ("study.md", "metric_vs_flops.png", "metric_vs_wallclock.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    assert (tmp_path / "a" / "metric_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    from ds_minimodel.training.metrics import read_metrics

    for name in ("full", "minijoint"):
        pts = result["curves"][name]
        assert [p["tag"] for p in pts] == ["init", "step_00000002", "step_00000004", "step_00000006"]
        assert pts[0]["flops"] == 0 and all(0.0 <= p["metric"] <= 1.0 for p in pts)
        logged = {r["step"]: r["flops"] for r in read_metrics(runs[name], "train")}
        assert [p["flops"] for p in pts[1:]] == [logged[2], logged[4], logged[6]]
        assert result["runs"][name]["method"] == name
    assert result["references"]["test_examples"] == 400
    # Both runs start from the same table (same source word table, tokenizer and seed).
    assert result["curves"]["full"][0]["metric"] == result["curves"]["minijoint"][0]["metric"]
    # Per step, the mini-model's step is cheaper.
    assert result["curves"]["minijoint"][-1]["flops"] < result["curves"]["full"][-1]["flops"]
    m = result["matched"]
    assert m["target"] == pytest.approx(0.9 * result["curves"]["full"][-1]["metric"])
    assert m["methods"]["full"]["reached"]
    mj = m["methods"]["minijoint"]
    if mj["reached"] and mj["flops_to_target"] > 0 and m["baseline_flops_to_target"]:
        assert mj["ratio_flops"] == pytest.approx(m["baseline_flops_to_target"] / mj["flops_to_target"])
    else:
        assert mj["ratio_flops"] is None
    assert "| minijoint |" in (tmp_path / "a" / "study.md").read_text()

    # Deterministic: a second study of the same runs (no score cache) writes the same study.json.
    main(argv + ["--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "study.json").read_text() == (tmp_path / "a" / "study.json").read_text()


def test_retrieval_metric_scores_every_checkpoint(tiny_study, tiny_model_dir, tmp_path):
    from ds_minimodel.analysis.study.compare import compare_runs
    from ds_minimodel.analysis.study.scoring import RetrievalScorer

    scorer = RetrievalScorer(tiny_model_dir, pairs=40)
    result = compare_runs(tiny_study["runs"], scorer, tmp_path, include_init=False, log=lambda s: None)
    assert result["metric"] == "retrieval_top1"
    for pts in result["curves"].values():
        assert len(pts) == 3 and all(0.0 <= p["metric"] <= 1.0 for p in pts)


def test_bad_runs_are_refused_with_one_line(tiny_study, tmp_path, capsys):
    from launchers.study import main

    runs, model = tiny_study["runs"], str(tiny_study["model"])
    out = tmp_path / "out"

    def refused(run_args, *needles):
        expect_rejected(capsys, main, ["--runs", *run_args, "--model", model, "--out", str(out)], *needles,
                        watch=[runs["full"], runs["minijoint"]])
        assert not (out / "study.json").exists()

    refused([f"full={runs['full']}", f"minijoint={tmp_path / 'nope'}"], "minijoint", "does not exist")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    refused([f"full={runs['full']}", f"minijoint={empty}"], "no complete checkpoint", str(empty))
    refused([f"full={runs['full']}", f"minipost={runs['minijoint']}"], "mismatched runs", "minijoint run")
    refused([f"minijoint={runs['minijoint']}"], "baseline 'full'")
    refused([f"full={runs['full']}", "minijoint"], "NAME=DIR")
    expect_rejected(capsys, main, ["--runs", f"full={runs['full']}", "--metric", "accuracy", "--out", str(out)],
                    "--model")
    expect_rejected(capsys, main, ["--run-experiments", "--pretrained", str(tmp_path / "none"), "--target-data",
                                   str(tmp_path), "--model", model, "--out", str(out)],
                    "--pretrained", "does not exist")


def test_second_study_into_a_live_out_is_refused(tiny_study, tmp_path, capsys):
    from launchers.study import main
    from tests.helpers import holder, stop

    runs, out = tiny_study["runs"], tmp_path / "out"
    owner = holder(out)
    try:
        expect_rejected(capsys, main, ["--runs", f"full={runs['full']}", f"minijoint={runs['minijoint']}", "--model",
                                       str(tiny_study["model"]), "--eval-examples", "40", "--out", str(out)],
                        f"--out {out} is in use by pid {owner.pid}", watch=[out])
    finally:
        stop(owner)


def test_study_plan_sets_dense_checkpoints_and_parses_as_adapt_config(tiny_model_dir, tiny_target_corpus, tmp_path):
    from ds_minimodel.analysis.study.experiments import (
        ExperimentOptions,
        plan_experiments,
    )
    from ds_minimodel.config import AdaptConfig, load_config
    from launchers.study import parse_steps

    steps = parse_steps(["300", "minijoint=900"])
    assert steps == {"full": 300, "minijoint": 900, "minipost": 300}
    opts = ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps=steps, checkpoints=10)
    for method, run_dir, overrides in plan_experiments(opts):
        cfg = load_config(AdaptConfig, REPO / "configs/adapt-cpu.yaml", overrides)
        n = steps[method]
        assert cfg.train.steps == n and cfg.train.save_every == n // 10 and cfg.train.keep_last >= 10
        assert cfg.adapt.through == {"full": "full", "minijoint": "mini"}[method]
    with pytest.raises(UserError, match="--minipost"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus))
    with pytest.raises(UserError, match="adapts as 'minijoint', not 'minipost'"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                                           minipost=tiny_model_dir))
    with pytest.raises(UserError, match="'full'"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                                           methods=("minijoint",)))


def test_checkpoint_tensors_match_the_final_pack(tiny_study):
    from ds_minimodel.analysis.study.runs import checkpoint_tensors, open_run
    from ds_minimodel.artefacts.langpack import load_pack

    run = open_run("full", tiny_study["runs"]["full"])
    _, pack, _ = load_pack(run.dir / "pack")
    last = checkpoint_tensors(run, run.tags[-1])
    assert torch.equal(last["word"], pack["word"]) and torch.equal(last["output_bias"], pack["output_bias"])
