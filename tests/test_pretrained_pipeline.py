"""The pretrained pipeline (launchers/pipeline.py --from-pretrained DIR) plans everything that
depends on the model from the checkpoint: depth, MLM head or not, tokenizer, special-id layout,
padded vocabulary. Planned commands are checked without training; the steps that failed on a
real multilingual checkpoint (padded table, 12 layers, XLM-R's pad 1 under a BERT architecture)
then run on a tiny one of the same shape.

Checkpoints (tests/checkpoints.py): a 6-layer MiniLM-like BERT (WordPiece, BERT's ids, no MLM
head), a 12-layer e5-like BERT (XLM-R's Unigram vocabulary, pad 1, table padded by 35 rows, no
MLM head), a RoBERTa with a byte-level BPE tokenizer and an MLM head, and the real
multilingual-e5-small.
"""

import json
from pathlib import Path

import pytest
import torch

from ds_minimodel.config import FinetuneConfig, MiniPostConfig, load_config, to_dict
from ds_minimodel.pipeline import PipelineOptions, default_mini_depth, plan_pretrained
from ds_minimodel.tokenizers import load_tokenizer
from tests.checkpoints import chichewa_lines, english_lines, write_checkpoint
from tests.conftest import REPO
from tests.helpers import expect_rejected, run_step


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "minilm": write_checkpoint(root / "minilm-like", "bert", layers=6, tokenizer="wordpiece"),
        "e5": write_checkpoint(root / "e5-like", "bert", layers=12, tokenizer="unigram", rows_extra=35),
        "roberta": write_checkpoint(root / "roberta", "roberta", layers=8, tokenizer="bytelevel", head=True),
    }


def opts_for(tmp_path, **kw) -> PipelineOptions:
    return PipelineOptions(work=tmp_path / "work", data_root=tmp_path / "data", **kw)


def steps_of(plan) -> dict:
    return {s.name: [str(c) for c in s.cmd] for s in plan.steps}


def overrides(cmd: list[str]) -> tuple[str, list[str]]:
    """(--config, dotlist overrides) of a training step's command."""
    i = cmd.index("--config")
    return cmd[i + 1], cmd[i + 2:]


def test_mini_depth_is_a_quarter_rounded():
    assert [default_mini_depth(n) for n in (1, 2, 3, 4, 6, 8, 10, 12, 24)] == [1, 1, 1, 1, 2, 2, 3, 3, 6]


# The YAMLs `make pipeline-pretrained` used before the pipeline derived depths (all-MiniLM-L6-v2).
OLD_HEAD_YAML = """
minipost: {source: minilm, mini_depth: 6, top_layers: 0, top_init: random}
data: {path: data/bible-en-minilm, seq_len: 128, eval_batches: 8, eval_batch_size: 16}
optim: {lr: 1.0e-3, warmup_steps: 20, min_lr_ratio: 0.1}
train: {steps: 150, micro_batch_size: 16, grad_accum: 1, out_dir: runs/head-minilm, log_every: 10,
        eval_every: 50, save_every: 75}
"""
OLD_MINIPOST_YAML = """
minipost: {source: minilm, mini_depth: 2, top_layers: 1, top_init: copy}
data: {path: data/bible-en-minilm, seq_len: 128, eval_batches: 8, eval_batch_size: 16}
optim: {lr: 5.0e-4, warmup_steps: 20, min_lr_ratio: 0.1}
train: {steps: 150, micro_batch_size: 16, grad_accum: 1, out_dir: runs/minipost-minilm, log_every: 10,
        eval_every: 50, save_every: 75}
"""
OLD_FINETUNE_YAML = """
finetune: {task: bible-genre, max_len: 64, eval_examples: 512, pooling: mean}
optim: {lr: 1.0e-4, warmup_steps: 30, min_lr_ratio: 0.0}
train: {steps: 300, micro_batch_size: 32, grad_accum: 1, out_dir: runs/finetune-minilm, log_every: 10,
        eval_every: 100, save_every: 150}
"""


def test_minilm_plan_runs_what_make_pipeline_pretrained_ran(dirs, tmp_path):
    """all-MiniLM-L6-v2's shape: the same steps, each resolving to the same config as the old
    MiniLM YAMLs did; the new vocabulary laid out as BERT's (what --layout bert gave)."""
    from ds_minimodel.cli.prepare_data import build_parser, special_layout

    src = dirs["minilm"]
    plan = plan_pretrained(opts_for(tmp_path), src)
    assert (plan.k, plan.top_layers, plan.layout, plan.source.num_layers) == (2, 1, "bert", 6)
    assert plan.prep == {"full": "head", "minipost": "minipost"}
    cmds = steps_of(plan)
    assert list(cmds) == ["data-en", "data-ny", "head", "minipost", "adapt-full", "adapt-minipost", "finetune",
                          "evaluate"]
    data, work = tmp_path / "data", tmp_path / "work"
    en = Path(cmds["data-en"][cmds["data-en"].index("--out") + 1])
    assert en.parent == data and en.name.startswith("bible-en-minilm-like-")
    assert cmds["data-en"][1:3] == ["-m", "ds_minimodel.cli.prepare_data"]
    assert cmds["data-en"][3:] == ["--recipe", "bible-en", "--out", str(en), "--tokenizer", str(src / "tokenizer.json")]
    assert cmds["data-ny"][3:] == ["--recipe", "bible-ny", "--out", str(data / "bible-ny-bert"), "--vocab-size", "8000",
                                   "--special-ids-from", str(src)]
    assert special_layout(build_parser().parse_args(cmds["data-ny"][3:])) == "bert"
    old = {"head": (OLD_HEAD_YAML, MiniPostConfig), "minipost": (OLD_MINIPOST_YAML, MiniPostConfig),
           "finetune": (OLD_FINETUNE_YAML, FinetuneConfig)}
    for name, (yaml, cls) in old.items():
        config, new_overrides = overrides(cmds[name])
        old_file = tmp_path / f"old-{name}.yaml"
        old_file.write_text(yaml)
        # The old commands: the same overrides but no depths (the YAMLs held them).
        old_overrides = [o for o in new_overrides if not o.startswith(("minipost.mini_depth=", "minipost.top_layers="))]
        assert to_dict(load_config(cls, REPO / config, new_overrides)) == \
            to_dict(load_config(cls, old_file, old_overrides)), name
    assert overrides(cmds["adapt-full"])[1][:3] == [f"adapt.model_dir={work / 'head' / 'final'}", "adapt.through=full",
                                                    f"data.path={data / 'bible-ny-bert'}"]
    assert overrides(cmds["adapt-minipost"])[1][:2] == [f"adapt.model_dir={work / 'minipost' / 'final'}",
                                                        "adapt.through=mini"]


@pytest.mark.parametrize("which", ["e5-like", "real e5"])
def test_e5_plan_follows_the_checkpoint(which, dirs, request, tmp_path):
    """12 layers: k = 3 and the baseline's head over all 12; XLM-R's special ids under a BERT
    architecture: the XLM-R layout (pad 1); the padded table described, not refused."""
    src = dirs["e5"] if which == "e5-like" else request.getfixturevalue("e5_dir")
    plan = plan_pretrained(opts_for(tmp_path), src)
    s = plan.source
    assert (s.model_type, s.num_layers, s.has_mlm_head, s.tokenizer_kind) == ("bert", 12, False, "unigram-metaspace")
    assert s.vocab_rows == s.tokenizer_size + 35 and s.special_ids["pad"] == 1
    assert (plan.k, plan.top_layers, plan.layout) == (3, 1, "xlmr")
    cmds = steps_of(plan)
    assert overrides(cmds["head"])[1][-1:] == ["minipost.mini_depth=12"]
    assert overrides(cmds["minipost"])[1][-2:] == ["minipost.mini_depth=3", "minipost.top_layers=1"]
    assert overrides(cmds["head"])[0] == "configs/minipost-head-pretrained.yaml"
    assert str(tmp_path / "data" / "bible-ny-xlmr") in cmds["data-ny"] and "--special-ids-from" in cmds["data-ny"]
    assert "embedding rows" in plan.summary() and "xlmr (pad 1)" in plan.summary()
    # The user's choices win.
    mine = plan_pretrained(opts_for(tmp_path, k=4, top_layers=2, adapt_steps=7), src)
    cmds = steps_of(mine)
    assert overrides(cmds["minipost"])[1][-2:] == ["minipost.mini_depth=4", "minipost.top_layers=2"]
    assert "train.steps=7" in cmds["adapt-full"] and "train.steps=7" in cmds["adapt-minipost"]


def test_roberta_with_an_mlm_head_adapts_through_itself(dirs, tmp_path):
    src = dirs["roberta"]
    plan = plan_pretrained(opts_for(tmp_path), src)
    assert (plan.source.has_mlm_head, plan.source.tokenizer_kind, plan.k, plan.layout) == \
        (True, "bpe-bytelevel", 2, "xlmr")
    cmds = steps_of(plan)
    assert "head" not in cmds and plan.prep == {"minipost": "minipost"}
    assert overrides(cmds["adapt-full"])[1][:2] == [f"adapt.model_dir={src}", "adapt.through=full"]
    assert overrides(cmds["minipost"])[1][-2:] == ["minipost.mini_depth=2", "minipost.top_layers=1"]


def test_xlmr_with_only_its_sentencepiece_model(tmp_path):
    """xlm-roberta-base as older snapshots ship it: sentencepiece.bpe.model, no tokenizer.json."""
    src = write_checkpoint(tmp_path / "xlmr", "xlm-roberta", layers=12, tokenizer="sentencepiece", head=True)
    plan = plan_pretrained(opts_for(tmp_path), src)
    assert (plan.source.tokenizer_kind, plan.source.tokenizer_path.name, plan.layout, plan.k) == \
        ("sentencepiece-fairseq", "sentencepiece.bpe.model", "xlmr", 3)
    assert plan.source.special_ids == {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": plan.source.tokenizer_size - 1}
    assert str(src / "sentencepiece.bpe.model") in steps_of(plan)["data-en"]


def test_config_pad_that_disagrees_with_the_tokenizer(tmp_path, capsys):
    """A BERT-architecture model with XLM-R's vocabulary whose config.json kept BertConfig's
    default pad_token_id 0 pads with its tokenizer's 1 (BERT positions do not depend on it); a
    RoBERTa-style one, whose positions count from it, is refused."""
    from ds_minimodel.artefacts.modeldir import read_model_dir
    from launchers.pipeline import main

    bert = write_checkpoint(tmp_path / "bert0", "bert", layers=4, tokenizer="unigram", rows_extra=3, pad=0)
    _, cfg, lineage = read_model_dir(bert)
    assert cfg.pad_token_id == 1 and lineage["tokenizer"] == str(bert / "tokenizer.json")
    assert plan_pretrained(opts_for(tmp_path), bert).layout == "xlmr"
    roberta = write_checkpoint(tmp_path / "roberta0", "roberta", layers=4, tokenizer="bytelevel", pad=0, head=True)
    capsys.readouterr()
    expect_rejected(capsys, main, ["--from-pretrained", str(roberta), "--work", str(tmp_path / "w")],
                    "pad_token_id is 0 but the tokenizer pads with 1")


def _bad(root: Path, name: str, config: dict | None) -> Path:
    d = root / name
    if config is None:  # a real BERT checkpoint whose tokenizer files were not copied
        write_checkpoint(d, "bert", layers=2, tokenizer=None)
    else:
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("case, needles", [
    ("no-tokenizer", ["no tokenizer", "tokenizer.json", "sentencepiece.bpe.model"]),
    ("gpt2", ["GPT2LMHeadModel is a decoder-only language model", "masked-language-model encoder"]),
    ("llama", ["LlamaForCausalLM is a decoder-only language model"]),
    ("deberta", ["DebertaV2ForMaskedLM (model_type 'deberta-v2') is not a supported architecture", "XLM-R"]),
])
def test_checkpoints_that_cannot_work_are_refused_in_one_line(case, needles, tmp_path, capsys):
    from launchers.pipeline import main

    configs = {"no-tokenizer": None,
               "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 12, "vocab_size": 50257},
               "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2},
               "deberta": {"model_type": "deberta-v2", "architectures": ["DebertaV2ForMaskedLM"], "num_hidden_layers": 2}}
    src = _bad(tmp_path / "src", case, configs[case])
    capsys.readouterr()  # save_pretrained's progress bar
    work, data = tmp_path / "work", tmp_path / "data"
    line = expect_rejected(capsys, main, ["--from-pretrained", str(src), "--work", str(work), "--data-root", str(data)],
                           str(src), *needles, watch=[src])
    assert not work.exists() and not data.exists(), line


def test_bad_mini_model_choices_are_refused(dirs, tmp_path, capsys):
    from launchers.pipeline import main

    src = dirs["minilm"]
    args = ["--from-pretrained", str(src), "--work", str(tmp_path / "w"), "--data-root", str(tmp_path / "d")]
    expect_rejected(capsys, main, args + ["--k", "6"], "--k 6", "it has 6 layers (k must be 1..5)")
    expect_rejected(capsys, main, args + ["--k", "5", "--top-layers", "2"], "--top-layers 2", "at most 6")
    expect_rejected(capsys, main, ["--work", str(tmp_path / "w"), "--k", "2"], "apply to --from-pretrained")
    assert not (tmp_path / "w").exists()


def test_plan_only_prints_the_commands(dirs, tmp_path, capsys):
    from launchers.pipeline import main

    main(["--from-pretrained", str(dirs["e5"]), "--work", str(tmp_path / "w"), "--plan"])
    out = capsys.readouterr().out
    assert "12 layers" in out and "[head]" in out and "minipost.mini_depth=3" in out
    assert not (tmp_path / "w").exists()


def test_step_overrides_reach_only_their_step_after_the_pipeline_settings(dirs, tmp_path, capsys):
    """--set STEP:key=value lands last on that step's command (so it wins over what the pipeline
    derived); "adapt" reaches both methods' step 2; --head-steps sets only the head's budget."""
    from launchers.pipeline import main

    main(["--from-pretrained", str(dirs["e5"]), "--work", str(tmp_path / "w"), "--plan", "--head-steps", "9",
          "--minipost-steps", "11", "--set", "adapt:data.seq_len=48", "--set", "minipost:minipost.mini_depth=2",
          "--set", "finetune:finetune.pooling=cls"])
    cmds = {line.split("] ")[0][1:]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("[")}
    assert "train.steps=9" in cmds["head"] and "train.steps=11" in cmds["minipost"]
    assert cmds["minipost"][-3:] == ["minipost.mini_depth=3", "minipost.top_layers=1", "minipost.mini_depth=2"]
    assert cmds["adapt-full"][-1] == cmds["adapt-minipost"][-1] == "data.seq_len=48"
    assert cmds["finetune"][-1] == "finetune.pooling=cls"
    assert not any("seq_len=48" in c or "pooling" in c for c in cmds["head"] + cmds["minipost"])


@pytest.mark.parametrize("bad, needles", [
    (["--set", "adapt-full:train.steps=3"], ["--set 'adapt-full:train.steps=3'", "head, minipost, adapt, finetune"]),
    (["--set", "adapt:train.steps"], ["expected STEP:key.sub=value"]),
    (["--set", "pretrain:train.steps=3"], ["STEP one of head, minipost"]),
    # Checked against each step's config when planned, not when the step starts.
    (["--set", "adapt:nosuch.key=1"], ["steps adapt-full, adapt-minipost:", "unknown key nosuch"]),
    (["--set", "head:optim.schedule=cubic"], ["step head:", "optim.schedule must be"]),
])
def test_bad_step_overrides_are_refused(bad, needles, dirs, tmp_path, capsys):
    from launchers.pipeline import main

    expect_rejected(capsys, main, ["--from-pretrained", str(dirs["e5"]), "--work", str(tmp_path / "w"), *bad],
                    *needles)
    assert not (tmp_path / "w").exists()


def test_head_options_refused_where_the_checkpoint_has_a_head(dirs, tmp_path, capsys):
    from launchers.pipeline import main

    args = ["--from-pretrained", str(dirs["roberta"]), "--work", str(tmp_path / "w")]
    expect_rejected(capsys, main, args + ["--head-steps", "5"], "has its own MLM head", "--head-steps")
    expect_rejected(capsys, main, args + ["--set", "head:train.steps=5"], "has its own MLM head")
    expect_rejected(capsys, main, ["--work", str(tmp_path / "w"), "--head-steps", "5"], "apply to --from-pretrained")
    assert not (tmp_path / "w").exists()


# ---- The steps that failed on a real multilingual checkpoint, on a tiny one of its shape ------

TINY = ["train.steps=2", "train.micro_batch_size=4", "train.save_every=2", "train.eval_every=2", "train.log_every=1",
        "train.progress=false", "data.seq_len=32", "data.eval_batches=1", "data.eval_batch_size=4"]


def test_e5_like_checkpoint_goes_through_its_planned_steps(dirs, tmp_path):
    """The plan's own commands (corpora cut to a few hundred verses, steps to 2): the English data
    encoded with the checkpoint's Unigram tokenizer, a new vocabulary laid out after its special
    ids (pad 1), the head over all 12 layers despite the padded table, the standard baseline and
    MiniPost adaptation through it, and fine-tuning's source check."""
    from ds_minimodel.artefacts.modeldir import read_model_dir
    from ds_minimodel.steps.finetune.common import load_source
    from ds_minimodel.cli.prepare_data import main as prepare

    src = dirs["e5"]
    plan = plan_pretrained(opts_for(tmp_path), src)
    cmds = steps_of(plan)
    texts = {"bible-en": english_lines(600), "bible-ny": chichewa_lines(600)}
    for name in ("data-en", "data-ny"):
        argv = cmds[name][3:]  # after python -m ds_minimodel.cli.prepare_data
        recipe = argv[argv.index("--recipe") + 1]
        text = tmp_path / f"{recipe}.txt"
        text.write_text("\n".join(texts[recipe]) + "\n", encoding="utf-8")
        argv = ["--text", str(text)] + argv[2:]
        if "--vocab-size" in argv:
            argv[argv.index("--vocab-size") + 1] = "300"
        assert prepare(argv + ["--valid-fraction", "0.1"]) == 0
    ny = tmp_path / "data" / "bible-ny-xlmr"
    target = load_tokenizer(str(ny / "tokenizer.model"))
    assert target.pad_id == plan.source.special_ids["pad"] == 1
    for name, module in (("head", "minipost"), ("minipost", "minipost"), ("adapt-full", "adapt"),
                         ("adapt-minipost", "adapt")):
        config, dotlist = overrides(cmds[name])
        run_step(module, config, *dotlist, *TINY)
    head_state, head_cfg, head_lineage = read_model_dir(tmp_path / "work" / "head" / "final")
    assert head_lineage["mini_depth"] == head_lineage["source_layers"] == 12
    assert (head_cfg.vocab_size, head_cfg.pad_token_id) == (plan.source.vocab_rows, 1)
    for method in ("full", "minipost"):
        pack = json.loads((tmp_path / "work" / f"adapt-{method}" / "pack" / "pack.json").read_text())
        assert pack["method"] == method and pack["pad_token_id"] == 1
        assert pack["provenance"]["rows_copied"] > 5 + 20, pack["provenance"]  # specials + shared pieces
    # Fine-tuning accepts the padded source.
    _, ft_cfg, _, tok = load_source(load_config(FinetuneConfig, REPO / "configs/finetune-pretrained.yaml",
                                                [f"finetune.model_dir={src}"]))
    assert tok.vocab_size < ft_cfg.vocab_size == plan.source.vocab_rows
    assert torch.equal(head_state["embeddings.word"], read_model_dir(src)[0]["embeddings.word"])
