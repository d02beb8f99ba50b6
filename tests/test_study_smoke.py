"""`make study-smoke`: the compute-budget study as users run it, end to end, on tiny models.

Every step is a real launcher in a real subprocess: MiniPost and fine-tuning build the inputs, then
`launchers/study.py --run-experiments` trains the three adaptation runs through its *default*
runner (`subprocess_runner.run_command`, the one `make study` uses; the other study tests inject an
in-process runner instead), scores their checkpoints and writes the report. A change that breaks
the default runner, its signature or the command it builds fails here.
"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def launch(*argv, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_study_run_experiments_end_to_end_through_the_default_runner(tiny_model_dir, tiny_corpus,
                                                                      tiny_target_corpus, tmp_path):
    launch("launchers/minipost.py", "--config", "configs/minipost-tiny.yaml", f"minipost.source={tiny_model_dir}",
           f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'minipost'}", "minipost.layers=1", "minipost.top_layers=1")
    launch("launchers/finetune.py", "--config", "configs/finetune-tiny.yaml", f"finetune.model_dir={tiny_model_dir}",
           f"train.out_dir={tmp_path / 'finetune'}")
    out = tmp_path / "study"
    proc = launch("launchers/study.py", "--run-experiments", "--pretrained", tiny_model_dir,
                  "--minipost", tmp_path / "minipost" / "final", "--model", tmp_path / "finetune" / "final",
                  "--target-data", tiny_target_corpus, "--out", out, "--config", "configs/adapt-tiny.yaml",
                  "--steps", "full=4", "minijoint=4", "minipost=4", "--checkpoints", "2",
                  "--eval-examples", "200", "--set", "adapt.language=ny")

    # Each method's run was trained by its own adapt.py subprocess, logged where the runner logs.
    for method in ("full", "minijoint", "minipost"):
        run = out / f"adapt-{method}"
        assert (run / "pack" / "pack.json").is_file(), method
        assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
        log = (out / "logs" / f"adapt-{method}.log").read_text(encoding="utf-8")
        assert "done: 4 steps" in log, log[-1000:]
    result = json.loads((out / "study.json").read_text())
    assert set(result["curves"]) == {"full", "minijoint", "minipost"}
    for method, points in result["curves"].items():
        assert [p["tag"] for p in points] == ["init", "step_00000002", "step_00000004"], method
        assert all(0.0 <= p["metric"] <= 1.0 for p in points)
    # Per step, both mini-models cost less than the full model.
    final_flops = {m: pts[-1]["flops"] for m, pts in result["curves"].items()}
    assert final_flops["minijoint"] < final_flops["full"] and final_flops["minipost"] < final_flops["full"]
    for name in ("study.md", "metric_vs_flops.png", "metric_vs_wallclock.png"):
        assert (out / name).stat().st_size > 0, name
    assert "target accuracy" in proc.stdout

    # A second invocation reuses the finished runs: no adaptation is run again.
    again = launch("launchers/study.py", "--run-experiments", "--pretrained", tiny_model_dir,
                   "--minipost", tmp_path / "minipost" / "final", "--model", tmp_path / "finetune" / "final",
                   "--target-data", tiny_target_corpus, "--out", out, "--config", "configs/adapt-tiny.yaml",
                   "--steps", "full=4", "minijoint=4", "minipost=4", "--checkpoints", "2",
                   "--eval-examples", "200", "--set", "adapt.language=ny")
    assert again.stdout.count("already done") == 3 and "$ " not in again.stdout
