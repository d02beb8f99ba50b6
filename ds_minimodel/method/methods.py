"""The method vocabulary, in one table: the ways of giving a model a new language (the paper's
names), and what each one's steps are called. The step kinds (rules.py), the steps, the pipeline
and the study read the words from here; none of them spells a method or an adaptation kind again.

  method     its model (step 1 / 1b)   adaptation kind   adapt.through
  full       pretrain                  adapt_full        full    the standard baseline
  minijoint  pretrain_joint            adapt_minijoint   mini    MiniJoint: a mid head after layer k
  minipost   minipost_top              adapt_minipost    mini    MiniPost: a top over frozen 1..k

An adaptation kind is `adapt_<method>`. `adapt.through` (config.THROUGH) is the user's choice of
body: "mini" adapts through the mini-model of whichever of MiniJoint or MiniPost the model
directory holds, "full" through the whole model.
"""

from __future__ import annotations

from ds_minimodel.config import THROUGH

FULL, MINIJOINT, MINIPOST = METHODS = ("full", "minijoint", "minipost")
THROUGH_MINI, THROUGH_FULL = THROUGH  # adapt.through's two values: "mini", "full"

# The step that makes the model each method adapts through (its step kind).
MODEL_KIND = {FULL: "pretrain", MINIJOINT: "pretrain_joint", MINIPOST: "minipost_top"}


def adapt_kind(method: str) -> str:
    """The step kind of adaptation by `method`: adapt_full, adapt_minijoint, adapt_minipost."""
    return f"adapt_{method}"


ADAPT_KIND = {m: adapt_kind(m) for m in METHODS}

# adapt.through of each method.
THROUGH_OF = {FULL: THROUGH_FULL, MINIJOINT: THROUGH_MINI, MINIPOST: THROUGH_MINI}
