"""Bad input, across every launcher: one clear line naming the fault, exit status 2, no
traceback, and no existing file changed (the directory trees involved are hashed before and
after).

Most cases call a launcher's main() in-process (they fail before any process group exists, so
they cost milliseconds); the `cli` ones run the real launcher as a subprocess, which also shows
that nothing but that one line reaches stderr. Environment faults are real where this machine
allows it: a read-only file system is a read-only tmpfs mount and a full disk a tiny tmpfs
(root can mount; tests run as root in CI), with an injected ENOSPC (DSM_FAULT) as the fallback.
Root ignores permission bits, so "unwritable" is also shown as a path under a regular file.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from ds_minimodel.tokenizers import load_tokenizer
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import disk_full_run, expect_rejected, expect_rejected_cli, tree_hash


@pytest.fixture
def pretrain_main():
    from launchers.pretrain import main

    return main


def args(data, out, *extra, ds="ds_configs/z0.json", config="configs/pretrain-tiny.yaml"):
    return ["--deepspeed", str(REPO / ds), "--config", str(REPO / config) if config else None,
            f"data.path={data}", f"train.out_dir={out}", *extra]


def test_malformed_yaml(tmp_path, capsys, pretrain_main, tiny_corpus):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {hidden_size: 32\ntrain: [", encoding="utf-8")
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", config=bad), "bad.yaml", "not valid YAML")


def test_unknown_keys_all_reported_at_once(tmp_path, capsys, pretrain_main, tiny_corpus):
    line = expect_rejected(capsys, pretrain_main,
                           args(tiny_corpus, tmp_path / "o", "model.hiden_size=3", "train.stepz=4", "optim.lr=-1"),
                           "model.hiden_size", "train.stepz")
    assert "3 config problem(s)" in line


def test_wrong_type(tmp_path, capsys, pretrain_main, tiny_corpus):
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", "model.num_layers=four"),
                    "model.num_layers", "expected int")


@pytest.mark.parametrize("k", [0, 4, 7])
def test_mini_depth_out_of_range(tmp_path, capsys, pretrain_main, tiny_corpus, k):
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", f"model.mini_depth={k}"),
                    "model.mini_depth", "1..3")


def test_batch_triple_does_not_multiply_out(tmp_path, capsys, pretrain_main, tiny_corpus):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4,
                              "gradient_accumulation_steps": 1}))
    expect_rejected(capsys, pretrain_main,
                    args(tiny_corpus, tmp_path / "o", "train.micro_batch_size=null", "train.grad_accum=null", ds=ds),
                    "train_batch_size 10", "world size 1")


def test_malformed_deepspeed_json(tmp_path, capsys, pretrain_main, tiny_corpus):
    ds = tmp_path / "ds.json"
    ds.write_text("{\"zero_optimization\": {\"stage\": 3,}")
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", ds=ds), "ds.json", "not valid JSON")


def test_fp16_refused(tmp_path, capsys, pretrain_main, tiny_corpus):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"fp16": {"enabled": True}}))
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", ds=ds), "fp16")


@pytest.mark.parametrize("override, key", [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("data.mask_prob=.nan", "data.mask_prob"),
    ("model.mid_head_weight=-.inf", "model.mid_head_weight"), ("optim.grad_clip=inf", "optim.grad_clip"),
], ids=["lr-nan", "lr-inf", "mask-prob-nan", "mid-weight-minus-inf", "grad-clip-inf-as-text"])
def test_non_finite_config_values(tmp_path, capsys, pretrain_main, tiny_corpus, override, key):
    """nan passes every range check (nan <= 0 is False): it must be refused as a value, not end
    in torch's traceback at the first step."""
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", override), key, "finite number")


@pytest.mark.parametrize("text, needles", [
    ('{"zero_optimization": {"stage": 7}}', ["zero_optimization.stage", "got 7"]),
    ('{"zero_optimization": {"stage": "three"}}', ["zero_optimization.stage", "'three'"]),
    ('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}',
     ["zero_optimization.offload_optimizer.device", "'cpu'", "got 'gpu'"]),
    ('{"zero_optimization": {"stage": 2, "reduce_bucket_size": NaN}}',
     ["zero_optimization.reduce_bucket_size", "finite number"]),
    ('{"zero_optimization": {"stage": 3, "stage3_max_live_parameters": Infinity}}',
     ["stage3_max_live_parameters", "finite number"]),
    ('{"zero_optimization": {"stage": 2, "overlap_comms": true}}', ["zero_optimization.overlap_comms", "Extra inputs"]),
], ids=["stage-7", "stage-text", "offload-device", "nan-literal", "infinity-literal", "misspelt-zero-key"])
def test_deepspeed_json_values_it_cannot_hold(tmp_path, capsys, pretrain_main, tiny_corpus, text, needles):
    ds = tmp_path / "ds.json"
    ds.write_text(text)
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", ds=ds), "ds.json", *needles)


def test_cli_stage_7_and_lr_nan_each_one_line(tmp_path, tiny_corpus):
    """The two values that ended in tracebacks (pydantic's, torch's), through the real launcher."""
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 7}}')
    expect_rejected_cli("pretrain", args(tiny_corpus, tmp_path / "o", ds=ds), "zero_optimization.stage", "got 7",
                        watch=[tmp_path])
    expect_rejected_cli("pretrain", args(tiny_corpus, tmp_path / "o", "optim.lr=nan"), "optim.lr", "finite",
                        watch=[tmp_path])


def test_missing_corpus(tmp_path, capsys, pretrain_main):
    expect_rejected(capsys, pretrain_main, args(tmp_path / "nowhere", tmp_path / "o"), "nowhere", "does not exist")


def test_directory_that_is_not_a_corpus(tmp_path, capsys, pretrain_main):
    (tmp_path / "empty").mkdir()
    expect_rejected(capsys, pretrain_main, args(tmp_path / "empty", tmp_path / "o"), "index.json")


def test_tokenizer_vocab_mismatch(tmp_path, capsys, pretrain_main, tiny_corpus):
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", "model.vocab_size=999"),
                    "model.vocab_size 999", "200")


def test_corpus_too_small_for_a_batch(tmp_path, capsys, pretrain_main, tiny_corpus):
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", "train.micro_batch_size=100000"),
                    "fewer than one global batch")


def test_output_dir_of_another_run_is_not_touched(tmp_path, capsys, pretrain_main, tiny_corpus):
    out = tmp_path / "o"
    (out / "checkpoints" / "step_00000005").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step_00000005")
    (out / "metrics.jsonl").write_text("{}\n")
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, out), "already holds a run", "--resume", watch=[out])


def _resume_with(rank, data, out, extra):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.steps=2", *extra])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"), resume=bool(extra))


def test_resume_with_checkpoint_of_another_shape(tmp_path, tiny_corpus):
    out = tmp_path / "o"
    run_ranks(_resume_with, 1, args=(tiny_corpus, out, []))
    before = tree_hash(out)
    with pytest.raises(AssertionError) as exc:
        run_ranks(_resume_with, 1, args=(tiny_corpus, out, ["model.hidden_size=48", "train.steps=4"]))
    assert "UserError" in str(exc.value) and "different model (differs in: hidden_size)" in str(exc.value)
    assert tree_hash(out) == before


# ---- output directories: unwritable, read-only, full ------------------------------------------

def test_output_dir_under_a_regular_file(tmp_path, capsys, pretrain_main, tiny_corpus):
    (tmp_path / "afile").write_text("not a directory")
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "afile" / "run"),
                    "train.out_dir", "afile is not a directory", watch=[tmp_path])


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> a fresh tmpfs mounted at tmp_path/name (unmounted after)."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_read_only_file_system(tmp_path, capsys, pretrain_main, tiny_corpus, mount_tmpfs):
    ro = mount_tmpfs("ro", "ro,size=64k")
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, ro / "run"), "train.out_dir", "not writable",
                    watch=[ro])


def test_disk_full_on_save(tmp_path, tiny_corpus, record_property):
    """The resumed run trains steps 4-6 and cannot write checkpoint 6: one line, the partial
    checkpoint removed, checkpoint 3 and `latest` untouched. (metrics.jsonl gets the lines of
    steps 4-6 by design; a later --resume drops them.)"""
    run, env, how = disk_full_run(tmp_path, tiny_corpus)
    record_property("simulated_by", how)
    try:
        line = expect_rejected_cli("pretrain", ["--resume", "--config", "configs/pretrain-tiny.yaml", f"data.path={tiny_corpus}",
                                                f"train.out_dir={run}"], "checkpoint step_00000006",
                                   "no space left on device", "step_00000003",
                                   watch=[run / "checkpoints", run / "config.yaml"], env=env)
        assert not (run / "checkpoints" / "step_00000006").exists()
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(run.parent)], check=True)
    assert "error: could not write checkpoint" in line


# ---- prepare_data: missing, empty, non-UTF-8 and binary corpora; occupied or impossible --out ---

def prepare(tmp_path, *files, out=None, extra=()):
    return ["--text", *files, "--out", out or tmp_path / "ds", "--vocab-size", "60", "--valid-fraction", "0", *extra]


@pytest.mark.parametrize("name, content, needles", [
    ("missing", None, ("does not exist",)),
    ("empty", b"\n  \n", ("is empty",)),
    ("latin1", "caf\xe9 au lait\n".encode("latin-1"), ("not valid UTF-8", "line 1")),
    ("binary", b"ELF\x00\x01\x02\x00 text\nmore\n", ("looks binary", "NUL")),
], ids=["missing", "empty", "latin1", "binary"])
def test_prepare_data_bad_corpus_cli(tmp_path, name, content, needles):
    corpus = tmp_path / f"{name}.txt"
    if content is not None:
        corpus.write_bytes(content)
    expect_rejected_cli("prepare_data", prepare(tmp_path, corpus), str(corpus), *needles, watch=[tmp_path])
    assert not (tmp_path / "ds").exists()


def test_prepare_data_out_holds_another_dataset_cli(tmp_path, tiny_corpus):
    import shutil

    out = tmp_path / "existing"
    shutil.copytree(tiny_corpus, out)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 50)
    expect_rejected_cli("prepare_data", prepare(tmp_path, corpus, out=out), "not empty", "--overwrite", watch=[out])


def test_prepare_data_out_under_a_regular_file_cli(tmp_path):
    (tmp_path / "afile").write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 50)
    expect_rejected_cli("prepare_data", prepare(tmp_path, corpus, out=tmp_path / "afile" / "ds"),
                        "afile is not a directory", watch=[tmp_path])


def test_prepare_data_tokenizer_that_is_not_one_cli(tmp_path):
    bogus = tmp_path / "tok.model"
    bogus.write_bytes(os.urandom(256))
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 50)
    argv = ["--text", corpus, "--out", tmp_path / "ds", "--tokenizer", bogus, "--valid-fraction", "0"]
    expect_rejected_cli("prepare_data", argv, str(bogus), watch=[tmp_path])


# ---- checkpoints: truncated, bit-flipped, partial; consolidate's output ----------------------

@pytest.fixture
def run_copy(tiny_model_dir, tmp_path) -> Path:
    """A copy of a finished tiny run (checkpoints step 3 and 6, final/) to damage."""
    import shutil

    return Path(shutil.copytree(tiny_model_dir.parent, tmp_path / "run"))


def test_resume_from_truncated_checkpoint_cli(run_copy, tiny_corpus):
    shard = run_copy / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    os.truncate(shard, shard.stat().st_size // 2)
    expect_rejected_cli("pretrain", ["--resume", "--config", "configs/pretrain-tiny.yaml", f"data.path={tiny_corpus}",
                                     f"train.out_dir={run_copy}", "train.steps=8"],
                        "step_00000006 is damaged", "mp_rank_00_model_states.pt", "truncated", watch=[run_copy])


def test_consolidate_bit_flipped_checkpoint_cli(run_copy, tmp_path):
    shard = run_copy / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    with open(shard, "r+b") as f:  # one bit in the middle of the tensor data: size unchanged
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    expect_rejected_cli("consolidate", [run_copy / "checkpoints", "--out", tmp_path / "export"],
                        "step_00000006 is damaged", "checksum", watch=[run_copy])
    assert not (tmp_path / "export").exists()


def test_consolidate_never_takes_a_partial_checkpoint(run_copy, tmp_path, capsys):
    from launchers.consolidate import main

    ck = run_copy / "checkpoints"
    (ck / "step_00000003" / "meta.json").unlink()  # killed before meta.json: not a checkpoint
    (ck / "step_00000006" / "meta.json").unlink()
    expect_rejected(capsys, main, [str(ck), "--out", str(tmp_path / "export"), "--tag", "step_00000006"],
                    "no complete checkpoint", "step_00000006", watch=[run_copy])
    expect_rejected(capsys, main, [str(ck), "--out", str(tmp_path / "export")], "no complete checkpoint",
                    watch=[run_copy])


def test_consolidate_into_a_foreign_directory(run_copy, tmp_path, capsys):
    from launchers.consolidate import main

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    expect_rejected(capsys, main, [str(run_copy / "checkpoints"), "--out", str(foreign)],
                    "not empty and is not a previous export", watch=[foreign, run_copy])


# ---- minipost, adapt, finetune, evaluate -----------------------------------------------------

def test_minipost_layers_out_of_range(tmp_path, capsys, tiny_model_dir, tiny_corpus):
    from launchers.minipost import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/minipost-tiny.yaml"), f"minipost.source={tiny_model_dir}",
                                   f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'o'}", "minipost.mini_depth=9"],
                    "minipost.mini_depth=9", "4 layers", watch=[tiny_model_dir])


def test_minipost_corpus_of_another_tokenizer(tmp_path, capsys, tiny_model_dir, tiny_target_corpus):
    from launchers.minipost import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/minipost-tiny.yaml"), f"minipost.source={tiny_model_dir}",
                                   f"data.path={tiny_target_corpus}", f"train.out_dir={tmp_path / 'o'}"],
                    str(tiny_target_corpus), "another tokenizer", watch=[tiny_model_dir])


def test_minipost_source_is_not_a_model(tmp_path, capsys, tiny_corpus):
    from launchers.minipost import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/minipost-tiny.yaml"), f"minipost.source={tmp_path}",
                                   f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'o'}"],
                    "not a model directory")


def adapt_args(model_dir, data, out, *extra):
    return ["--config", str(REPO / "tests/fixtures/adapt-tiny.yaml"), f"adapt.model_dir={model_dir}", f"data.path={data}",
            f"train.out_dir={out}", *extra]


def test_adapt_refuses_zero3(tmp_path, capsys, tiny_model_dir, tiny_target_corpus):
    from launchers.adapt import main

    expect_rejected(capsys, main, ["--deepspeed", str(REPO / "ds_configs/z3.json"),
                                   *adapt_args(tiny_model_dir, tiny_target_corpus, tmp_path / "o")],
                    "ZeRO-3", watch=[tiny_model_dir])


@pytest.mark.parametrize("launcher, config", [("adapt", "tests/fixtures/adapt-tiny.yaml"),
                                              ("minipost", "tests/fixtures/minipost-tiny.yaml"),
                                              ("finetune", "tests/fixtures/finetune-tiny.yaml")])
def test_freeze_patterns_refused_where_the_step_fixes_what_trains(tmp_path, capsys, tiny_model_dir, launcher, config):
    """train.freeze is a pretraining option; steps 1b-3 would silently ignore it."""
    import importlib

    main = importlib.import_module(f"launchers.{launcher}").main
    expect_rejected(capsys, main, ["--config", str(REPO / config), f"train.out_dir={tmp_path / 'o'}",
                                   "train.freeze=[layers.0.*]"], "train.freeze applies to pretraining only",
                    watch=[tiny_model_dir])


def test_adapt_from_a_truncated_model(tmp_path, capsys, tiny_model_dir, tiny_target_corpus):
    import shutil

    from launchers.adapt import main

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    os.truncate(model / "model.pt", 1000)
    expect_rejected(capsys, main, adapt_args(model, tiny_target_corpus, tmp_path / "o"),
                    "model.pt is unreadable", watch=[model])


def test_finetune_model_dir_missing(tmp_path, capsys):
    from launchers.finetune import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/finetune-tiny.yaml"),
                                   f"finetune.model_dir={tmp_path / 'nowhere'}", f"train.out_dir={tmp_path / 'o'}"],
                    "nowhere", "not a model directory")


def test_finetune_bad_value_and_unknown_key(tmp_path, capsys, tiny_model_dir):
    from launchers.finetune import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/finetune-tiny.yaml"), f"finetune.model_dir={tiny_model_dir}",
                                   f"train.out_dir={tmp_path / 'o'}", "finetune.pooling=max", "finetune.head_dropuot=0.2"],
                    "pooling", "head_dropuot")


def _finetune(rank, model_dir, out):
    from ds_minimodel.config import FinetuneConfig, load_config
    from ds_minimodel.steps import finetune

    cfg = load_config(FinetuneConfig, REPO / "tests/fixtures/finetune-tiny.yaml",
                      [f"finetune.model_dir={model_dir}", f"train.out_dir={out}", "train.steps=2"])
    finetune.run(cfg, str(REPO / "ds_configs/z0.json"))


@pytest.fixture(scope="module")
def tiny_finetuned(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetuned") / "run"
    run_ranks(_finetune, 1, args=(tiny_model_dir, out))
    return out / "final"


def fake_pack(where: Path, tokenizer_dir: Path, hidden: int) -> Path:
    """A well-formed language pack whose shapes belong to a model with `hidden` dimensions."""
    import torch

    from ds_minimodel.artefacts.langpack import PackInfo, save_pack

    tok = load_tokenizer(str(tokenizer_dir / "tokenizer.model"))
    info = PackInfo(language="ny", method="minijoint", vocab_size=tok.vocab_size, hidden_size=hidden,
                    pad_token_id=tok.pad_id, special={"pad": tok.pad_id}, body_fingerprint="0" * 16,
                    mini_depth=1, tokenizer_fingerprint=tok.fingerprint())
    return save_pack(where, info, torch.zeros(tok.vocab_size, hidden), torch.zeros(tok.vocab_size),
                     str(tokenizer_dir / "tokenizer.model"))


def test_evaluate_pack_for_another_model(tmp_path, capsys, tiny_finetuned, tiny_target_corpus):
    from launchers.evaluate import main

    pack = fake_pack(tmp_path / "pack", tiny_target_corpus, hidden=48)
    expect_rejected(capsys, main, ["--model", str(tiny_finetuned), "--pack", str(pack), "--out",
                                   str(tmp_path / "r.json")], "does not fit", "hidden size 48",
                    watch=[pack, tiny_finetuned])
    assert not (tmp_path / "r.json").exists()


def test_evaluate_truncated_pack(tmp_path, capsys, tiny_finetuned, tiny_target_corpus):
    from launchers.evaluate import main

    pack = fake_pack(tmp_path / "pack", tiny_target_corpus, hidden=32)
    os.truncate(pack / "embeddings.safetensors", 100)
    expect_rejected(capsys, main, ["--model", str(tiny_finetuned), "--pack", str(pack)],
                    "embeddings.safetensors is unreadable", watch=[pack])


def test_evaluate_model_that_is_not_fine_tuned(tmp_path, capsys, tiny_model_dir):
    from launchers.evaluate import main

    expect_rejected(capsys, main, ["--model", str(tiny_model_dir)], "not a fine-tuned model", watch=[tiny_model_dir])


def test_summarize_a_directory_without_a_run(tmp_path, capsys):
    from launchers.summarize import main

    expect_rejected(capsys, main, [str(tmp_path)], "no eval records", watch=[tmp_path])


def test_adapt_refuses_a_corpus_of_another_language(tmp_path, capsys, tiny_model_dir, tiny_target_corpus):
    """A pack is labelled with adapt.language, and transfer scores it on that language's test set:
    a Chichewa corpus adapted as Swahili (the config's default language left in place) would be
    scored on Swahili verses. A corpus that says its language (prepare_data's recipes do) must
    match it; one that says none is taken as given."""
    import json
    import shutil

    from launchers.adapt import main

    corpus = Path(shutil.copytree(tiny_target_corpus, tmp_path / "ny"))
    index = json.loads((corpus / "index.json").read_text())
    index["meta"]["language"] = "ny"
    (corpus / "index.json").write_text(json.dumps(index))
    expect_rejected(capsys, main, adapt_args(tiny_model_dir, corpus, tmp_path / "o", "adapt.language=sw"),
                    f"{corpus} is a ny corpus", "adapt.language=sw", watch=[corpus])
    expect_rejected(capsys, main, adapt_args(tiny_model_dir, tmp_path / "{lang}", tmp_path / "o2",
                                             "adapt.languages=[ny,sw]", f"adapt.data_paths={{sw: {corpus}}}"),
                    f"{corpus} is a ny corpus", "adapt.languages says sw", watch=[corpus])


# ---- --set of the pipeline and the study: checked against the step's config before anything runs ----

def test_pipeline_set_is_checked_against_each_steps_config_before_anything_runs(tmp_path, capsys):
    """launchers/pipeline.py --set STEP:key=value is loaded into the config that step's launcher
    will load (its YAML, what the pipeline passes, the override last), for every step it reaches,
    at planning: a misspelt key or a bad value fails --plan at once with the config file's
    one-line error, not an hour later when that step starts. Every problem in one line."""
    from launchers.pipeline import main

    work = tmp_path / "w"
    base = ["--work", str(work), "--data-root", str(tmp_path / "d"), "--plan"]
    expect_rejected(capsys, main, [*base, "--set", "adapt:nosuch.key=1"],
                    "unknown key nosuch", "configs/adapt-demo.yaml", "adapt-full")
    line = expect_rejected(capsys, main, [*base, "--set", "pretrain:train.stepz=3", "--set", "minipost:optim.lr=-1",
                                          "--set", "finetune:finetune.pooling=max"],
                           "unknown key train.stepz", "configs/pretrain-demo.yaml", "optim.lr must be positive",
                           "configs/minipost-demo.yaml", "finetune.pooling must be 'cls' or 'mean'",
                           "configs/finetune-demo.yaml")
    assert "adapt" not in line  # the adaptation steps' configs are fine
    expect_rejected(capsys, main, [*base, "--set", "adapt:train.steps=many"], "train.steps: expected int")
    expect_rejected(capsys, main, [*base, "--languages", "sw,tl", "--set", "adapt:adapt.langauge=sw"],
                    "unknown key adapt.langauge")
    # Without --plan the same, before the work directory (its lock, logs, timings) is made.
    expect_rejected(capsys, main, [*base[:-1], "--set", "adapt:nosuch.key=1"], "unknown key nosuch")
    assert not work.exists()
    # Good overrides plan as before: the check refuses nothing the launchers accept.
    main([*base, "--set", "adapt:optim.lr=1e-3", "--set", "finetune:finetune.pooling=mean"])
    out = capsys.readouterr().out
    assert out.count("optim.lr=1e-3") == 5 and "finetune.pooling=mean" in out  # 3 + the regular model's 2


def test_study_set_is_checked_against_each_runs_config_before_anything_runs(tmp_path, capsys, tiny_model_dir,
                                                                           tiny_target_corpus):
    """launchers/study.py --set key=value goes to every adaptation run: it is loaded with each
    planned run's settings and the --config YAML before the scorer loads or anything trains."""
    from launchers.study import main

    out = tmp_path / "study"
    base = ["--run-experiments", "--pretrained", str(tiny_model_dir), "--target-data", str(tiny_target_corpus),
            "--model", str(tiny_model_dir), "--config", str(REPO / "tests/fixtures/adapt-tiny.yaml"), "--seeds", "1",
            "--steps", "8", "--out", str(out)]
    expect_rejected(capsys, main, [*base, "--set", "nosuch.key=1"], "unknown key nosuch", "adapt-tiny.yaml")
    expect_rejected(capsys, main, [*base, "--set", "optim.schedule=cubic", "data.seq_lem=16"],
                    "optim.schedule must be linear|cosine|constant", "unknown key data.seq_lem")
    # Checked with each run's own settings: a stop after the runs' 8 steps.
    expect_rejected(capsys, main, [*base, "--set", "train.stop_at_step=9"],
                    "train.stop_at_step must be in 1..train.steps")
    assert not out.exists()
