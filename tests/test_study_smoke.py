"""`make study-smoke`: the compute-budget study as users run it, end to end, on tiny models.

Every step is a real launcher in a real subprocess: MiniPost and fine-tuning build the inputs, then
`launchers/study.py --run-experiments` trains the three adaptation runs through its *default*
runner (`subprocess_runner.run_command`, the one `make study` uses; the other study tests inject an
in-process runner instead) for two seeds of each of the three methods, scores their checkpoints
(accuracy and the full model's MLM loss), bootstraps the intervals and writes the report. A change that breaks
the default runner, its signature or the command it builds fails here.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def launch(*argv, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


SUMMARY = re.compile(r"study (\w+): compute ratio (\S+) \(95% interval (\S+)-(\S+)\) at matched (accuracy|MLM loss); "
                     r"n = (\d+) of 1000 replicates")
BOUND = re.compile(r"study (\w+): compute ratio < (\S+) \(a bound: not reached within (\S+) FLOPs\) "
                   r"\(95% interval [^)]+\) at matched (MLM loss); n = (\d+) of 1000 replicates")


def _number(text: str) -> float:
    return math.inf if text == "inf" else float(text)


def test_study_run_experiments_end_to_end_through_the_default_runner(tiny_model_dir, tiny_corpus,
                                                                      tiny_target_corpus, tmp_path):
    launch("launchers/minipost.py", "--config", "tests/fixtures/minipost-tiny.yaml", f"minipost.source={tiny_model_dir}",
           f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'minipost'}", "minipost.mini_depth=1", "minipost.top_layers=1")
    launch("launchers/finetune.py", "--config", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={tiny_model_dir}",
           f"train.out_dir={tmp_path / 'finetune'}")
    out = tmp_path / "study"
    # --no-init-point: the tiny classifier answers one class whatever the embeddings (its accuracy is
    # flat), so with the initial point every curve "reaches" the baseline's final accuracy at 0 FLOPs
    # and no ratio is defined (printed n/a; test_study covers it). From the first checkpoint on, the
    # ratios are defined and the summary lines carry numbers.
    argv = ["launchers/study.py", "--run-experiments", "--pretrained", tiny_model_dir,
            "--minipost", tmp_path / "minipost" / "final", "--model", tmp_path / "finetune" / "final",
            "--target-data", tiny_target_corpus, "--out", out, "--config", "tests/fixtures/adapt-tiny.yaml",
            "--steps", "full=4", "minijoint=4", "minipost=4", "--checkpoints", "2", "--seeds", "2",
            "--eval-examples", "200", "--loss-sequences", "16", "--no-init-point", "--set", "adapt.language=ny"]
    proc = launch(*argv)

    # Each method's run of each seed was trained by its own adapt.py subprocess, logged where the runner logs.
    for method in ("full", "minijoint", "minipost"):
        for seed in (0, 1):
            run = out / f"adapt-{method}-s{seed}"
            assert (run / "pack" / "pack.json").is_file(), run
            assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
            log = (out / "logs" / f"adapt-{method}-s{seed}.log").read_text(encoding="utf-8")
            assert "done: 4 steps" in log, log[-1000:]
    result = json.loads((out / "study.json").read_text())
    assert set(result["metrics"]) == {"accuracy", "balanced_accuracy", "mlm_loss"}
    for metric, study in result["metrics"].items():
        assert set(study["curves"]) == {"full", "minijoint", "minipost"}
        for method, c in study["curves"].items():
            assert c["tags"] == ["step_00000002", "step_00000004"], method
            assert c["seeds"] == [0, 1]
        # Per step, both mini-models cost less than the full model.
        final_flops = {m: c["flops"][-1] for m, c in study["curves"].items()}
        assert final_flops["minijoint"] < final_flops["full"] and final_flops["minipost"] < final_flops["full"]
    for name in ("study.md", "metric_vs_flops.png", "metric_vs_wallclock.png", "mlm_loss_vs_flops.png"):
        assert (out / name).stat().st_size > 0, name

    # The run ends with one line per mini-model method, at matched accuracy, in exactly this form
    # (the MLM-loss lines come before), with LO <= ratio <= HI. The mini-models do not reach the
    # baseline's MLM loss within these few steps: those lines may be a bound, never 0.00.
    lines = proc.stdout.strip().splitlines()
    tail = [SUMMARY.fullmatch(line) for line in lines[-2:]]
    assert all(tail), lines[-6:]
    assert [(m.group(1), m.group(5)) for m in tail] == [("minijoint", "accuracy"), ("minipost", "accuracy")]
    for m in tail:
        assert re.fullmatch(r"\d+\.\d\d|inf", m.group(2)), m.group(0)
        ratio, lo, hi = (_number(m.group(i)) for i in (2, 3, 4))
        assert lo <= ratio <= hi, m.group(0)
        recorded = result["summary"][m.group(1)]["accuracy"]["ratio"]
        assert (recorded == "inf") if ratio == math.inf else f"{recorded:.2f}" == m.group(2)
    for line in lines[-4:-2]:
        m = SUMMARY.fullmatch(line) or BOUND.fullmatch(line)
        assert m and m.group(5 if m.re is SUMMARY else 4) == "MLM loss", lines[-6:]
        e = result["summary"][m.group(1)]["mlm_loss"]
        if m.re is BOUND:  # below the baseline's FLOPs to its target over the method's whole budget
            assert e["outcome"] == "not_reached" and f"{e['ratio_bound']:.2f}" == m.group(2), (line, e)
            assert float(m.group(3)) == pytest.approx(e["total_flops"], rel=5e-3), (line, e)
        else:
            assert f"{e['ratio']:.2f}" == m.group(2), (line, e)

    # A second invocation reuses the finished runs: no adaptation is run again.
    again = launch(*argv)
    assert again.stdout.count("already done") == 6 and "$ " not in again.stdout
