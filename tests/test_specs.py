"""Studies and pipelines as files (ds_minimodel/specs.py, studies/): every shipped spec loads and
plans; a spec says what the Makefile's commands said before (the old commands are written out
here as the reference, parsed by the launchers' own parsers); problems are reported all at once,
in one line, before anything runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ds_minimodel import specs
from ds_minimodel.cli import pipeline as pipeline_cli
from ds_minimodel.cli import study as study_cli
from ds_minimodel.config import ConfigError
from tests.conftest import REPO

STUDIES = sorted(p.stem for p in (REPO / "studies").glob("*.yaml"))
PIPELINES = sorted(p.stem for p in (REPO / "studies" / "pipelines").glob("*.yaml"))
# Pipelines whose plan reads a checkpoint that is not in a checkout (a package extra, a conversion).
CHECKPOINT_PIPELINES = {"pretrained", "multilingual"}


def test_the_shipped_specs_are_the_former_make_targets():
    assert {"demo", "languages", "multilingual", "pretrained", "quick", "smoke", "sweep"} <= set(STUDIES)
    assert {"demo", "languages", "multilingual", "pretrained", "quick", "smoke"} <= set(PIPELINES)


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_spec_plans(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = specs.load_study_spec(name)
    if spec.pipeline in CHECKPOINT_PIPELINES:
        pytest.skip("its pipeline plans from a checkpoint")
    study_cli.main(["--spec", name, "--plan"])
    out = capsys.readouterr().out
    assert out.startswith(f"# {spec.description}\n")
    for lang in spec.languages:
        assert f"[study-{lang.code}] " in out
    # Each study command the plan prints parses with the study launcher's own parser.
    for line in out.splitlines():
        if line.startswith("[study-"):
            argv = line.split(" -m ds_minimodel.cli.study ", 1)[1].split()
            study_cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("name", PIPELINES)
def test_every_pipeline_spec_loads_and_plans(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = specs.load_pipeline_spec(name)
    argv = specs.pipeline_argv(spec)
    pipeline_cli.build_parser().parse_args(argv)
    if name in CHECKPOINT_PIPELINES:
        return
    pipeline_cli.main(["--spec", name, "--plan"])
    out = capsys.readouterr().out
    assert "[finetune] " in out and "[pretrain] " in out


def _parsed(parser, argv):
    return vars(parser.parse_args([str(a) for a in argv]))


def test_study_quick_spec_is_the_former_make_study_quick():
    # make study-quick's study command before the specs (Makefile at 040b9d4).
    w = "runs/pipeline-quick"
    old = ["--run-experiments", "--pretrained", f"{w}/pretrain/final", "--baseline-pretrained",
           f"{w}/regular/pretrain/final", "--minipost", f"{w}/regular/minipost/final", "--model",
           f"{w}/regular/finetune/final", f"{w}/finetune/final", "--target-data", "data/bible-ny",
           "--out", "runs/study-quick", "--methods", "full", "minijoint", "minipost", "--steps", "full=200",
           "minijoint=600", "minipost=600", "--checkpoints", "6", "--seeds", "3", "--set", "data.seq_len=64",
           "--eval-examples", "600", "--loss-sequences", "64"]
    spec = specs.load_study_spec("quick")
    new = _parsed(study_cli.build_parser(), specs.study_argv(spec, spec.languages[0]))
    expected = _parsed(study_cli.build_parser(), old)
    # The one addition: the pack records its language's code (it recorded the default "xx").
    assert new.pop("overrides") == ["adapt.language=ny", "data.seq_len=64"]
    expected.pop("overrides")
    assert new == expected


def test_pipeline_quick_spec_is_the_former_make_study_quick_pipeline():
    old = ["--work", "runs/pipeline-quick", "--models-only", "--nproc", "2", "--pretrain-config",
           "configs/pretrain-quick.yaml", "--minipost-config", "configs/minipost-quick.yaml",
           "--pretrain-steps", "500", "--minipost-steps", "100", "--finetune-steps", "200"]
    new = specs.pipeline_argv(specs.load_pipeline_spec("quick"))
    assert _parsed(pipeline_cli.build_parser(), new) == _parsed(pipeline_cli.build_parser(), old)


def test_languages_spec_is_the_former_make_study_languages():
    spec = specs.load_study_spec("languages")
    commands = specs.study_commands(spec)
    assert [c.name for c in commands] == ["data-sw", "study-sw", "data-tl", "study-tl", "data-id", "study-id",
                                          "average"]
    # data/bible-<code>-v8000 at most 8,000 pieces, as the target's for-loop prepared it.
    assert commands[0].cmd[3:] == ["--recipe", "bible-sw", "--out", "data/bible-sw-v8000", "--vocab-size", "8000",
                                   "--vocab-limit", "soft"]
    assert commands[-1].cmd[3:] == ["--average", "runs/study-languages/sw", "runs/study-languages/tl",
                                    "runs/study-languages/id", "--out", "runs/study-languages"]
    args = _parsed(study_cli.build_parser(), commands[1].cmd[3:])
    assert args["out"] == "runs/study-languages/sw" and args["target_data"] == "data/bible-sw-v8000"
    assert args["methods"] == ["full", "minijoint"] and args["steps"] == ["full=300", "minijoint=900"]
    assert args["overrides"] == ["adapt.language=sw", "data.seq_len=64"]


def test_sweep_spec_is_the_former_make_study_sweep():
    old = ["--sweep", "k=1,2,3,4", "vocab=8000,32000", "--pretrained", "runs/pipeline/regular/pretrain/final",
           "--model", "runs/pipeline/regular/finetune/final", "--english-data", "data/bible-en", "--target-recipe",
           "bible-ny", "--out", "runs/study/sweep", "--into-study", "runs/study", "--steps", "full=150", "--set",
           "data.seq_len=64", "--checkpoints", "6", "--seeds", "3", "--eval-examples", "600",
           "--loss-sequences", "64"]
    spec = specs.load_study_spec("sweep")
    new = _parsed(study_cli.build_parser(), specs.study_argv(spec, spec.languages[0]))
    expected = _parsed(study_cli.build_parser(), old)
    assert new.pop("overrides") == ["adapt.language=ny", "data.seq_len=64"]
    expected.pop("overrides")
    assert new == expected


def test_overrides_change_a_spec_and_unknown_keys_are_refused():
    spec = specs.load_study_spec("quick", ["seeds=1", "out=runs/x", "steps.full=50"])
    assert (spec.seeds, spec.out, spec.steps["full"]) == (1, "runs/x", 50)
    with pytest.raises(ConfigError, match="unknown key sedes"):
        specs.load_study_spec("quick", ["sedes=1"])


def test_every_problem_of_a_spec_is_reported_at_once_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {pretrained: runs/p, classifiers: [runs/c]}\n"
                   "languages: [{code: ny, data: data/bible-ny}, {code: ny}]\n"
                   "methods: [full, minijiont]\nsteps: {full: 0}\nseeds: three\ncheckpints: 2\n"
                   "adapt: {set: [data.seq_lne=64]}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        specs.load_config(specs.StudySpec, bad)
    message = str(e.value)
    assert "\n" not in message
    for problem in ("unknown key checkpints", "seeds: expected int, got 'three'", "unknown method minijiont",
                    "languages[1] (ny) needs data", "languages lists ny more than once", "steps.full must be positive"):
        assert problem in message, problem
    # Through the launcher: one `error:` line, exit status 2, nothing created.
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ds_minimodel.cli.study", "--spec", str(bad), f"out={out}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "minijiont" in proc.stderr
    assert not out.exists()


def test_a_bad_adaptation_override_in_a_spec_fails_while_loading(tmp_path):
    spec = (REPO / "studies" / "quick.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "quick.yaml"
    bad.write_text(spec.replace("[data.seq_len=64]", "[data.seq_lne=64]"), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key data.seq_lne"):
        specs.load_study_spec(str(bad))


def test_missing_models_name_the_command_that_builds_them(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ds_minimodel.cli.study", "--spec", "demo",
                           f"out={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: study demo needs runs/pipeline/pretrain/final")
    assert proc.stderr.rstrip().endswith("run make pipeline first")
    assert not (tmp_path / "out").exists()


def test_a_spec_is_found_by_name_or_path_and_a_missing_one_is_named(tmp_path):
    assert specs.spec_path("quick", "studies").resolve() == REPO / "studies" / "quick.yaml"
    assert specs.spec_path("studies/quick.yaml", "studies").resolve() == (REPO / "studies" / "quick.yaml")
    with pytest.raises(ConfigError, match="spec nosuch: no file studies/nosuch.yaml"):
        specs.spec_path("nosuch", "studies")
    with pytest.raises(ConfigError, match="kind pretrained needs source"):
        bad = tmp_path / "p.yaml"
        bad.write_text("kind: pretrained\n", encoding="utf-8")
        specs.load_pipeline_spec(str(bad))


def test_pipeline_spec_keys_of_another_kind_are_refused(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("kind: demo\nsource: minilm\nlanguages: [sw]\nsteps: {adapt: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        specs.load_pipeline_spec(str(bad))
    for problem in ("languages applies to kind languages, not demo", "source applies to kind pretrained",
                    "steps.adapt must be positive"):
        assert problem in str(e.value)


def test_list_and_dict_fields_are_checked_element_by_element(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("models: {pretrained: p, classifiers: [c, 3]}\nlanguages: [{code: ny, data: d}]\n"
                   "steps: {full: many}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        specs.load_config(specs.StudySpec, bad)
    assert "models.classifiers[1]: expected str, got 3" in str(e.value)
    assert "steps.full: expected int, got 'many'" in str(e.value)


def test_spec_files_ship_with_the_package():
    # setup.py ships studies/*.yaml and studies/pipelines/*.yaml (package data of ds_minimodel.studies).
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    assert '"studies": ["*.yaml", "pipelines/*.yaml"]' in text
    assert Path(specs.spec_path("smoke", "studies/pipelines")).is_file()


def test_a_language_with_a_given_tokenizer_is_prepared_without_a_vocabulary_size(tmp_path):
    """prepare_data refuses --vocab-size beside --cipher-tokenizer (the every-row cipher dataset):
    the spec leaves it out, and keeps it for a tokenizer the recipe trains."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "models": {"pretrained": "runs/body/final", "classifiers": ["runs/c"]},
        "languages": [{"code": "en-cipher", "data": "data/src", "recipe": "bible-en-cipher",
                       "prepare_args": ["--cipher-tokenizer", "data/bible-en-body"]},
                      {"code": "ny", "data": "data/ny", "recipe": "bible-ny"}],
        "methods": ["full"], "out": "runs/x"}))
    prepare = {c.name: [str(a) for a in c.cmd] for c in specs.study_commands(specs.load_study_spec(str(spec_file)))
               if c.name.startswith("data-")}
    assert "--vocab-size" not in prepare["data-en-cipher"] and "--cipher-tokenizer" in prepare["data-en-cipher"]
    assert prepare["data-ny"][prepare["data-ny"].index("--vocab-size") + 1] == "8000"


def _waiting_command(tmp_path, me: str, other: str) -> list[str]:
    """Marks `me` started, then waits (up to 60 s) for `other` to start: it succeeds only when the
    two run at the same time. Records the OMP_NUM_THREADS it was given."""
    code = (f"import os, pathlib, time; d = pathlib.Path({str(tmp_path)!r}); (d / '{me}.started').touch(); "
            f"(d / '{me}.threads').write_text(os.environ.get('OMP_NUM_THREADS', '')); t = time.time()\n"
            f"while not (d / '{other}.started').exists():\n"
            f"    assert time.time() - t < 60, 'never ran beside {other}'; time.sleep(0.05)\n"
            f"print('{me} saw {other}')")
    return [sys.executable, "-c", code]


def test_with_jobs_the_languages_run_side_by_side_each_with_its_share_of_the_cores(tmp_path, monkeypatch):
    """jobs=2: two languages' commands overlap (each waits for the other to start), each gets
    cores / 2 threads and its output in its own log; the command after them (the average) runs
    only once both have finished."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(specs.os, "cpu_count", lambda: 4)
    logs = {code: tmp_path / "logs" / f"{code}.log" for code in ("a", "b")}
    after = [sys.executable, "-c", f"import pathlib; d = pathlib.Path({str(tmp_path)!r}); "
             "assert (d / 'a.done').exists() and (d / 'b.done').exists(); (d / 'average').touch()"]
    done = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()"]
    commands = [specs.Command("study-a", _waiting_command(tmp_path, "a", "b"), lane="a", log=logs["a"]),
                specs.Command("done-a", [*done, str(tmp_path / "a.done")], lane="a", log=logs["a"]),
                specs.Command("study-b", _waiting_command(tmp_path, "b", "a"), lane="b", log=logs["b"]),
                specs.Command("done-b", [*done, str(tmp_path / "b.done")], lane="b", log=logs["b"]),
                specs.Command("average", after)]
    specs.run_commands(commands, jobs=2)
    assert (tmp_path / "average").exists()
    assert (tmp_path / "a.threads").read_text() == (tmp_path / "b.threads").read_text() == "2"
    assert "a saw b" in logs["a"].read_text() and "b saw a" in logs["b"].read_text()


def test_a_failing_language_stops_only_itself_and_is_named_after_the_others_finish(tmp_path):
    fail = [sys.executable, "-c", "import sys; print('bad corpus'); sys.exit(3)"]
    touch = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()"]
    commands = [specs.Command("study-a", fail, lane="a", log=tmp_path / "a.log"),
                specs.Command("after-a", [*touch, str(tmp_path / "a-after")], lane="a", log=tmp_path / "a.log"),
                specs.Command("study-b", [*touch, str(tmp_path / "b-ran")], lane="b", log=tmp_path / "b.log"),
                specs.Command("average", [*touch, str(tmp_path / "average")])]
    with pytest.raises(specs.UserError, match=r"\[study-a\] exited 3 .*a\.log: bad corpus"):
        specs.run_commands(commands, jobs=2)
    assert (tmp_path / "b-ran").exists()
    assert not (tmp_path / "a-after").exists() and not (tmp_path / "average").exists()


def test_a_spec_puts_each_language_in_its_own_lane_and_refuses_zero_jobs(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "models": {"pretrained": "runs/body/final", "classifiers": ["runs/c"]},
        "languages": [{"code": "de", "recipe": "bible-de"}, {"code": "ny", "data": "data/ny"}],
        "methods": ["full"], "out": "runs/x", "jobs": 2}))
    commands = specs.study_commands(specs.load_study_spec(str(spec_file)))
    assert [(c.name, c.lane) for c in commands] == [("data-de", "de"), ("study-de", "de"), ("study-ny", "ny"),
                                                   ("average", None)]
    assert commands[1].log == Path("runs/x/logs/de.log")
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        specs.load_study_spec(str(spec_file), ["jobs=0"])
