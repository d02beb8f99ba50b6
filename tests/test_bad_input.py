"""Bad input gets one clear line naming the fault, exit status 2, and no file changed."""

import hashlib
import json
import os

import pytest

from tests.conftest import REPO
from tests.distributed import run_ranks


def tree_hash(root) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def expect_rejected(capsys, main, argv, *needles, watch=()):
    before = [tree_hash(p) for p in watch]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], f"{needle!r} not in {err[0]!r}"
    assert [tree_hash(p) for p in watch] == before, "a bad-input run changed files"
    return err[0]


@pytest.fixture
def pretrain_main():
    from launchers.pretrain import main

    return main


def args(data, out, *extra, ds="ds_configs/z0.json", config="configs/tiny.yaml"):
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
def test_mid_head_layer_out_of_range(tmp_path, capsys, pretrain_main, tiny_corpus, k):
    expect_rejected(capsys, pretrain_main, args(tiny_corpus, tmp_path / "o", f"model.mid_head_layer={k}"),
                    "model.mid_head_layer", "1..3")


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
    from ds_minimodel import pretrain
    from ds_minimodel.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, REPO / "configs/tiny.yaml",
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
