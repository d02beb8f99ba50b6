"""The command line as an installed package runs it (issue 24 item 4): thin launchers over
ds_minimodel.cli.<step>, the ds-minimodel console script's dispatch, configs found by name from any
directory, and subprocesses that launch modules rather than repository paths."""

import ast
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAUNCHERS = sorted(p for p in (REPO / "launchers").glob("*.py") if p.name != "__init__.py")
# The step modules as files on disk (not as the dispatcher lists them): what every check below
# holds the dispatcher and the launchers to.
CLI_FILES = sorted(p.stem for p in (REPO / "ds_minimodel" / "cli").glob("*.py")
                   if p.stem not in ("__init__", "__main__", "common"))


def test_every_launcher_is_thin():
    """A docstring, `from ds_minimodel.cli.<its own name> import main`, and the __main__ guard;
    nothing else, and no sys.path patching."""
    assert len(LAUNCHERS) >= 13
    for path in LAUNCHERS:
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text, path
        body = ast.parse(text).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), f"{path}: no docstring"
        assert f"launchers/{path.name} " in body[0].value.value, f"{path}: no usage line"
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [(n.module, [a.name for a in n.names]) for n in imports if isinstance(n, ast.ImportFrom)] == \
            [(f"ds_minimodel.cli.{path.stem}", ["main"])], path
        assert len(imports) == 1, f"{path}: imports something besides ds_minimodel.cli.{path.stem}"
        rest = [n for n in body[1:] if n not in imports]
        assert len(rest) == 1 and isinstance(rest[0], ast.If), f"{path}: more than the __main__ guard"
        assert ast.unparse(rest[0]) == "if __name__ == '__main__':\n    raise SystemExit(main())", path


def test_no_sys_path_patching_in_launchers_or_bench():
    hits = [f"{p.relative_to(REPO)}:{i}" for d in ("launchers", "bench") for p in sorted((REPO / d).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "sys.path" in line]
    assert hits == []


def test_each_launcher_has_its_module_and_a_dispatch_entry():
    from ds_minimodel.cli.__main__ import STEPS

    assert [p.stem for p in LAUNCHERS] == CLI_FILES
    assert sorted(STEPS) == CLI_FILES


# In process, runpy warns that the step's module is already imported (other tests imported it);
# a real `python -m` starts from a fresh interpreter, where that cannot happen.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("step", CLI_FILES)
def test_python_dash_m_help(step, capsys, monkeypatch):
    """`python -m ds_minimodel.cli.<step> --help` (run as python -m runs it: the module as __main__)
    prints the step's usage and exits 0."""
    monkeypatch.setattr(sys, "argv", [f"python -m ds_minimodel.cli.{step}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"ds_minimodel.cli.{step}", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_console_script_dispatch(capsys):
    from ds_minimodel.cli.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: ds-minimodel <step>")
    listed = re.findall(r"^  (\S+)  ", out, re.M)
    assert sorted(listed) == CLI_FILES

    with pytest.raises(SystemExit) as e:  # no step: the usage, and a failure
        main([])
    assert e.value.code == 2

    with pytest.raises(SystemExit) as e:
        main(["pretrian"])
    assert e.value.code == 2 and "unknown step 'pretrian'" in capsys.readouterr().err

    # A step's exit status passes through (prepare_data returns 2 on bad input).
    assert main(["prepare_data", "--text", "/nonexistent.txt", "--out", "/nonexistent/ds", "--vocab-size", "50"]) == 2
    assert "does not exist" in capsys.readouterr().err

    # prepare-data is prepare_data; the step's own parser answers, named after the step.
    with pytest.raises(SystemExit) as e:
        main(["prepare-data", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: ds-minimodel prepare-data") and "--recipe" in out


def test_setup_declares_the_console_script_and_the_shipped_configs():
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    target = re.search(r'"ds-minimodel = ([\w.]+):(\w+)"', text)
    assert target, "setup.py declares no ds-minimodel console script"
    module = __import__(target.group(1), fromlist=[target.group(2)])
    assert callable(getattr(module, target.group(2)))
    assert re.search(r'SHIPPED_FILES = \{"configs": \["\*.yaml"\], "ds_configs": \["\*.json"\]', text)


def test_dispatch_runs_from_another_directory(tmp_path):
    """The real thing in a subprocess: from a directory outside the checkout, with no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "ds_minimodel.cli", "summarize", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ds-minimodel summarize")


def test_shipped_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    from ds_minimodel import shipped

    monkeypatch.chdir(tmp_path)
    z0 = shipped.find("ds_configs/z0.json")
    assert z0.is_absolute() and z0.read_bytes() == (REPO / "ds_configs" / "z0.json").read_bytes()
    a_yaml = sorted((REPO / "configs").glob("*.yaml"))[0]
    assert shipped.find(f"configs/{a_yaml.name}").read_bytes() == a_yaml.read_bytes()
    # A file of that name here wins: a user's own copy.
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "z0.json").write_text("{}")
    assert shipped.find("ds_configs/z0.json") == Path("ds_configs/z0.json")
    # Anything else is left as given, for the loader's own error.
    assert shipped.find("configs/no-such.yaml") == Path("configs/no-such.yaml")
    assert shipped.find("elsewhere/x.yaml") == Path("elsewhere/x.yaml")
    assert shipped.find(None) is None


def test_pipeline_and_study_launch_modules_not_paths(tmp_path):
    from ds_minimodel.pipeline import PipelineOptions, plan_demo
    from ds_minimodel.study.experiments import train_runs

    steps = plan_demo(PipelineOptions(work=tmp_path / "w", data_root=tmp_path / "d"))
    assert steps
    for step in steps:
        cmd = [str(c) for c in step.cmd]
        assert not any("launchers" in c for c in cmd), cmd
        if Path(cmd[0]).name == "deepspeed":
            i = cmd.index("--module")
            assert cmd[i + 1] == "ds_minimodel.cli.pretrain", cmd
        else:
            assert cmd[0] == sys.executable and cmd[1] == "-m" and cmd[2].startswith("ds_minimodel.cli."), cmd

    calls = []
    run_dir = tmp_path / "adapt-full-s0"
    train_runs([(run_dir, ["train.steps=3", "train.save_every=1", "train.seed=0"])], "configs/adapt-demo.yaml",
               "ds_configs/z0.json", tmp_path / "logs", runner=lambda cmd, log: calls.append(cmd), log=lambda s: None)
    (cmd,) = calls
    assert cmd[:3] == [sys.executable, "-m", "ds_minimodel.cli.adapt"]
    assert cmd[cmd.index("--deepspeed") + 1] == str(REPO / "ds_configs" / "z0.json")


def _tiny_pretrain_config() -> Path:
    found = [p for d in ("configs", "tests/fixtures") for p in sorted((REPO / d).glob("*tiny*.yaml"))
             if "pretrain" in p.name or p.name == "pretrain-tiny.yaml"]
    assert found, "no tiny pretraining config"
    return found[0]


def test_deepspeed_module_launch_from_another_directory(tiny_corpus, tmp_path):
    """`deepspeed --module ds_minimodel.cli.pretrain`, as the pipeline launches pretraining: one
    rank, from a directory outside the checkout, the DeepSpeed config named as shipped."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port", str(_free_port()),
           "--module", "ds_minimodel.cli.pretrain", "--deepspeed", "ds_configs/z0.json",
           "--config", str(_tiny_pretrain_config()), f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'run'}",
           "train.steps=2", "train.save_every=0"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "model.pt").is_file()


def _free_port() -> int:
    from ds_minimodel.subprocess_runner import free_port

    return free_port()
