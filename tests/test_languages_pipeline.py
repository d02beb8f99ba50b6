"""`make pipeline PIPELINE=languages` (launchers/pipeline.py --languages): the plan's commands, checked
without training (the multi-language job itself is tests/test_adapt_languages.py's; the report,
tests/test_report.py's), and bad language lists refused before anything is written."""

import pytest

from ds_minimodel.pipeline import METHODS, PipelineOptions, plan_languages
from tests.helpers import expect_rejected


def test_one_multi_language_job_per_method_and_every_pack_evaluated(tmp_path):
    opts = PipelineOptions(work=tmp_path / "w", data_root=tmp_path / "d", reuse_pretrain=tmp_path / "demo",
                           adapt_steps=300, language_vocab=4000, extra={"adapt": ["data.seq_len=64"]})
    steps = {s.name: [str(c) for c in s.cmd] for s in plan_languages(opts, ["sw", "tl", "vi"])}
    assert list(steps) == ["data-en", "data-sw", "data-tl", "data-vi", "pretrain", "minipost",
                           "adapt-full", "adapt-minijoint", "adapt-minipost", "finetune", "evaluate"]
    assert steps["data-tl"][-8:] == ["--recipe", "bible-tl", "--out", str(tmp_path / "d" / "bible-tl-v4000"),
                                     "--vocab-size", "4000", "--vocab-limit", "soft"]
    assert f"train.out_dir={tmp_path / 'demo'}" in steps["pretrain"]  # reused: skipped once it is finished
    body = {"full": (tmp_path / "demo" / "final", "full"), "minijoint": (tmp_path / "demo" / "final", "mini"),
            "minipost": (tmp_path / "w" / "minipost" / "final", "mini")}
    for m in METHODS:
        cmd = steps[f"adapt-{m}"]
        assert f"adapt.model_dir={body[m][0]}" in cmd and f"adapt.through={body[m][1]}" in cmd
        assert "adapt.languages=[sw,tl,vi]" in cmd and f"data.path={tmp_path / 'd' / 'bible-{lang}-v4000'}" in cmd
        assert cmd[-2:] == ["train.steps=300", "data.seq_len=64"]
    evaluate = steps["evaluate"]
    packs = [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--pack"]
    assert packs == [str(tmp_path / "w" / f"adapt-{m}" / "packs" / c) for m in METHODS for c in ("sw", "tl", "vi")]


@pytest.mark.parametrize("languages, needle", [
    ("sw,xx", "language 'xx' has no Bible here"),
    ("sw,tl,sw", "--languages lists sw more than once"),
    ("en,sw", "en is the source language"),
    (",", "--languages: no language given"),
])
def test_bad_language_lists_are_refused_before_anything_is_written(languages, needle, tmp_path, capsys):
    from launchers.pipeline import main

    work, data = tmp_path / "w", tmp_path / "d"
    expect_rejected(capsys, main, ["--work", str(work), "--data-root", str(data), "--languages", languages], needle)
    assert not work.exists() and not data.exists()


def test_languages_plan_prints_and_language_options_stay_with_it(tmp_path, capsys):
    from launchers.pipeline import main

    main(["--work", str(tmp_path / "w"), "--languages", "default", "--plan"])
    out = capsys.readouterr().out
    assert "adapt.languages=[sw,tl,id,vi,tr,hi,fa,ar,ru,zh]" in out and out.count("[data-") == 11
    assert not (tmp_path / "w").exists()
    expect_rejected(capsys, main, ["--work", str(tmp_path / "w"), "--language-vocab", "4000"], "applies to --languages")
    expect_rejected(capsys, main, ["--work", str(tmp_path / "w"), "--languages", "sw", "--from-pretrained"],
                    "--languages applies to the demo pipeline")


def test_demo_pipeline_plans_the_regular_model_branch(tmp_path):
    """The paper's comparison: a regular model (the MiniJoint pretraining without the mid head,
    same budget) in work/regular, MiniPost and the standard baseline from it, its own fine-tuning
    and transfer; the MiniJoint branch as before."""
    from ds_minimodel.pipeline import plan_demo

    work, data = tmp_path / "w", tmp_path / "d"
    opts = PipelineOptions(work=work, data_root=data, extra={"pretrain": ["optim.lr=1e-4"]})
    steps = {s.name: [str(c) for c in s.cmd] for s in plan_demo(opts)}
    regular = [n for n in steps if n.startswith("regular-")]
    assert regular == ["regular-pretrain", "regular-minipost", "regular-adapt-full", "regular-adapt-minipost",
                       "regular-finetune", "regular-evaluate"]
    mj, reg = steps["pretrain"], steps["regular-pretrain"]
    assert reg[-2:] == ["model.mini_depth=null", "optim.lr=1e-4"]  # the user's extras still win
    assert [a for a in mj if not a.startswith("train.out_dir")] == \
        [a for a in reg if not a.startswith("train.out_dir") and a != "model.mini_depth=null"]
    r = work / "regular"
    assert f"train.out_dir={r / 'pretrain'}" in reg
    assert f"minipost.source={r / 'pretrain' / 'final'}" in steps["regular-minipost"]
    assert {f"adapt.model_dir={r / 'pretrain' / 'final'}", "adapt.through=full"} <= set(steps["regular-adapt-full"])
    assert {f"adapt.model_dir={r / 'minipost' / 'final'}", "adapt.through=mini"} <= set(steps["regular-adapt-minipost"])
    assert f"finetune.model_dir={r / 'pretrain' / 'final'}" in steps["regular-finetune"]
    evaluate = steps["regular-evaluate"]
    assert [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--pack"] == \
        [str(r / "adapt-full" / "pack"), str(r / "adapt-minipost" / "pack")]
    assert evaluate[-2:] == ["--out", str(r / "transfer.json")]
    assert f"adapt.model_dir={work / 'pretrain' / 'final'}" in steps["adapt-minijoint"]  # MiniJoint's own model
    assert not any(n.startswith("regular-") for n in (s.name for s in plan_demo(
        PipelineOptions(work=work, data_root=data, regular=False))))


def test_models_only_plans_what_a_study_needs_with_its_configs(tmp_path, capsys):
    """make study-quick's models: both pretrainings with the given YAML (the regular one still
    without the mid head), the regular model's MiniPost with the given YAML, both fine-tunings;
    no adaptation, transfer or MiniJoint-branch MiniPost."""
    from launchers.pipeline import main
    from ds_minimodel.pipeline import plan_demo

    opts = PipelineOptions(work=tmp_path / "w", data_root=tmp_path / "d", models_only=True,
                           pretrain_config="configs/pretrain-quick.yaml", minipost_config="configs/minipost-quick.yaml")
    steps = {s.name: [str(c) for c in s.cmd] for s in plan_demo(opts)}
    assert list(steps) == ["data-en", "data-ny", "pretrain", "finetune", "regular-pretrain", "regular-minipost",
                           "regular-finetune"]
    for name in ("pretrain", "regular-pretrain"):
        assert steps[name][steps[name].index("--config") + 1] == "configs/pretrain-quick.yaml"
    assert steps["regular-pretrain"][-1] == "model.mini_depth=null"
    assert "configs/minipost-quick.yaml" in steps["regular-minipost"]
    without_regular = [s.name for s in plan_demo(PipelineOptions(work=tmp_path / "w", data_root=tmp_path / "d",
                                                                 models_only=True, regular=False))]
    assert without_regular == ["data-en", "data-ny", "pretrain", "minipost", "finetune"]
    expect_rejected(capsys, main, ["--work", str(tmp_path / "w"), "--models-only", "--from-pretrained"],
                    "--models-only: for the demo pipeline")


def test_deepspeed_steps_get_a_free_master_port():
    """Two pipelines on one machine: each deepspeed launch gets its own free rendezvous port
    (both used to take 29500; the second failed with EADDRINUSE); other commands and an explicit
    --master_port are left alone."""
    import socket

    from ds_minimodel.subprocess_runner import with_free_port

    with socket.socket() as held:  # a port in use, as a running pipeline's rendezvous would be
        held.bind(("127.0.0.1", 0))
        held.listen()
        cmd = with_free_port(["/venv/bin/deepspeed", "--num_gpus", "2", "launchers/pretrain.py"])
        assert cmd[:2] == ["/venv/bin/deepspeed", "--master_port"] and cmd[3:] == ["--num_gpus", "2", "launchers/pretrain.py"]
        port = int(cmd[2])
        assert port != held.getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out
    python = ["/venv/bin/python", "launchers/minipost.py"]
    assert with_free_port(python) == python
    explicit = ["deepspeed", "--master_port", "29511", "launchers/pretrain.py"]
    assert with_free_port(explicit) == explicit
