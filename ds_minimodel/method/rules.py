"""What each pipeline step kind runs and trains: the one rule the steps freeze their models by
and `flops.py` counts by.

A step kind names a step of the pipeline as it really runs (the launchers and checkpoints record
it as `step_kind`). Each kind fixes the route through the model and who trains:

  pretrain        plain MLM (route final): everything the route uses trains
  pretrain_joint  MiniJoint: final + w * mid MLM (route joint): everything trains
  minipost_top    a MiniPost mini-model of k + n layers: embeddings and layers 1..k frozen, the
                  n top layers and the MLM head train (its decoder is the frozen word table)
  adapt_minijoint adaptation through a MiniJoint mini-model: layers 1..k with the mid head
                  carved out as the k-layer model's lm_head (`artefacts.surgery.minijoint_mini`)
  adapt_minipost  adaptation through a MiniPost mini-model (k + n layers)
  adapt_full      the standard baseline: adaptation through all L layers and the final head
  finetune        a SequenceClassifier: body + classification head; the embedding module and
                  the MLM heads stay frozen
  finetune_qa     a QuestionAnswering model: body + span head, frozen like finetune
  eval            forward only (route final)

The kinds of the three methods (pretrain, pretrain_joint, minipost_top; adapt_<method>) come
from the method vocabulary (methods.py). The three adapt kinds train the same thing, the new word table and the output bias
(`lm_head.bias`), over a frozen body of route final; they differ only in the body (the model
config they run with). On top of the kind's rule, `train.freeze` patterns freeze more.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

from ds_minimodel.config import ModelConfig
from ds_minimodel.errors import UserError
from ds_minimodel.method.methods import ADAPT_KIND, FULL, MINIJOINT, MINIPOST, MODEL_KIND

STEP_KINDS = (*MODEL_KIND.values(), *ADAPT_KIND.values(), "finetune", "finetune_qa", "eval")

# Route of MLMEncoder.forward used by each kind (the fine-tuning kinds run encode() + their head).
ROUTE = {
    MODEL_KIND[FULL]: "final",
    MODEL_KIND[MINIJOINT]: "joint",
    MODEL_KIND[MINIPOST]: "final",
    **{kind: "final" for kind in ADAPT_KIND.values()},
    "finetune": None,
    "finetune_qa": None,
    "eval": "final",
}

# The task head each fine-tuning kind runs on the last layer.
TASK_HEADS = {"finetune": "classification", "finetune_qa": "span"}

# Where SequenceClassifier and QuestionAnswering keep their MLMEncoder; their other parameters
# are the task head.
ENCODER = "encoder."

ADAPT_TRAINABLE = ("embeddings.word", "lm_head.bias")


def check_kind(kind: str) -> None:
    if kind not in STEP_KINDS:
        raise UserError(f"unknown step kind {kind!r} (known: {', '.join(STEP_KINDS)})")


def minipost_depth(cfg: ModelConfig, kind: str, k: int | None) -> int | None:
    """MiniPost's k for minipost_top (its cfg has k + n layers; k defaults to
    cfg.mini_depth), None for the other kinds."""
    if kind != MODEL_KIND[MINIPOST]:
        return None
    k = k if k is not None else cfg.mini_depth
    if k is None:
        raise UserError("step minipost_top needs the number of frozen bottom layers k "
                        "(pass mini_depth, or set model.mini_depth)")
    # k = num_layers: no top layers, only the MLM head trains (a head for a headless encoder).
    if not 1 <= k <= cfg.num_layers:
        raise UserError(f"minipost_top: frozen layers k={k} must be in 1..num_layers "
                        f"(model.num_layers={cfg.num_layers} counts the k frozen + the new top layers)")
    return k


def _layer_index(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("layers.") else None


def _kind_trains(name: str, kind: str, mini_depth: int | None) -> bool:
    if kind in TASK_HEADS:
        if not name.startswith(ENCODER):
            return True  # the task head
        # The whole embedding module stays frozen (its layer norm too): a language pack trained
        # under the pretrained embedding layer norm and positions must meet them again at
        # transfer. The MLM heads are kept (a pack plugs in by name) but never run.
        return not name[len(ENCODER):].startswith(("embeddings.", "lm_head.", "mid_head."))
    if kind == MODEL_KIND[FULL]:  # route final: a mid head, if the model has one, is unused
        return not name.startswith("mid_head.")
    if kind == MODEL_KIND[MINIJOINT]:
        return True
    if kind == MODEL_KIND[MINIPOST]:
        if mini_depth is None:
            raise UserError("is_trainable(kind='minipost_top') needs mini_depth (MiniPost's k)")
        i = _layer_index(name)
        if i is not None:
            return i >= mini_depth  # 0-based: layers k..k+n-1 are the top layers k+1..k+n
        return name.startswith("lm_head.")  # dense, layer norm, bias; its tied weight is embeddings.word
    if kind in ADAPT_KIND.values():
        return name in ADAPT_TRAINABLE
    return False  # eval


def is_trainable(name: str, kind: str, *, mini_depth: int | None = None, freeze: Sequence[str] = ()) -> bool:
    """Whether parameter `name` trains in step `kind`.

    `name` as the step's model names it (named_parameters(), so the tied MLM decoder weight is
    `embeddings.word`): an MLMEncoder's for the MLM kinds; for the fine-tuning kinds a
    SequenceClassifier's or QuestionAnswering's, `encoder.` + an MLMEncoder name for the body and
    any other name for the task head. `mini_depth` is MiniPost's k (minipost_top only).
    `freeze`: train.freeze patterns (fnmatch), frozen on top of the kind's rule. Modules a kind
    does not run (e.g. the mid head under route final) are frozen, so that every trainable
    parameter gets a gradient.
    """
    check_kind(kind)
    if any(fnmatch.fnmatchcase(name, p) for p in freeze):
        return False
    return _kind_trains(name, kind, mini_depth)


def check_freeze_patterns(names: Sequence[str], freeze: Sequence[str]) -> None:
    """A train.freeze pattern that matches no parameter is a typo: refuse it."""
    unmatched = [p for p in freeze if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise UserError(f"train.freeze pattern(s) {', '.join(unmatched)} match no parameter "
                        f"(names look like {names[0]}, layers.0.fc1.weight)")


def set_requires_grad_for_step(model, kind: str, *, mini_depth: int | None = None,
                               freeze: Sequence[str] = ()) -> list[str]:
    """Freeze/unfreeze `model` for step `kind` as `is_trainable` says; return the trainable names.

    `model`: an MLMEncoder, or for the fine-tuning kinds a SequenceClassifier / QuestionAnswering.
    """
    check_kind(kind)
    encoder = getattr(model, "encoder", model)
    assert (encoder is not model) == (kind in TASK_HEADS), f"step {kind} runs another model than {type(model).__name__}"
    k = minipost_depth(encoder.cfg, kind, mini_depth)
    named = list(model.named_parameters())
    check_freeze_patterns([n for n, _ in named], freeze)
    trainable = []
    for name, p in named:
        p.requires_grad_(is_trainable(name, kind, mini_depth=k, freeze=freeze))
        if p.requires_grad:
            trainable.append(name)
    return trainable
