"""The learning-rate pilot (study/lr_pilot.py): the rule on hand-written metrics.jsonl files, the
plan with a fake runner (the pilot's runs carry optim.lr and the pilot's steps, the real runs the
chosen rate; reuse, divergence, refusal of other settings), the launcher's flags and the spec's
keys, and one tiny pilot end to end through the real adapt launcher (forked in-process)."""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ds_minimodel import specs
from ds_minimodel.cli import study as study_cli
from ds_minimodel.config import ConfigError
from ds_minimodel.errors import UserError
from ds_minimodel.study import lr_pilot
from ds_minimodel.study.experiments import CheckedMethod, ExperimentOptions
from ds_minimodel.study.lr_pilot import run_with_pilot
from tests.conftest import REPO
from tests.helpers import expect_rejected, in_process_runner

TINY_CONFIG = "tests/fixtures/adapt-tiny.yaml"


def _write_metrics(run_dir: Path, evals: list[tuple[int, object]]) -> Path:
    """metrics.jsonl as MetricsLogger writes it (a non-finite float as its text, e.g. "nan"), with
    a train record between the evaluations."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, loss in evals:
        rows.append({"kind": "train", "step": step, "time": 0.0, "loss": 9.0})
        rows.append({"kind": "eval", "step": step, "time": 0.0, "valid_final_loss": loss, "flops": 1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run_dir


# ---- the rule --------------------------------------------------------------------------------------


def test_the_final_loss_is_the_last_steps_and_a_run_without_one_is_refused(tmp_path):
    # Lower at step 2 than at the end: the pilot takes where the run ended, not its best point.
    assert lr_pilot.final_valid_loss(_write_metrics(tmp_path / "a", [(2, 1.0), (4, 3.5)])) == 3.5
    assert math.isnan(lr_pilot.final_valid_loss(_write_metrics(tmp_path / "b", [(2, 1.0), (4, "nan")])))
    assert lr_pilot.final_valid_loss(_write_metrics(tmp_path / "c", [(4, "inf")])) == math.inf
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="logged no validation loss"):
        lr_pilot.final_valid_loss(tmp_path / "d")


def test_the_rule_lowest_wins_a_tie_goes_to_the_smaller_rate_and_divergence_loses(tmp_path):
    def final(name, *evals):
        return lr_pilot.final_valid_loss(_write_metrics(tmp_path / name, list(evals)))

    # Lowest final loss wins, whatever the order of the rates.
    assert lr_pilot.choose({1e-2: final("a1", (4, 5.1)), 1e-3: final("a2", (4, 5.3)),
                            3e-3: final("a3", (4, 4.9))}) == 3e-3
    # A tie: the smaller rate, given before or after the larger.
    assert lr_pilot.choose({3e-3: final("b1", (4, 4.25)), 1e-3: final("b2", (4, 4.25))}) == 1e-3
    assert lr_pilot.choose({1e-3: final("c1", (4, 4.25)), 3e-3: final("c2", (4, 4.25))}) == 1e-3
    # A diverged run loses, however small what it logged before: nan, inf, or no loss at all (None:
    # its training stopped on a non-finite loss).
    assert lr_pilot.choose({1e-3: final("d1", (4, 6.0)), 3e-3: final("d2", (2, 0.1), (4, "nan")),
                            1e-2: final("d3", (4, "inf")), 3e-2: None}) == 1e-3
    assert lr_pilot.choose({1e-3: math.nan, 3e-3: None}) is None


def test_pilot_steps_default_to_a_quarter_of_each_methods_steps():
    checked = [CheckedMethod("full", 300, Path("m"), "full", "random"),
               CheckedMethod("minijoint", 2, Path("m"), "mini", "random"),
               CheckedMethod("minipost+focus", 900, Path("m"), "mini", "focus")]

    def steps(given):
        opts = ExperimentOptions(out=Path("o"), pretrained=Path("p"), target_data=Path("t"), pilot_steps=given)
        return lr_pilot.pilot_steps(opts, checked)

    assert steps(None) == {"full": 75, "minijoint": 1, "minipost+focus": 225}
    assert steps(10) == {"full": 10, "minijoint": 10, "minipost+focus": 10}
    # By a method's full name, or its base name for every init of it.
    assert steps({"full": 20, "minipost": 7}) == {"full": 20, "minijoint": 1, "minipost+focus": 7}
    assert steps({"minipost": 7, "minipost+focus": 8})["minipost+focus"] == 8


def test_markdown_table_and_reading_the_record(tmp_path):
    assert lr_pilot.read_lr_pilot(tmp_path) is None
    record = {"rule": lr_pilot.RULE, "steps": {"full": 50, "minijoint": 150}, "seed": 0, "grid": [0.001, 0.01],
              "methods": {"full": {"losses": {"0.001": 6.51234, "0.01": None}, "diverged": [0.01], "chosen": 0.001},
                          "minijoint": {"losses": {"0.001": 6.7, "0.01": 6.6}, "diverged": [], "chosen": 0.01}}}
    (tmp_path / "lr_pilot.json").write_text(json.dumps(record), encoding="utf-8")
    assert lr_pilot.read_lr_pilot(tmp_path) == record
    lines = lr_pilot.markdown(record)
    table = lines[lines.index("| method | lr 0.001 | lr 0.01 | chosen |"):]
    assert table[2:] == ["| full | 6.5123 | diverged | 0.001 |", "| minijoint | 6.7000 | 6.6000 | 0.01 |"]
    assert "full 50, minijoint 150" in "\n".join(lines) and lr_pilot.RULE in "\n".join(lines)


# ---- the plan, with a fake runner -----------------------------------------------------------------


def _settings(cmd: list[str]) -> dict[str, str]:
    """The key=value overrides of an adapt command (after --config FILE [--resume])."""
    return dict(a.split("=", 1) for a in cmd[cmd.index("--config") + 2:] if "=" in a)


def fake_runner(calls: list, losses: dict):
    """train_runs' runner without training: writes what a finished adapt run leaves that the study
    reads (config.yaml, metrics.jsonl, pack/pack.json), with the final validation loss
    losses[(method, rate)] ("diverge": the run stops on a non-finite loss, as adapt does: exit 2
    with its error line in the log). Real runs log loss 1.0."""
    def run(cmd, log_path):
        calls.append(cmd)
        s = _settings(cmd)
        run_dir = Path(s["train.out_dir"])
        config: dict = {}
        for key, value in s.items():
            node = config
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        method = "full" if s["adapt.through"] == "full" else "minijoint"
        loss = losses.get((method, float(s["optim.lr"])), 1.0) if run_dir.parent.name == "pilot" else 1.0
        if loss == "diverge":
            Path(log_path).write_text("error: non-finite loss at step 1 (loss=nan); last good checkpoint: none\n",
                                      encoding="utf-8")
            raise UserError(f"step failed (2) after 1 s: {' '.join(cmd[:3])} ...; log {log_path}: error: non-finite "
                            "loss at step 1 (loss=nan); last good checkpoint: none")
        _write_metrics(run_dir, [(int(s["train.steps"]), loss)])
        (run_dir / "pack").mkdir(exist_ok=True)
        (run_dir / "pack" / "pack.json").write_text("{}", encoding="utf-8")
        return 0.0
    return run


def test_the_pilot_plans_its_runs_and_the_real_runs_train_with_each_methods_choice(tmp_path, tiny_model_dir,
                                                                                    tiny_target_corpus):
    out = tmp_path / "study"
    opts = ExperimentOptions(out=out, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps={"full": 8, "minijoint": 12}, checkpoints=4,
                             seeds=(3, 4), config=TINY_CONFIG, overrides=["adapt.language=ny", "data.seq_len=16"],
                             lr_grid=(1e-2, 1e-3, 3e-3))
    # full: 3e-3 ends lowest, 1e-2 logs nan; minijoint: 1e-3 and 3e-3 tie, 1e-2 stops on a non-finite loss.
    losses = {("full", 1e-3): 5.5, ("full", 3e-3): 5.25, ("full", 1e-2): "nan",
              ("minijoint", 1e-3): 6.0, ("minijoint", 3e-3): 6.0, ("minijoint", 1e-2): "diverge"}
    calls: list = []
    runs = run_with_pilot(opts, runner=fake_runner(calls, losses), log=lambda s: None)

    pilot = [_settings(c) for c in calls[:6]]
    assert [(Path(s["train.out_dir"]).name) for s in pilot] == \
        [f"{m}-lr{lr}" for m in ("full", "minijoint") for lr in ("0.001", "0.003", "0.01")]
    assert all(Path(s["train.out_dir"]).parent == (out / "pilot").resolve() for s in pilot)
    for s, (steps, lr) in zip(pilot, [(2, "0.001"), (2, "0.003"), (2, "0.01"), (3, "0.001"), (3, "0.003"),
                                      (3, "0.01")]):
        # A quarter of the method's steps, the first seed, one checkpoint and its evaluation at the end,
        # the study's own --set, and the rate tried.
        assert (s["train.steps"], s["train.save_every"], s["train.eval_every"]) == (str(steps),) * 3
        assert (s["train.seed"], s["optim.lr"], s["adapt.language"], s["data.seq_len"]) == ("3", lr, "ny", "16")
    real = [_settings(c) for c in calls[6:]]
    assert [(Path(s["train.out_dir"]).name, s["optim.lr"], s["train.steps"]) for s in real] == [
        ("adapt-full-s3", "0.003", "8"), ("adapt-minijoint-s3", "0.001", "12"),
        ("adapt-full-s4", "0.003", "8"), ("adapt-minijoint-s4", "0.001", "12")]
    assert [s["train.save_every"] for s in real] == ["2", "3", "2", "3"]  # the real runs' checkpoints, as before
    assert {m: [d.name for d in dirs] for m, dirs in runs.items()} == \
        {"full": ["adapt-full-s3", "adapt-full-s4"], "minijoint": ["adapt-minijoint-s3", "adapt-minijoint-s4"]}

    record = json.loads((out / "lr_pilot.json").read_text(encoding="utf-8"))
    assert record == {"rule": lr_pilot.RULE, "steps": {"full": 2, "minijoint": 3}, "seed": 3,
                      "grid": [0.001, 0.003, 0.01],
                      "methods": {"full": {"losses": {"0.001": 5.5, "0.003": 5.25, "0.01": None}, "diverged": [0.01],
                                           "chosen": 0.003},
                                  "minijoint": {"losses": {"0.001": 6.0, "0.003": 6.0, "0.01": None},
                                                "diverged": [0.01], "chosen": 0.001}},
                      "first_seed_runs": {}}
    assert lr_pilot.read_lr_pilot(out) == record
    assert (out / "pilot" / "minijoint-lr0.01.diverged").is_file()

    # Again: every pilot run reused (the diverged one not trained again), every real run reused.
    calls.clear()
    run_with_pilot(opts, runner=fake_runner(calls, losses), log=lambda s: None)
    assert calls == []
    # Another pilot length: the pilot's runs were made with other settings, refused before training.
    with pytest.raises(UserError, match="full-lr0.001 holds an adaptation run made with other settings.*"
                                        "train.steps=2 \\(planned 5\\)"):
        run_with_pilot(dataclasses.replace(opts, pilot_steps=5), runner=fake_runner(calls, losses),
                        log=lambda s: None)
    # Another choice: the real runs made with 0.003 are refused.
    calls.clear()
    flipped = {**losses, ("full", 1e-3): 5.0}
    shutil.rmtree(out / "pilot" / "full-lr0.001")
    with pytest.raises(UserError, match="adapt-full-s3 holds an adaptation run made with other settings.*"
                                        "optim.lr=0.003 \\(planned 0.001\\)"):
        run_with_pilot(opts, runner=fake_runner(calls, flipped), log=lambda s: None)
    assert [Path(_settings(c)["train.out_dir"]).name for c in calls] == ["full-lr0.001"]
    assert lr_pilot.read_lr_pilot(out)["methods"]["full"]["chosen"] == 0.001


def test_a_whole_schedule_pilot_is_the_first_seeds_run(tmp_path, tiny_model_dir, tiny_target_corpus):
    """Pilot steps equal to a method's steps: its pilot runs are planned exactly as real runs (the
    study's checkpoints), and the chosen rate's run is the first seed's run, not trained again; a
    method with a short pilot is planned as before."""
    out = tmp_path / "study"
    opts = ExperimentOptions(out=out, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps={"full": 8, "minijoint": 12}, checkpoints=4,
                             seeds=(3, 4), config=TINY_CONFIG, overrides=["adapt.language=ny"],
                             lr_grid=(1e-3, 3e-3), pilot_steps={"full": 8, "minijoint": 3})
    losses = {("full", 1e-3): 5.5, ("full", 3e-3): 5.25, ("minijoint", 1e-3): 6.0, ("minijoint", 3e-3): 6.5}
    calls: list = []
    runs = run_with_pilot(opts, runner=fake_runner(calls, losses), log=lambda s: None)
    names = [Path(_settings(c)["train.out_dir"]).name for c in calls]
    assert names == ["full-lr0.001", "full-lr0.003", "minijoint-lr0.001", "minijoint-lr0.003",
                     "adapt-minijoint-s3", "adapt-full-s4", "adapt-minijoint-s4"]
    pilot = {n: _settings(c) for n, c in zip(names, calls)}
    # The whole schedule: the real runs' steps and checkpoints (8 steps in 4: one every 2).
    assert [(pilot[n]["train.steps"], pilot[n]["train.save_every"]) for n in ("full-lr0.001", "full-lr0.003")] == \
        [("8", "2")] * 2
    assert (pilot["minijoint-lr0.001"]["train.steps"], pilot["minijoint-lr0.001"]["train.save_every"]) == ("3", "3")
    # The pilot run of the chosen rate has exactly the settings the first seed's real run has, but its directory.
    real_s4 = pilot["adapt-full-s4"]
    chosen = pilot["full-lr0.003"]
    assert {k: v for k, v in chosen.items() if k not in ("train.out_dir", "train.seed")} == \
        {k: v for k, v in real_s4.items() if k not in ("train.out_dir", "train.seed")}
    assert chosen["train.seed"] == "3"
    assert runs["full"] == [out / "pilot" / "full-lr0.003", out / "adapt-full-s4"]
    assert runs["minijoint"] == [out / "adapt-minijoint-s3", out / "adapt-minijoint-s4"]
    record = lr_pilot.read_lr_pilot(out)
    assert record["first_seed_runs"] == {"full": str(out / "pilot" / "full-lr0.003")}
    assert "The pilot of full ran the whole schedule" in "\n".join(lr_pilot.markdown(record))
    # Again: nothing trains.
    calls.clear()
    assert run_with_pilot(opts, runner=fake_runner(calls, losses), log=lambda s: None) == runs and calls == []


def test_a_pilot_where_every_rate_diverges_stops_the_study(tmp_path, tiny_model_dir, tiny_target_corpus):
    opts = ExperimentOptions(out=tmp_path / "s", pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full",), steps={"full": 4}, seeds=(0,), config=TINY_CONFIG,
                             lr_grid=(1.0, 10.0))
    calls: list = []
    with pytest.raises(UserError, match="pilot of full diverged at every rate of --lr-grid 1.0 10.0"):
        run_with_pilot(opts, runner=fake_runner(calls, {("full", 1.0): "diverge", ("full", 10.0): "diverge"}),
                        log=lambda s: None)
    assert len(calls) == 2  # no real run trained
    assert lr_pilot.read_lr_pilot(tmp_path / "s")["methods"]["full"]["chosen"] is None


def test_a_pilot_run_failing_otherwise_stops_the_study(tmp_path, tiny_model_dir, tiny_target_corpus):
    opts = ExperimentOptions(out=tmp_path / "s", pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full",), steps={"full": 4}, seeds=(0,), config=TINY_CONFIG, lr_grid=(1e-3,))

    def crash(cmd, log_path):
        raise UserError("step failed (1) after 1 s: out of memory")

    with pytest.raises(UserError, match="out of memory"):
        run_with_pilot(opts, runner=crash, log=lambda s: None)
    assert not (tmp_path / "s" / "lr_pilot.json").exists()


# ---- the launcher's flags ------------------------------------------------------------------------


def test_launcher_flags_are_checked_before_anything_runs(tmp_path, capsys, tiny_model_dir, tiny_target_corpus):
    out = tmp_path / "study"
    base = ["--run-experiments", "--pretrained", str(tiny_model_dir), "--target-data", str(tiny_target_corpus),
            "--model", str(tiny_model_dir), "--config", str(REPO / TINY_CONFIG), "--seeds", "1", "--steps", "8",
            "--out", str(out)]
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "3e-3", "--set", "optim.lr=1e-3"],
                    "--set optim.lr and --lr-grid")
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "0", "1e-3"], "must be positive numbers, got 0.0")
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "0.001"], "names a rate twice")
    expect_rejected(capsys, study_cli.main, [*base, "--pilot-steps", "4"], "--pilot-steps needs --lr-grid")
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "--pilot-steps", "full=0"],
                    "--pilot-steps must be positive integers, got full=0")
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "--pilot-steps", "minijiont=3"],
                    "--pilot-steps names minijiont, which is no method")
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "--pilot-steps", "full=x"],
                    "--pilot-steps 'full=x': expected N or METHOD=N")
    # A pilot run's config is checked too: a --set the config refuses fails before anything trains.
    expect_rejected(capsys, study_cli.main, [*base, "--lr-grid", "1e-3", "--set", "optim.schedule=cubic"],
                    "optim.schedule must be linear|cosine|constant")
    expect_rejected(capsys, study_cli.main, ["--runs", f"full={tmp_path}", "--model", str(tiny_model_dir), "--lr-grid",
                                                    "1e-3", "--out", str(out)],
                    "--lr-grid / --pilot-steps apply to --run-experiments")
    assert not out.exists()


def test_pilot_steps_flag_parses_like_steps():
    methods = ("full", "minijoint")
    assert study_cli.parse_pilot_steps([], methods) is None
    assert study_cli.parse_pilot_steps(["5"], methods) == {"full": 5, "minijoint": 5}
    assert study_cli.parse_pilot_steps(["5", "minijoint=15"], methods) == {"full": 5, "minijoint": 15}
    assert study_cli.parse_pilot_steps(["minipost+focus=7"], methods) == {"minipost+focus": 7}


# ---- the spec's keys -------------------------------------------------------------------------------


def test_spec_keys_reach_the_study_command(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = specs.load_study_spec("quick", ["adapt.lr_grid=[1e-3, 3.0e-3, 0.01]",
                                           "adapt.pilot_steps={full: 50, minijoint: 150}"])
    assert spec.adapt.lr_grid == [0.001, 0.003, 0.01] and spec.adapt.pilot_steps == {"full": 50, "minijoint": 150}
    args = study_cli.build_parser().parse_args(specs.study_argv(spec, spec.languages[0]))
    assert args.lr_grid == [0.001, 0.003, 0.01]
    assert study_cli.parse_pilot_steps(args.pilot_steps, tuple(args.methods)) == {"full": 50, "minijoint": 150}
    # Without them the command is as before: no pilot.
    plain = study_cli.build_parser().parse_args(specs.study_argv(specs.load_study_spec("quick"),
                                                                 spec.languages[0]))
    assert (plain.lr_grid, plain.pilot_steps) == ([], [])


def test_bad_spec_values_are_refused_at_once_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        specs.load_study_spec("quick", ["adapt.lr_grid=[-1e-3, 1e-3, 0.001]",
                                        "adapt.pilot_steps={full: 0, minijiont: 3}",
                                        "adapt.set=[data.seq_len=64, optim.lr=1e-3]"])
    message = str(e.value)
    assert "\n" not in message
    for problem in ("adapt.lr_grid: learning rates must be positive, got -0.001",
                    "adapt.lr_grid lists 0.001 more than once", "adapt.pilot_steps.full must be positive, got 0",
                    "adapt.pilot_steps names minijiont, which is no method",
                    "adapt.set gives optim.lr and adapt.lr_grid asks the pilot to choose it"):
        assert problem in message, problem
    with pytest.raises(ConfigError, match="adapt.pilot_steps needs adapt.lr_grid"):
        specs.load_study_spec("quick", ["adapt.pilot_steps={full: 5}"])
    with pytest.raises(ConfigError, match="adapt.lr_grid\\[1\\]: expected a finite number"):
        specs.load_study_spec("quick", ["adapt.lr_grid=[1e-3, .nan]"])
    with pytest.raises(ConfigError, match="a sweep has no learning-rate pilot"):
        specs.load_study_spec("sweep", ["adapt.lr_grid=[1e-3]"])
    # Through the launcher: one `error:` line, exit status 2, nothing created. A spec of its own,
    # without a pipeline and with models that do not exist: were the rate let through, the launcher
    # would stop on the missing models (another line), never start a pipeline or a study.
    spec = tmp_path / "pilot.yaml"
    spec.write_text(f"models: {{pretrained: {tmp_path / 'none'}, classifiers: [{tmp_path / 'none'}]}}\n"
                    f"languages: [{{code: ny, data: {tmp_path / 'data'}}}]\nmethods: [full]\n"
                    f"adapt: {{lr_grid: [0, 1.0e-3]}}\nout: {tmp_path / 'out'}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "ds_minimodel.cli.study", "--spec", str(spec)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "adapt.lr_grid: learning rates must be positive, got 0" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ---- a tiny pilot end to end ---------------------------------------------------------------------




def test_a_tiny_pilot_end_to_end(tmp_path, tiny_model_dir, tiny_target_corpus):
    from ds_minimodel.training.metrics import read_metrics

    out = tmp_path / "study"
    opts = ExperimentOptions(out=out, pretrained=tiny_model_dir, target_data=tiny_target_corpus, methods=("full",),
                             steps={"full": 4}, checkpoints=2, seeds=(0,), config=TINY_CONFIG,
                             overrides=["adapt.language=ny"], lr_grid=(1e-4, 5e-2), pilot_steps=2)
    calls: list = []
    runs = run_with_pilot(opts, runner=in_process_runner(calls), log=lambda s: None)
    assert len(calls) == 3
    record = lr_pilot.read_lr_pilot(out)
    entry = record["methods"]["full"]
    for lr in ("0.0001", "0.05"):
        run_dir = out / "pilot" / f"full-lr{lr}"
        # One checkpoint, at the pilot's last step, and the validation loss the record holds.
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002"]
        (last,) = [r for r in read_metrics(run_dir, "eval") if r["step"] == 2]
        assert entry["losses"][lr] == last["valid_final_loss"] and math.isfinite(last["valid_final_loss"])
        assert yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["optim"]["lr"] == float(lr)
    assert entry["chosen"] == min((loss, float(lr)) for lr, loss in entry["losses"].items())[1]
    (real,) = runs["full"]
    assert yaml.safe_load((real / "config.yaml").read_text(encoding="utf-8"))["optim"]["lr"] == entry["chosen"]
    calls.clear()
    run_with_pilot(opts, runner=in_process_runner(calls), log=lambda s: None)
    assert calls == []


def test_a_tiny_whole_schedule_pilot_end_to_end(tmp_path, tiny_model_dir, tiny_target_corpus):
    """Through the real adapt launcher: a pilot as long as the runs trains one run per rate and
    nothing more for the first seed, and the run taken is the chosen rate's, with the study's
    checkpoints."""
    out = tmp_path / "study"
    opts = ExperimentOptions(out=out, pretrained=tiny_model_dir, target_data=tiny_target_corpus, methods=("full",),
                             steps={"full": 4}, checkpoints=2, seeds=(0,), config=TINY_CONFIG,
                             overrides=["adapt.language=ny"], lr_grid=(1e-4, 5e-2), pilot_steps=4)
    calls: list = []
    runs = run_with_pilot(opts, runner=in_process_runner(calls), log=lambda s: None)
    assert len(calls) == 2
    entry = lr_pilot.read_lr_pilot(out)["methods"]["full"]
    (run_dir,) = runs["full"]
    assert run_dir == out / "pilot" / f"full-lr{lr_pilot.lr_tag(entry['chosen'])}"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    assert (run_dir / "pack" / "pack.json").is_file()
