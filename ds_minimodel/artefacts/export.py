"""What users keep: the adapted model for the new language as a Hugging Face directory.

Two exports, each a directory that `transformers` loads offline with `AutoTokenizer`, together
with the target language's tokenizer (`hf_tokenizer.py`: a tokenizer.json that gives our ids):

* `export_mlm`: a pretrained body (a model directory with a trained MLM head: a pretraining
  run's final/, a MiniPost run's final/ over all L layers, or a Hugging Face *ForMaskedLM
  directory) with a language pack plugged in -> `XLMRobertaForMaskedLM` / `BertForMaskedLM`
  (`AutoModelForMaskedLM`, `pipeline("fill-mask")`). The MiniJoint mid head is left out: it is a
  training device, and transformers has no place for it.
* `export_classifier`: a fine-tuned classifier (step 3's final/) with a pack plugged in, as step
  4 evaluates it -> `XLMRobertaForSequenceClassification` / `BertForSequenceClassification`
  (`AutoModelForSequenceClassification`), labels named after the task's labels.

Our classification head is RoBERTa's: out(dropout(tanh(dense(dropout(h))))) with h the state of
`<s>`. RoBERTa's `classifier.{dense,out_proj}` is exactly that; BERT's is its pooler (dense, tanh
on `[CLS]`) then dropout and `classifier`, the same function at inference (dropout is off; in
training BERT drops out only after the pooler). A head over the *mean* of the token states
(finetune.pooling=mean) has no stock transformers class: no *ForSequenceClassification of these
families pools by mean, so it is refused rather than exported as a different model.

The pack is checked against the model first (`langpack.check_compatible`: hidden size, pad id,
the fingerprint of the body it was trained under), the output directory before anything is read
(absent, empty, or --overwrite), and everything is written at once (`staged_dir`): a refusal
leaves nothing behind. Pure state-dict work: no DeepSpeed, no network.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ds_minimodel.artefacts import hf
from ds_minimodel.artefacts.hf_tokenizer import write_hf_tokenizer
from ds_minimodel.artefacts.langpack import PackInfo, check_compatible, load_pack
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plug_embeddings
from ds_minimodel.config import ModelConfig
from ds_minimodel.errors import UserError
from ds_minimodel.staged_dir import check_empty_or_overwrite, staged_dir
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.layout import layout_for

PROVENANCE = "ds_minimodel_export.json"  # what went in; transformers ignores it
_CLASSIFIER_CLASS = {"xlm-roberta": "XLMRobertaForSequenceClassification", "bert": "BertForSequenceClassification"}


def _check_out(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    check_empty_or_overwrite(out, overwrite, "--out")
    target = out.resolve()
    for path in inputs:
        src = path.resolve()
        if target == src or target in src.parents:
            raise UserError(f"--out {out} would replace its own input {path}")


def _pack_for(pack_dir: str | Path, cfg: ModelConfig, lineage: dict, where: str) -> tuple[PackInfo, dict, Tokenizer]:
    info, tensors, tok = load_pack(pack_dir)
    check_compatible(info, hidden_size=cfg.hidden_size, pad_token_id=cfg.pad_token_id,
                     body_fingerprint=lineage["body_fingerprints"].get(str(info.mini_depth), "none"),
                     where=where)
    return info, tensors, tok


def _plug(state: dict, cfg: ModelConfig, info: PackInfo, tensors: dict) -> tuple[dict, ModelConfig]:
    """The encoder without its mid head, speaking the pack's language."""
    body = {k: v for k, v in state.items() if not k.startswith("mid_head.")}
    return plug_embeddings(body, dataclasses.replace(cfg, mini_depth=None), tensors["word"],
                           tensors["output_bias"], info.pad_token_id)


def _model_type(cfg: ModelConfig) -> str:
    return "xlm-roberta" if cfg.position_style == "roberta" else "bert"


def _hf_config(cfg: ModelConfig, tok: Tokenizer, architecture: str | None = None, **extra):
    """The family's transformers config (architectures: *ForMaskedLM unless `architecture`)."""
    config = hf.hf_config_from(cfg, _model_type(cfg))
    if architecture:
        config.architectures = [architecture]
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_id, tok.eos_id, tok.pad_id
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def _max_length(cfg: ModelConfig) -> int:
    # RoBERTa positions start at pad_token_id + 1; BERT's at 0.
    return cfg.max_positions - (cfg.pad_token_id + 1 if cfg.position_style == "roberta" else 0)


def _write(out: Path, config, tensors: dict[str, torch.Tensor], tok: Tokenizer, cfg: ModelConfig,
           provenance: dict) -> Path:
    from safetensors.torch import save_file

    with staged_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_hf_tokenizer(tok, tmp, layout_for(cfg), _max_length(cfg))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return out


def _provenance(kind: str, model_dir, pack_dir, info: PackInfo, cfg: ModelConfig, **extra) -> dict:
    return {"kind": kind, "model_dir": str(model_dir), "pack": str(pack_dir),
            "language": info.language, "method": info.method, "body_fingerprint": info.body_fingerprint,
            "mini_depth": info.mini_depth, "tokenizer_fingerprint": info.tokenizer_fingerprint,
            "model": dataclasses.asdict(cfg), **extra}


def _check_mlm_body(state: dict, lineage: dict, where: str) -> None:
    kind = lineage.get("kind")
    if kind == "finetune":
        raise UserError(f"{where} is a fine-tuned model: export it with `export.py classifier`, "
                        "and the masked LM from the pretrained model it was fine-tuned from")
    if kind == "minipost" and int(lineage["mini_depth"]) < int(lineage.get("source_layers", 0)):
        raise UserError(f"{where} is a MiniPost mini-model ({lineage['mini_depth']} of "
                        f"{lineage['source_layers']} layers): export the full model it was cut from")
    if "lm_head.bias" not in state or "lm_head" in lineage.get("fresh_heads", []):
        raise UserError(f"{where} has no trained MLM head: export a model that has one (train one first: "
                        "MiniPost with minipost.mini_depth=L)")


def export_mlm(model_dir: str | Path, pack_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """The masked LM for the pack's language: `model_dir`'s body and MLM head, the pack's word
    table (tied to the decoder) and output bias; its tokenizer."""
    out = Path(out)
    _check_out(out, overwrite, [Path(model_dir), Path(pack_dir)])
    state, cfg, lineage = read_model_dir(model_dir)
    _check_mlm_body(state, lineage, str(model_dir))
    info, tensors, tok = _pack_for(pack_dir, cfg, lineage, str(model_dir))
    plugged, plugged_cfg = _plug(state, cfg, info, tensors)
    model_type = _model_type(plugged_cfg)
    weights = hf.state_dict_to_hf(plugged, plugged_cfg, model_type)
    config = _hf_config(plugged_cfg, tok)
    return _write(out, config, weights, tok, plugged_cfg,
                  _provenance("masked-lm", model_dir, pack_dir, info, plugged_cfg))


def _classifier_record(lineage: dict, where: str) -> dict:
    """The task record of a fine-tuned classification directory (steps/finetune/common.py)."""
    if lineage.get("kind") != "finetune":
        raise UserError(f"{where} is not a fine-tuned model (lineage kind {lineage.get('kind')!r}); "
                        "export a masked LM with `export.py mlm`")
    task = lineage["config"].get("task", {})
    if task.get("kind", "classification") != "classification":
        raise UserError(f"{where} is a {task.get('kind')!r} model; only classifiers are exported")
    pooling = task.get("pooling", "cls")
    if pooling != "cls":
        raise UserError(f"{where} classifies the {pooling} of the token states (finetune.pooling={pooling}); "
                        "RobertaForSequenceClassification and BertForSequenceClassification classify the first "
                        "token's state only, so it has no Hugging Face form: fine-tune with finetune.pooling=cls "
                        "to export")
    return task


def classifier_head_to_hf(state: dict, model_type: str) -> dict[str, torch.Tensor]:
    """Our SequenceClassifier's head (dense, out) as the family's *ForSequenceClassification tensors."""
    if model_type == "bert":
        names = {"dense": "bert.pooler.dense", "out": "classifier"}
    else:
        names = {"dense": "classifier.dense", "out": "classifier.out_proj"}
    return {f"{theirs}.{kind}": state[f"{ours}.{kind}"]
            for ours, theirs in names.items() for kind in ("weight", "bias")}


def export_classifier(model_dir: str | Path, pack_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """The fine-tuned classifier speaking the pack's language (step 4's plugged model)."""
    out = Path(out)
    _check_out(out, overwrite, [Path(model_dir), Path(pack_dir)])
    state, cfg, lineage = read_model_dir(model_dir)
    task = _classifier_record(lineage, str(model_dir))
    info, tensors, tok = _pack_for(pack_dir, cfg, lineage, str(model_dir))
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    plugged, plugged_cfg = _plug(encoder, cfg, info, tensors)
    model_type = _model_type(plugged_cfg)
    prefix = hf.MODEL_TYPES[model_type][1]
    # The encoder's tensors only: the MLM head is kept in our fine-tuned state but never runs.
    weights = {k: v for k, v in hf.state_dict_to_hf(plugged, plugged_cfg, model_type).items() if k.startswith(prefix)}
    weights.update(classifier_head_to_hf(state, model_type))
    labels = list(task["label_names"])
    config = _hf_config(plugged_cfg, tok, _CLASSIFIER_CLASS[model_type],
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
                        problem_type="single_label_classification", classifier_dropout=task.get("head_dropout"))
    return _write(out, config, weights, tok, plugged_cfg,
                  _provenance("sequence-classification", model_dir, pack_dir, info, plugged_cfg,
                              task={k: task[k] for k in ("name", "label_names", "max_len") if k in task}))
