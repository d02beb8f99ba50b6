"""What the mid head costs the full model (the paper's comparison, its other half).

MiniJoint trains a second MLM head at a middle layer during pretraining, so the full model itself
may change. For each fine-tuned model the study scores through, this reads its pretraining run
(FLOPs, final validation MLM loss of the last layer's head, whether it had a mid head) and its
English (source) test accuracy, per example; a model with a mid head is compared with the one
without on the same test examples (paired difference and its standard error: the sampling of test
examples for these two models, one pretraining and one fine-tuning each, not seed-to-seed
variation)."""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.config import ModelConfig, migrate_renamed, read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.tasks.metrics import paired_difference
from ds_minimodel.training.metrics import read_metrics


def _pretraining(pretrained_dir: Path) -> dict:
    """The pretraining run behind a model directory: its config's train.out_dir holds metrics.jsonl."""
    cfg = read_json_object(pretrained_dir / "config.json")
    run_dir = Path(cfg.get("train", {}).get("out_dir") or pretrained_dir.parent)
    train = read_metrics(run_dir, "train")
    evals = [r for r in read_metrics(run_dir, "eval") if "valid_final_loss" in r]
    return {"pretrained": str(pretrained_dir), "mini_depth": migrate_renamed(ModelConfig, cfg["model"]).get("mini_depth"),
            "pretraining_steps": train[-1]["step"] if train else None,
            "pretraining_flops": train[-1]["flops"] if train else None,
            "valid_final_loss": evals[-1]["valid_final_loss"] if evals else None}


def describe(scorer) -> dict:
    """One AccuracyScorer's model: its pretraining and its English results (per example too)."""
    finetuned = read_json_object(Path(scorer.model_dir) / "config.json")
    pretrained = Path(finetuned["finetune"]["finetune"]["model_dir"])  # the FinetuneConfig's finetune.model_dir
    if not (pretrained / "config.json").is_file():
        raise UserError(f"{scorer.model_dir} was fine-tuned from {pretrained}, which is not a model directory here")
    return {"model": str(scorer.model_dir), **_pretraining(pretrained),
            "source_accuracy": scorer.source_accuracy, "source_examples": len(scorer.source_ids),
            "_by_id": dict(zip(scorer.source_ids, scorer.source_correct.tolist()))}


def compare_full_models(scorers: list) -> dict | None:
    """{"models": [...], "reference": model dir} with each model's English accuracy paired against
    the reference's (the first model without a mid head), or None when fewer than two models."""
    if len(scorers) < 2:
        return None
    rows = [describe(s) for s in scorers]
    regular = next((r for r in rows if r["mini_depth"] is None), None)
    if regular is not None:
        for r in rows:
            if r is regular:
                continue
            common = [i for i in regular["_by_id"] if i in r["_by_id"]]
            if len(common) >= 2:
                diff, se = paired_difference([r["_by_id"][i] for i in common], [regular["_by_id"][i] for i in common])
                r["source_vs_reference"] = {"difference": diff, "standard_error": se, "examples": len(common)}
            if r["valid_final_loss"] is not None and regular["valid_final_loss"] is not None:
                r["valid_final_loss_vs_reference"] = r["valid_final_loss"] - regular["valid_final_loss"]
    for r in rows:
        del r["_by_id"]  # the per-example flags stay out of study.json
    return {"models": rows, "reference": regular["model"] if regular else None}


def markdown(comparison: dict | None) -> list[str]:
    """study.md's section (nothing when there was one model)."""
    if not comparison:
        return []

    def num(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["## What the mid head costs the full model", "",
             "Each model the packs were scored through: its pretraining and its English (source) test accuracy "
             "after the same fine-tuning. vs the model without a mid head: paired on the same test examples, "
             "± one standard error, * beyond two. The ± covers test-example sampling only, of one model each (one "
             "pretraining and one fine-tuning seed per model): it is not the mid head's cost across seeds, which "
             "would need several pretrainings of each.", "",
             "| fine-tuned model | mid head at layer | pretraining steps | pretraining FLOPs | final validation MLM "
             "loss | English accuracy | vs no mid head (points) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in comparison["models"]:
        d = r.get("source_vs_reference")
        vs = "-" if d is None else (f"{100 * d['difference']:+.1f} ± {100 * d['standard_error']:.1f}"
                                    f"{'*' if abs(d['difference']) > 2 * d['standard_error'] else ''}")
        loss = num(r["valid_final_loss"], ".3f")
        if r.get("valid_final_loss_vs_reference") is not None:
            loss += f" ({r['valid_final_loss_vs_reference']:+.3f})"
        lines.append(f"| `{r['model']}` | {num(r['mini_depth'], 'd') if r['mini_depth'] is not None else 'none'}"
                     f" | {num(r['pretraining_steps'], 'd')} | {num(r['pretraining_flops'], '.3g')} | {loss} | "
                     f"{r['source_accuracy']:.3f} | {vs} |")
    return lines + ["", "The MiniJoint model's pretraining FLOPs include its mid head's; the validation loss is the "
                    "last layer's head on the same English validation split.", ""]
