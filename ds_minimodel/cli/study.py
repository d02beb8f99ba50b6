"""Compute-budget study: step-2 compute each mini-model needs to reach the standard baseline's metric.

The transfer metric (and the full model's MLM loss) at checkpoints along step 2 against
cumulative FLOPs and wall-clock, for several seeds per method, and the compute each mini-model
method needs to reach the standard baseline's final metric on the seed-averaged, monotone-fitted
curves, with a bootstrap interval over seeds and test examples (the paper's headline: its ratio
to the baseline's).

Read existing adaptation runs (each kept several checkpoints: small train.save_every, large
train.keep_last); a method named several times has one run per seed (train.seed):

    python launchers/study.py --runs full=runs/s/adapt-full-s0 full=runs/s/adapt-full-s1 \
        minijoint=runs/s/adapt-minijoint-s0 minijoint=runs/s/adapt-minijoint-s1 \
        --model runs/pipeline/finetune/final --metric accuracy --fraction 1.0 --out runs/study

or run the adaptation runs first (one after another, via the real adapt launcher):

    python launchers/study.py --run-experiments --pretrained runs/pipeline/pretrain/final \
        --minipost runs/pipeline/minipost/final --model runs/pipeline/finetune/final \
        --target-data data/bible-ny --out runs/study [--steps full=300 minijoint=900 minipost=900] \
        [--checkpoints 10] [--seeds 3] [--methods full minijoint minipost minipost+focus] [--init random] \
        [--lr-grid 1e-3 3e-3 1e-2 [--pilot-steps N|METHOD=N ...]]

(--lr-grid: each method's learning rate from a short pilot over the grid, by one rule for all;
out/lr_pilot.json, study/lr_pilot.py.)

Writes study.json, study.md, metric_vs_flops.png, metric_vs_wallclock.png and
mlm_loss_vs_flops.png into --out, and ends with one line per method:
`study <method>: compute ratio X.XX (95% interval LO-HI) at matched accuracy`.

Or the ratio averaged over target languages, from one study per language (languages.py):

    python launchers/study.py --average runs/study-languages/sw runs/study-languages/tl --out runs/study-languages

Or a study written as a file (studies/*.yaml: its models, languages, methods, steps, seeds and
metrics; ds_minimodel/specs.py), its pipeline first when it names one; --plan prints the commands:

    python launchers/study.py --spec studies/quick.yaml [--plan] [seeds=1 out=runs/x ...]

Or the k x vocabulary frontier at a fixed depth (sweep.py: a MiniPost per k, a tokenizer per
vocabulary, standard baseline and every k per vocabulary, all seeds; sweep.json, sweep.md,
sweep.png, and the table merged into --into-study's study.json and study.md):

    python launchers/study.py --sweep k=1,2,3,4 vocab=8000,32000 --pretrained runs/pipeline/regular/pretrain/final \
        --model runs/pipeline/regular/finetune/final --english-data data/bible-en --target-recipe bible-ny \
        --out runs/study/sweep --into-study runs/study [--steps full=300 [mini=N]] [--budget 1.0]
"""

import argparse
from pathlib import Path

from ds_minimodel.cli.common import args_or_spec, run_main, spec_parser
from ds_minimodel.errors import InvalidValueError

DEFAULT_STEPS = {"full": 300, "minijoint": 900, "minipost": 900}


def parse_runs(items: list[str]) -> dict[str, list[str]]:
    """NAME=DIR items; a NAME given several times has several runs (its seeds)."""
    runs: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidValueError(f"--runs {item!r}: expected NAME=DIR (e.g. full=runs/study/adapt-full-s0)")
        if path in runs.get(name, []):
            raise InvalidValueError(f"--runs names {name}={path} twice")
        runs.setdefault(name, []).append(path)
    return runs


def _per_method(items: list[str], flag: str, steps: dict[str, int], methods=None) -> dict[str, int]:
    """`N` (every method: `methods`, or those in `steps`) and/or `METHOD=N`, later items winning."""
    steps = dict(steps)
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise InvalidValueError(f"{flag} {item!r}: expected N or METHOD=N") from None
        if sep:
            steps[name] = n
        else:
            steps.update({m: n for m in (methods or list(steps))})
    return steps


def parse_steps(items: list[str]) -> dict[str, int]:
    """--steps over the default steps."""
    return _per_method(items, "--steps", DEFAULT_STEPS)


def parse_pilot_steps(items: list[str], methods: tuple[str, ...]) -> dict[str, int] | None:
    """--pilot-steps; None when not given (each method's pilot: a quarter of its steps)."""
    return _per_method(items, "--pilot-steps", {}, methods) if items else None


def parse_sweep(items: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`k=1,2,3,4 vocab=8000,32000` -> ((1, 2, 3, 4), (8000, 32000))."""
    axes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if name not in ("k", "vocab") or not sep or name in axes:
            raise InvalidValueError(f"--sweep {item!r}: expected k=N,N,... and vocab=N,N,..., each once")
        try:
            axes[name] = tuple(int(v) for v in values.split(","))
        except ValueError:
            raise InvalidValueError(f"--sweep {item!r}: values must be integers separated by commas") from None
    missing = [a for a in ("k", "vocab") if a not in axes]
    if missing:
        raise InvalidValueError(f"--sweep needs {' and '.join(f'{a}=...' for a in missing)}")
    return axes["k"], axes["vocab"]


def average(dirs: list[str], out: Path) -> None:
    """--average: the ratio averaged over the languages of several studies, into out/study.json
    and study.md."""
    import json

    from ds_minimodel.study import languages
    from ds_minimodel.study.compare import json_safe
    from ds_minimodel.training.checkpoint import write_atomic
    from ds_minimodel.training.run_lock import RunLock

    if any(Path(d).resolve() == out.resolve() for d in dirs):
        raise InvalidValueError(f"--out {out} is one of the averaged studies: choose another directory")
    result = languages.average_studies(languages.read_studies(dirs))
    with RunLock(out, "--out"):
        write_atomic(out / "study.json", json.dumps(json_safe(result), indent=1))
        write_atomic(out / "study.md", "\n".join(languages.markdown(result)) + "\n")
    print(f"wrote {out / 'study.json'}, study.md")
    for line in languages.summary_lines(result):
        print(line, flush=True)


def spec_main(argv: list[str]) -> None:
    """`--spec NAME [--plan] [key=value ...]`: a study written as a file (ds_minimodel/specs.py)."""
    args = spec_parser("study", "studies", "seeds=1 out=runs/x").parse_args(argv)

    def body():
        from ds_minimodel import specs

        spec = specs.load_study_spec(args.spec, args.overrides)
        commands = specs.study_commands(spec)
        if args.plan:
            specs.print_plan(spec.description, commands)
            if spec.pipeline:
                from ds_minimodel.cli import pipeline

                print(f"# the pipeline {spec.pipeline}:")
                pipeline.main(["--spec", spec.pipeline, "--plan"])
            return
        missing = [] if spec.pipeline else specs.missing_models(spec)
        if missing:
            raise InvalidValueError(f"study {args.spec} needs {', '.join(missing)}"
                                    f"{f': run {spec.built_by} first' if spec.built_by else ''}")
        absent = [] if spec.pipeline else specs.missing_data(spec)  # the pipeline prepares its data
        if absent:
            raise InvalidValueError(f"study {args.spec}: no dataset in {', '.join(absent)} (no index.json) and no "
                                    "recipe to make one")
        specs.run_commands(commands, jobs=spec.jobs)

    run_main(body)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", metavar="NAME=DIR", help="existing adaptation run directories")
    src.add_argument("--run-experiments", action="store_true", help="train the adaptation runs first")
    src.add_argument("--sweep", nargs="+", metavar="AXIS=VALUES", help="k=1,2,3,4 vocab=8000,32000: the frontier")
    src.add_argument("--average", nargs="+", metavar="STUDY_DIR",
                     help="the studies of several target languages: their ratios averaged (geometric mean)")
    p.add_argument("--model", nargs="+", help="fine-tuned classifier directory (step 3's final/): for --metric "
                                              "accuracy; several when the methods adapt from different models "
                                              "(each pack is scored through the one it was made for)")
    p.add_argument("--pretrained", help="pretrained model directory: the runs' source (--run-experiments) and "
                                        "the encoder for --metric retrieval_top1")
    p.add_argument("--metric", choices=("accuracy", "agreement", "retrieval_top1"), default="accuracy",
                   help="the matched metric: target-language accuracy; agreement, the share of test verses whose "
                        "answer is the classifier's answer on the English verse (accuracy reported too); or "
                        "En<->target verse retrieval top-1")
    p.add_argument("--fraction", type=float, default=1.0, help="target = fraction x the baseline's final metric")
    p.add_argument("--baseline", default="full", help="the run the others are compared with")
    p.add_argument("--baseline-at", choices=("crossing", "final"), default="crossing",
                   help="baseline compute: its own first crossing of the target, or its whole run")
    p.add_argument("--eval-examples", type=int, default=None, help="score a fixed seeded subset of the test set")
    p.add_argument("--retrieval-pairs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the --eval-examples subset")
    p.add_argument("--no-init-point", action="store_true",
                   help="do not score the runs' initial embeddings as a point at 0 FLOPs")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates of the interval")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--fit", choices=("isotonic", "raw"), default="isotonic",
                   help="cross the target on the curves' monotone fit (default) or on the raw points")
    p.add_argument("--require-transfer", action="store_true",
                   help="no ratio without transfer: print ratios only when every body passed its gate (body.json) "
                        "and the standard baseline beat its random-embedding control, interval above 0 "
                        "(study/transfer_check.py); otherwise one line saying which failed")
    p.add_argument("--no-loss", action="store_true",
                   help="do not score the full model's MLM loss (the second metric)")
    p.add_argument("--loss-sequences", type=int, default=128, help="validation sequences the MLM loss is scored on")
    p.add_argument("--out", required=True, help="output directory (also the runs' home with --run-experiments)")
    exp = p.add_argument_group("--run-experiments")
    exp.add_argument("--minipost", help="MiniPost model directory (step 1b's final/)")
    exp.add_argument("--baseline-pretrained", help="the model the standard baseline adapts from, when not "
                                                   "--pretrained (the paper's regular model: no mid head)")
    exp.add_argument("--target-data", help="target-language dataset (prepare_data.py --recipe bible-<language>)")
    exp.add_argument("--methods", nargs="+", default=None,
                     help="default: full minijoint [minipost]; METHOD+INIT gives a method its own embedding "
                          "init, e.g. minipost+focus")
    exp.add_argument("--init", default="random", help="adapt.init of every method without its own (default: "
                                                         "random, the paper's)")
    exp.add_argument("--steps", nargs="+", default=[], metavar="[METHOD=]N",
                     help="adaptation steps (default full=300 minijoint=900 minipost=900)")
    exp.add_argument("--checkpoints", type=int, default=10, help="evenly spaced checkpoints per run")
    exp.add_argument("--seeds", type=int, default=3, help="runs per method, train.seed 0..N-1")
    exp.add_argument("--config", default="configs/adapt-demo.yaml", help="adaptation YAML for every run")
    exp.add_argument("--deepspeed", default="ds_configs/z0.json")
    exp.add_argument("--set", nargs="+", default=[], metavar="key=value", dest="overrides",
                     help="extra adaptation config overrides for every run")
    exp.add_argument("--lr-grid", nargs="+", type=float, default=[], metavar="LR",
                     help="learning rates of a pilot run per method before the real runs; each method trains with "
                          "the rate whose pilot ended with the lowest validation loss (out/lr_pilot.json)")
    exp.add_argument("--pilot-steps", nargs="+", default=[], metavar="[METHOD=]N",
                     help="steps of each pilot run (default: a quarter of the method's --steps)")
    sw = p.add_argument_group("--sweep (also --pretrained: the regular model, --model, --steps, --seeds, "
                              "--checkpoints, --config, --set)")
    sw.add_argument("--english-data", help="what each MiniPost top layer trains on (e.g. data/bible-en)")
    sw.add_argument("--target-recipe", help="built-in target corpus, one tokenizer per vocabulary (e.g. bible-ny)")
    sw.add_argument("--target-max-chars", type=int, help="at most this many characters of the target corpus per split")
    sw.add_argument("--minipost-config", default="configs/minipost-demo.yaml")
    sw.add_argument("--budget", type=float, default=1.0,
                    help="each k's FLOP budget as a multiple of the baseline's (without --steps mini=N)")
    sw.add_argument("--into-study", help="a study --out whose study.json and study.md get the sweep table")
    return p


def main(argv=None) -> None:
    if (args := args_or_spec(argv, build_parser, spec_main)) is None:
        return  # a spec ran

    def body():
        if args.average:
            return average(args.average, Path(args.out))
        from ds_minimodel.study import compare, experiments, render, scoring, sweep
        from ds_minimodel.study import runs as study_runs
        from ds_minimodel.training.run_lock import RunLock

        out_lock = RunLock(Path(args.out), "--out")  # reads DSM_RUN_LOCK*: bad values fail here

        if args.bootstrap < 1:
            raise InvalidValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
        if args.loss_sequences < 1:
            raise InvalidValueError(f"--loss-sequences must be >= 1, got {args.loss_sequences}")
        if args.run_experiments and args.seeds < 1:
            raise InvalidValueError(f"--seeds must be >= 1, got {args.seeds}")
        if args.metric in ("accuracy", "agreement") and not args.model:
            raise InvalidValueError(f"--metric {args.metric} needs --model (the fine-tuned classifier directory)")
        if args.metric == "retrieval_top1" and not args.pretrained:
            raise InvalidValueError("--metric retrieval_top1 needs --pretrained (the pretrained model directory)")
        if args.sweep:
            ks, vocabs = parse_sweep(args.sweep)
            if not (args.pretrained and args.english_data and args.target_recipe):
                raise InvalidValueError("--sweep needs --pretrained, --english-data and --target-recipe")
            steps = parse_steps(args.steps)
            sweep_opts = sweep.SweepOptions(out=Path(args.out), pretrained=Path(args.pretrained),
                                            english_data=Path(args.english_data), target_recipe=args.target_recipe,
                                            target_max_chars=args.target_max_chars,
                                            ks=ks, vocabs=vocabs, full_steps=steps["full"], mini_steps=steps.get("mini"),
                                            budget=args.budget, seeds=tuple(range(args.seeds)),
                                            checkpoints=args.checkpoints, config=args.config,
                                            minipost_config=args.minipost_config, ds_config=args.deepspeed,
                                            overrides=args.overrides)
            if args.lr_grid or args.pilot_steps:
                raise InvalidValueError("--lr-grid / --pilot-steps apply to --run-experiments, not --sweep")
            sweep.check_options(sweep_opts)
        elif args.run_experiments:
            if not (args.pretrained and args.target_data):
                raise InvalidValueError("--run-experiments needs --pretrained and --target-data")
            methods = tuple(args.methods or (("full", "minijoint", "minipost") if args.minipost
                                             else ("full", "minijoint")))
            opts = experiments.ExperimentOptions(out=Path(args.out), pretrained=Path(args.pretrained),
                                                 target_data=Path(args.target_data),
                                                 minipost=Path(args.minipost) if args.minipost else None,
                                                 methods=methods, steps=parse_steps(args.steps),
                                                 checkpoints=args.checkpoints, seeds=tuple(range(args.seeds)),
                                                 config=args.config, init=args.init,
                                                 baseline_pretrained=Path(args.baseline_pretrained)
                                                 if args.baseline_pretrained else None,
                                                 ds_config=args.deepspeed, overrides=args.overrides,
                                                 lr_grid=tuple(args.lr_grid),
                                                 pilot_steps=parse_pilot_steps(args.pilot_steps, methods))
            # Every input checked before the scorer loads or anything trains (the pilot's runs too).
            checked = experiments.check_options(opts)
            experiments.plan_runs(opts, checked)
            if opts.lr_grid:
                from ds_minimodel.study import lr_pilot

                lr_pilot.plan_pilot(opts, checked)
        else:
            if args.lr_grid or args.pilot_steps:
                raise InvalidValueError("--lr-grid / --pilot-steps apply to --run-experiments (the pilot trains runs)")
            runs = parse_runs(args.runs)
            study_runs.open_runs(runs, args.baseline)  # bad runs fail before the scorer loads anything
        # Build the scorer before any training: a bad --model fails now, not after an hour.
        if args.metric in ("accuracy", "agreement"):
            scorers = [scoring.AccuracyScorer(m, args.eval_examples, args.seed) for m in args.model]
            scorer = scorers[0] if len(scorers) == 1 else scoring.ByBody(scorers)
            if args.metric == "agreement":
                scorer = scoring.AgreementScorer(scorer)
        else:
            scorer = scoring.RetrievalScorer(args.pretrained, args.retrieval_pairs)
        options = compare.StudyOptions(baseline=args.baseline, fraction=args.fraction, baseline_at=args.baseline_at,
                                       include_init=not args.no_init_point, fit=args.fit,
                                       bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed,
                                       loss=not args.no_loss, loss_sequences=args.loss_sequences,
                                       require_transfer=args.require_transfer)
        # One study per --out (each adaptation run also locks its own directory), taken once
        # every input is checked: a refused study creates nothing.
        with out_lock:
            if args.sweep:
                result = sweep.run_sweep(sweep_opts, scorer, options)
                merged = args.into_study and sweep.merge_into_study(result, Path(args.out), Path(args.into_study))
                print(f"wrote {Path(args.out) / 'sweep.json'}, sweep.md, sweep.png"
                      f"{f'; the table into {args.into_study}/study.md' if merged else ''}")
                for line in render.sweep_lines(result):
                    print(line, flush=True)
                return
            if args.run_experiments:
                if opts.lr_grid:
                    from ds_minimodel.study import lr_pilot

                    runs = lr_pilot.run_with_pilot(opts)
                else:
                    runs = experiments.run_experiments(opts)
            result = compare.compare_runs(runs, scorer, args.out, options)
        print(f"wrote {Path(args.out) / 'study.json'}, study.md, {', '.join(result['plots'])}")
        for line in render.summary_lines(result):
            print(line, flush=True)

    run_main(body)


if __name__ == "__main__":
    main()
