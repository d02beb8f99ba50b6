"""The compute-budget study end to end on tiny models: seeded adaptation runs made by
run_experiments, their scoring (accuracy, retrieval, the full model's MLM loss) and the study's
outputs. The statistics on synthetic curves are in test_study_stats.py."""

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ds_minimodel.errors import UserError
from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import expect_rejected, in_process_runner

SEEDS = (0, 1)


# ---- a tiny end-to-end study --------------------------------------------------------------------

def _finetune(rank, model_dir, out):
    from ds_minimodel.config import FinetuneConfig, load_config
    from ds_minimodel.steps import finetune

    cfg = load_config(FinetuneConfig, REPO / "tests/fixtures/finetune-tiny.yaml", [f"finetune.model_dir={model_dir}",
                                                                           f"train.out_dir={out}"])
    finetune.run(cfg, str(REPO / "ds_configs/z0.json"))




@pytest.fixture(scope="module")
def tiny_study(tiny_model_dir, tiny_target_corpus, tmp_path_factory):
    """A fine-tuned tiny classifier and, for each of two seeds, two adaptation runs (full,
    minijoint) of 6 steps with a checkpoint every 2, made by run_experiments."""
    from ds_minimodel.study.experiments import (
        ExperimentOptions,
        run_experiments,
    )

    root = tmp_path_factory.mktemp("study")
    run_ranks(_finetune, 1, args=(tiny_model_dir, root / "ft"))
    opts = ExperimentOptions(out=root / "exp", pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps={"full": 6, "minijoint": 6}, checkpoints=3,
                             seeds=SEEDS, config="tests/fixtures/adapt-tiny.yaml", overrides=["adapt.language=ny"])
    calls = []
    runs = run_experiments(opts, runner=in_process_runner(calls), log=lambda s: None)
    assert len(calls) == 4
    # Seed by seed: both methods of seed 0 first, so an interrupted study has whole seeds.
    assert [c[c.index("--config") + 2:][3].rsplit("/", 1)[1] for c in calls] == \
        ["adapt-full-s0", "adapt-minijoint-s0", "adapt-full-s1", "adapt-minijoint-s1"]
    return {"root": root, "model": root / "ft" / "final", "runs": runs, "opts": opts}


def _run_args(runs: dict) -> list[str]:
    return [f"{method}={d}" for method, dirs in runs.items() for d in dirs]


def test_run_experiments_keeps_every_checkpoint_and_reuses_finished_runs(tiny_study):
    from ds_minimodel.study.experiments import run_experiments
    from ds_minimodel.training.metrics import read_metrics

    assert {m: [d.name for d in dirs] for m, dirs in tiny_study["runs"].items()} == \
        {m: [f"adapt-{m}-s{s}" for s in SEEDS] for m in ("full", "minijoint")}
    for method, dirs in tiny_study["runs"].items():
        for seed, run_dir in zip(SEEDS, dirs):
            tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
            assert tags == ["step_00000002", "step_00000004", "step_00000006"], method
            assert (run_dir / "pack" / "pack.json").is_file()
            # The run's own validation loss is logged at every checkpoint (train.eval_every = save_every).
            assert {r["step"] for r in read_metrics(run_dir, "eval")} >= {2, 4, 6}
    calls = []
    run_experiments(tiny_study["opts"], runner=in_process_runner(calls), log=lambda s: None)
    assert calls == []  # finished runs with the planned settings are reused
    other = dataclasses.replace(tiny_study["opts"], steps={"full": 8, "minijoint": 6})
    with pytest.raises(UserError, match="other settings.*train.steps=6 \\(planned 8\\)"):
        run_experiments(other, runner=in_process_runner(calls), log=lambda s: None)
    assert calls == []


def test_the_seed_changes_initialisation_and_data_order(tiny_study):
    """train.seed reaches both: the rebuilt initial embeddings differ between seeds (and the
    step-2 checkpoint is within two Adam steps of its own seed's, not of the other's), and the
    loader each run checkpointed reads the corpus in a seed-dependent order."""
    from ds_minimodel.study.runs import (
        checkpoint_tensors,
        init_tensors,
        open_run,
    )
    from ds_minimodel.data.loader import MLMLoader
    from ds_minimodel.steps.mlm_job import open_corpus
    from ds_minimodel.training.checkpoint import read_meta

    runs = [open_run("minijoint", d) for d in tiny_study["runs"]["minijoint"]]
    assert [r.seed for r in runs] == list(SEEDS)
    lr = runs[0].config.optim.lr
    inits = [init_tensors(r)["word"] for r in runs]
    for run, init, other in ((runs[0], inits[0], inits[1]), (runs[1], inits[1], inits[0])):
        ckpt = checkpoint_tensors(run, "step_00000002")["word"]
        assert (ckpt - init).abs().max() <= 2 * lr * 1.01
        assert (ckpt - other).abs().max() > 4 * lr
    # Both methods of one seed start from the same table (same source word table, tokenizer and seed).
    full0 = open_run("full", tiny_study["runs"]["full"][0])
    assert torch.equal(init_tensors(full0)["word"], inits[0])
    # The data order: each run's checkpointed loader state carries its seed, and a loader with that
    # state reads other samples for another seed.
    for run in runs:
        meta = read_meta(run.dir / "checkpoints" / "step_00000002")
        assert json.dumps(meta).count(f'"seed": {run.seed}') >= 1
    cfg = runs[0].config
    shards = open_corpus(cfg.data.path)

    def first_rows(seed):
        batch = MLMLoader(shards, "train", cfg.data.seq_len, cfg.train.micro_batch_size, 1, 0, 1, seed).next_step()[0]
        return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    assert torch.equal(first_rows(0), first_rows(0)) and not torch.equal(first_rows(0), first_rows(1))


def test_study_reads_the_seeds_and_writes_intervals_json_markdown_and_plots(tiny_study, tmp_path, capsys):
    from launchers.study import main

    runs = tiny_study["runs"]
    argv = ["--runs", *_run_args(runs), "--model", str(tiny_study["model"]), "--metric", "accuracy",
            "--fraction", "0.9", "--eval-examples", "400", "--bootstrap", "200", "--loss-sequences", "8"]
    main(argv + ["--out", str(tmp_path / "a")])
    out = capsys.readouterr().out.strip().splitlines()
    # The run ends with one line per mini-model method at matched accuracy; the MLM loss line before.
    # (Its ratio, a bound or no ratio, and the replicates behind the interval: test_study_render.)
    pattern = r"study minijoint: .+ at matched {}; (n = \d+ of 200 replicates|no 95% interval.*)"
    assert re.fullmatch(pattern.format("accuracy"), out[-1]), out[-1]
    assert re.fullmatch(pattern.format("MLM loss"), out[-2]), out[-2]
    result = json.loads((tmp_path / "a" / "study.json").read_text())
    # The study's own bootstrap stream: 64 bits of sha256("<target language>:<--bootstrap-seed>").
    stream = int.from_bytes(hashlib.sha256(b"ny:0").digest()[:8], "big")
    assert result["bootstrap_stream"]["stream"] == stream and result["bootstrap_stream"]["language"] == "ny"
    assert all(m["bootstrap"]["seed"] == stream for m in result["metrics"].values())
    for name in ("study.md", "metric_vs_flops.png", "metric_vs_wallclock.png", "mlm_loss_vs_flops.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    assert (tmp_path / "a" / "mlm_loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    from ds_minimodel.training.metrics import read_metrics

    acc = result["metrics"]["accuracy"]
    assert acc["units"] == 400 and acc["references"]["test_examples"] == 400
    assert acc["bootstrap"]["seed_resampling"] == "paired" and acc["bootstrap"]["replicates"] == 200
    for name in ("full", "minijoint"):
        c = acc["curves"][name]
        assert c["tags"] == ["init", "step_00000002", "step_00000004", "step_00000006"]
        assert c["seeds"] == list(SEEDS) and set(c["per_seed"]) == {"0", "1"}
        for seed, run_dir in zip(SEEDS, runs[name]):
            logged = {r["step"]: r["flops"] for r in read_metrics(run_dir, "train")}
            assert c["per_seed"][str(seed)]["flops"] == [0, logged[2], logged[4], logged[6]]
        # The curve's FLOPs: the mean over seeds (each batch's masked-token count changes the head's cost).
        assert c["flops"] == pytest.approx(np.mean([c["per_seed"][str(s)]["flops"] for s in SEEDS], axis=0).tolist())
        per_seed = np.array([c["per_seed"][str(s)]["metric"] for s in SEEDS])
        assert np.all((0 <= per_seed) & (per_seed <= 1))
        assert c["mean"] == pytest.approx(per_seed.mean(axis=0).tolist())
        assert np.all(np.diff(c["fit"]) >= 0)  # the monotone fit
        assert [r["seed"] for r in result["runs"][name]] == list(SEEDS)
    # Per step, the mini-model's step is cheaper.
    assert acc["curves"]["minijoint"]["flops"][-1] < acc["curves"]["full"]["flops"][-1]
    m = acc["matched"]
    assert m["target"] == pytest.approx(0.9 * acc["curves"]["full"]["mean"][-1])
    assert m["methods"]["full"]["reached"]
    summary = result["summary"]["minijoint"]["accuracy"]
    assert summary["ratio"] == m["methods"]["minijoint"]["ratio_value"]

    def num(v):
        return math.inf if v == "inf" else v
    for metric in ("accuracy", "mlm_loss"):
        e = result["summary"]["minijoint"][metric]
        if e["ratio"] is not None and e["interval"] is not None:  # None: no ratio (JSON's NaN), no interval
            lo, hi = map(num, e["interval"])
            assert lo <= num(e["ratio"]) <= hi, (metric, e)
    md = (tmp_path / "a" / "study.md").read_text()
    assert "| minijoint | 0, 1 |" in md and "95% interval" in md and "mlm_loss" in md

    # The MLM loss: lower is better, through the full model, on the same 8 validation sequences.
    loss = result["metrics"]["mlm_loss"]
    assert loss["better"] == "lower" and loss["units"] == 8 and loss["matched"]["better"] == "lower"
    assert np.all(np.diff(loss["curves"]["full"]["fit"]) <= 0)
    # The baseline's seed-0 run evaluated its own validation loss on these very sequences and masks
    # (8 = 2 batches of 4, masks of seed 0 = the scorer's mask seed) through the same full model: the
    # study's plugged-in loss of its checkpoints is what its training loop logged.
    own = loss["curves"]["full"]["per_seed"]["0"]
    assert own["own_valid_loss"][1:] == pytest.approx(own["metric"][1:], rel=1e-4, abs=1e-5)
    assert own["metric"][-1] < own["metric"][0]  # training lowered it

    # Deterministic: a second study of the same runs (no score cache) writes the same study.json.
    main(argv + ["--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "study.json").read_text() == (tmp_path / "a" / "study.json").read_text()


def test_sequence_losses_sum_to_the_models_own_loss(tiny_study):
    from ds_minimodel.study.loss_scoring import MLMLossScorer, sequence_losses
    from ds_minimodel.study.runs import checkpoint_tensors, open_run
    from ds_minimodel.artefacts.surgery import plug_embeddings
    from ds_minimodel.model import MLMEncoder

    run = open_run("minijoint", tiny_study["runs"]["minijoint"][1])
    scorer = MLMLossScorer.for_run(open_run("full", tiny_study["runs"]["full"][0]), sequences=12)
    assert scorer.sequences == 12  # 3 batches of 4
    tensors = checkpoint_tensors(run, run.tags[-1])
    units = scorer.score(run.info, tensors, run.tokenizer_path)
    state, cfg = plug_embeddings(scorer.body, scorer.cfg, tensors["word"], tensors["output_bias"],
                                 run.info.pad_token_id)
    model = MLMEncoder(cfg)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(scorer.batches):
            out = model(**batch, route="final")
            sums, counts = sequence_losses(model, batch)
            assert counts.tolist() == batch["labels"].ne(-100).sum(dim=1).tolist()
            assert sums.sum() / counts.sum() == pytest.approx(float(out["final_loss"]), rel=1e-5, abs=1e-6)
            assert units.num[4 * i:4 * i + 4].tolist() == pytest.approx(sums.tolist(), rel=1e-6, abs=1e-6)
    with pytest.raises(UserError, match="mini-model"):
        MLMLossScorer.for_run(run)


def test_retrieval_metric_scores_every_checkpoint_per_pair(tiny_study, tiny_model_dir, tmp_path):
    from ds_minimodel.study.compare import StudyOptions, compare_runs
    from ds_minimodel.study.scoring import RetrievalScorer

    scorer = RetrievalScorer(tiny_model_dir, pairs=40)
    result = compare_runs(tiny_study["runs"], scorer, tmp_path, StudyOptions(include_init=False, bootstrap=50,
                                                                              loss=False), log=lambda s: None)
    assert result["metric"] == "retrieval_top1" and set(result["metrics"]) == {"retrieval_top1"}
    r = result["metrics"]["retrieval_top1"]
    assert r["units"] == 40
    for c in r["curves"].values():
        assert len(c["flops"]) == 3
        for s in c["per_seed"].values():
            assert all(0.0 <= v <= 1.0 for v in s["metric"])
    cache = json.loads((tmp_path / "score_cache_retrieval_top1.json").read_text())
    for entry in cache["scores"].values():
        assert len(entry["num"]) == 40 and set(entry["num"]) <= {0, 0.5, 1}


def test_bad_runs_are_refused_with_one_line(tiny_study, tmp_path, capsys):
    from launchers.study import main

    runs, model = tiny_study["runs"], str(tiny_study["model"])
    full, mj = runs["full"][0], runs["minijoint"][0]
    out = tmp_path / "out"

    def refused(run_args, *needles):
        expect_rejected(capsys, main, ["--runs", *run_args, "--model", model, "--out", str(out)], *needles,
                        watch=[full, mj])
        assert not (out / "study.json").exists()

    refused([f"full={full}", f"minijoint={tmp_path / 'nope'}"], "minijoint", "does not exist")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    refused([f"full={full}", f"minijoint={empty}"], "no complete checkpoint", str(empty))
    refused([f"full={full}", f"minipost={mj}"], "mismatched runs", "minijoint run")
    refused([f"minijoint={mj}"], "baseline 'full'")
    refused([f"full={full}", "minijoint"], "NAME=DIR")
    refused([f"full={full}", f"minijoint={mj}", f"minijoint={mj}"], f"minijoint={mj} twice")
    # Two runs of one seed for a method: one run counted twice would shrink the interval.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mj, copy)
    refused([f"full={full}", f"minijoint={mj}", f"minijoint={copy}"], "two runs of train.seed 0")
    expect_rejected(capsys, main, ["--runs", f"full={full}", "--metric", "accuracy", "--out", str(out)], "--model")
    expect_rejected(capsys, main, ["--runs", f"full={full}", "--model", model, "--bootstrap", "0", "--out", str(out)],
                    "--bootstrap")
    expect_rejected(capsys, main, ["--run-experiments", "--pretrained", str(tmp_path / "none"), "--target-data",
                                   str(tmp_path), "--model", model, "--out", str(out)],
                    "--pretrained", "does not exist")


def test_second_study_into_a_live_out_is_refused(tiny_study, tmp_path, capsys):
    from launchers.study import main
    from tests.helpers import holder, stop

    runs, out = tiny_study["runs"], tmp_path / "out"
    owner = holder(out)
    try:
        # tree_hash leaves out the holder's own heartbeat, which it rewrites meanwhile.
        expect_rejected(capsys, main, ["--runs", *_run_args(runs), "--model", str(tiny_study["model"]),
                                       "--eval-examples", "40", "--out", str(out)],
                        f"--out {out} is in use by pid {owner.pid}", watch=[out])
    finally:
        stop(owner)


def test_study_plan_sets_seeds_dense_checkpoints_and_parses_as_adapt_config(tiny_model_dir, tiny_target_corpus,
                                                                            tmp_path):
    from ds_minimodel.study.experiments import (
        ExperimentOptions,
        plan_experiments,
    )
    from ds_minimodel.config import AdaptConfig, load_config
    from ds_minimodel.cli.study import parse_steps

    steps = parse_steps(["300", "minijoint=900"])
    assert steps == {"full": 300, "minijoint": 900, "minipost": 300}
    opts = ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint"), steps=steps, checkpoints=10, seeds=(0, 1, 2))
    plan = plan_experiments(opts)
    assert [(m, s, d.name) for m, s, d, _ in plan] == [(m, s, f"adapt-{m}-s{s}") for s in (0, 1, 2)
                                                       for m in ("full", "minijoint")]
    for method, seed, run_dir, overrides in plan:
        cfg = load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", overrides)
        n = steps[method]
        assert cfg.train.steps == n and cfg.train.save_every == n // 10 and cfg.train.keep_last >= 10
        assert cfg.train.seed == seed and cfg.train.eval_every == cfg.train.save_every
        assert cfg.adapt.through == {"full": "full", "minijoint": "mini"}[method]
        assert cfg.train.out_dir == str(run_dir.resolve())
    with pytest.raises(UserError, match="--minipost"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus))
    with pytest.raises(UserError, match="adapts as 'minijoint', not 'minipost'"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                                           minipost=tiny_model_dir))
    with pytest.raises(UserError, match="'full'"):
        plan_experiments(ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                                           methods=("minijoint",)))
    with pytest.raises(UserError, match="train.seed"):
        plan_experiments(dataclasses.replace(opts, overrides=["train.seed=4"]))
    with pytest.raises(UserError, match="repeat"):
        plan_experiments(dataclasses.replace(opts, seeds=(0, 0)))


def test_study_plan_gives_a_method_its_own_init(tiny_model_dir, tiny_target_corpus, tmp_path):
    """Every run starts from the paper's random embeddings unless its method says +INIT: then its
    own directory and adapt.init; unknown inits, a method named twice and --set adapt.init are
    refused before anything runs."""
    from ds_minimodel.study.experiments import ExperimentOptions, plan_experiments
    from ds_minimodel.config import AdaptConfig, load_config

    opts = ExperimentOptions(out=tmp_path, pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             methods=("full", "minijoint", "minijoint+focus"), seeds=(0,),
                             steps={"full": 30, "minijoint": 90})
    plan = plan_experiments(opts)
    assert [d.name for _, _, d, _ in plan] == ["adapt-full-s0", "adapt-minijoint-s0", "adapt-minijoint-focus-s0"]
    inits = [load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", o).adapt.init for *_, o in plan]
    assert inits == ["random", "random", "focus"]  # configs/adapt-demo.yaml says copy_shared
    assert load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", plan[2][3]).train.steps == 90  # minijoint's
    for bad, needle in ((dict(methods=("full", "minijoint+glove")), "unknown method"),
                        (dict(methods=("full", "full")), "twice"),
                        (dict(init="zeros"), "--init"),
                        (dict(overrides=["adapt.init=focus"]), "adapt.init")):
        with pytest.raises(UserError, match=needle):
            plan_experiments(dataclasses.replace(opts, **bad))


def test_checkpoint_tensors_match_the_final_pack(tiny_study):
    from ds_minimodel.study.runs import checkpoint_tensors, open_run
    from ds_minimodel.artefacts.langpack import load_pack

    run = open_run("full", tiny_study["runs"]["full"][1])
    _, pack, _ = load_pack(run.dir / "pack")
    last = checkpoint_tensors(run, run.tags[-1])
    assert torch.equal(last["word"], pack["word"]) and torch.equal(last["output_bias"], pack["output_bias"])


def test_by_body_scores_each_pack_through_its_own_model():
    """The paper's comparison scores the standard baseline's packs through the regular model and
    MiniJoint's through its own: ByBody picks the scorer whose model has the pack's body
    fingerprint at the pack's depth, and names the pack when none has."""
    from types import SimpleNamespace

    from ds_minimodel.study.scoring import ByBody

    def scorer(name, fingerprints):
        return SimpleNamespace(metric="accuracy", better="higher", identity={"model": name}, model_dir=name,
                               lineage={"body_fingerprints": fingerprints},
                               references=lambda language, name=name: {"model": name},
                               score=lambda info, tensors, tok, name=name: name)

    regular, minijoint = scorer("regular", {"2": "r2", "8": "r8"}), scorer("minijoint", {"2": "m2", "8": "m8"})
    by_body = ByBody([regular, minijoint])
    pack = lambda layers, fp: SimpleNamespace(mini_depth=layers, body_fingerprint=fp,  # noqa: E731
                                             method="x", language="ny")
    assert by_body.score(pack(8, "r8"), None, None) == "regular"  # the standard baseline, all 8 layers
    assert by_body.score(pack(2, "r2"), None, None) == "regular"  # MiniPost from the regular model
    assert by_body.score(pack(2, "m2"), None, None) == "minijoint"
    assert by_body.identity == {"metric": "accuracy", "models": [{"model": "regular"}, {"model": "minijoint"}]}
    assert by_body.references("ny") == {"model": "regular", "other_models": [{"model": "minijoint"}]}
    with pytest.raises(UserError, match="no scoring model fits the x pack .* regular, minijoint"):
        by_body.score(pack(2, "zz"), None, None)


def test_study_plan_adapts_the_baseline_from_its_own_model(tiny_model_dir, tiny_target_corpus, tmp_path):
    import shutil

    from ds_minimodel.study.experiments import ExperimentOptions, plan_experiments
    from ds_minimodel.config import AdaptConfig, load_config

    regular = tmp_path / "regular"
    shutil.copytree(tiny_model_dir, regular)
    opts = ExperimentOptions(out=tmp_path / "s", pretrained=tiny_model_dir, target_data=tiny_target_corpus,
                             baseline_pretrained=regular, methods=("full", "minijoint"), seeds=(0,))
    dirs = {m: load_config(AdaptConfig, REPO / "configs/adapt-demo.yaml", o).adapt.model_dir
            for m, _, _, o in plan_experiments(opts)}
    assert dirs == {"full": str(regular.resolve()), "minijoint": str(Path(tiny_model_dir).resolve())}
    with pytest.raises(UserError, match="--baseline-pretrained"):
        plan_experiments(dataclasses.replace(opts, baseline_pretrained=tmp_path / "missing"))


def test_agreement_is_kappa_of_the_answers_against_the_english_verses_answers(tiny_study, tmp_path, capsys):
    """AgreementScorer against a reference written here: each target verse and its English verse
    scored one at a time, unpadded, through the plugged and the source classifier; raw agreement is
    their share of equal answers, kappa tasks/metrics.cohen_kappa of them. Then the study with
    --metric agreement matches at kappa and reports raw agreement and accuracy beside it."""
    from ds_minimodel.steps.transfer import plugged_model
    from ds_minimodel.study.runs import checkpoint_tensors, open_runs
    from ds_minimodel.study.scoring import AccuracyScorer, AgreementScorer
    from ds_minimodel.tasks.batching import encode_texts
    from ds_minimodel.tasks.metrics import cohen_kappa
    from ds_minimodel.tokenizers import load_tokenizer

    accuracy = AccuracyScorer(tiny_study["model"], eval_examples=60)
    run = open_runs({"minijoint": [tiny_study["runs"]["minijoint"][0]]}, "minijoint")["minijoint"][0]
    tensors = checkpoint_tensors(run, run.tags[-1])
    raw = AgreementScorer(accuracy, kappa=False).score(run.info, tensors, run.tokenizer_path)
    kappa = AgreementScorer(accuracy).score(run.info, tensors, run.tokenizer_path)

    plugged = plugged_model(accuracy.model, run.info, tensors, accuracy.lineage, str(accuracy.model_dir)).eval()
    source = accuracy.model.eval()
    english = {ex.id: ex for ex in accuracy.task.tests[accuracy.task.train_language]}

    def answer(model, example, tokenizer_path):
        ids = encode_texts([example], load_tokenizer(tokenizer_path), accuracy.max_len, accuracy.layout).ids[0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        return int(logits["logits"].argmax(-1))

    test = accuracy._subset(accuracy.task.test_in("ny"))
    target = [answer(plugged, ex, run.tokenizer_path) for ex in test]
    source_answers = [answer(source, english[ex.id], accuracy.lineage["tokenizer"]) for ex in test]
    assert raw.num.tolist() == [float(t == e) for t, e in zip(target, source_answers)] and len(target) == 60
    classes = accuracy.task.num_labels
    assert kappa.value == pytest.approx(cohen_kappa(target, source_answers, classes), abs=1e-12)
    # Any subset's kappa from the summed units, as the bootstrap resamples them.
    half = slice(0, 30)
    assert Units_value(kappa, half) == pytest.approx(cohen_kappa(target[half], source_answers[half], classes), abs=1e-12)

    from launchers.study import main

    main(["--runs", *_run_args(tiny_study["runs"]), "--model", str(tiny_study["model"]), "--metric", "agreement",
          "--eval-examples", "60", "--bootstrap", "50", "--loss-sequences", "8", "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"study minijoint: .+ at matched agreement; .+", out[-1]), out[-1]
    result = json.loads((tmp_path / "s" / "study.json").read_text())
    assert list(result["metrics"]) == ["agreement", "raw_agreement", "accuracy", "balanced_accuracy", "mlm_loss"]
    shares = np.bincount(source_answers) / len(test)
    assert result["metrics"]["raw_agreement"]["references"]["one_class_best"] == pytest.approx(shares.max())
    assert "baseline_gain" in result["metrics"]["agreement"] and result["transfer_check"]["required"] is False


def Units_value(units, part):
    from ds_minimodel.study.scoring import Units

    return Units(units.num[part], units.den[part], units.statistic).value
