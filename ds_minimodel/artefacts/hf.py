"""State-dict adapters to and from Hugging Face RoBERTa / XLM-R / BERT checkpoints.

Supported on the way in (`load_hf_pretrained`, `state_dict_from_hf`): `XLMRobertaForMaskedLM`,
`RobertaForMaskedLM`, `BertForMaskedLM` (also `BertForPreTraining` checkpoints such as
bert-base-uncased: the NSP head and pooler are dropped) and the bare encoders `XLMRobertaModel`,
`RobertaModel`, `BertModel` (e.g. sentence-transformers' all-MiniLM-L6-v2), whose keys may or may
not carry the `roberta.` / `bert.` prefix. A bare encoder has no MLM head: the returned state
dict then has no `lm_head.*` keys and `load_hf_pretrained` keeps the fresh head that
`MLMEncoder.__init__` initialised (dense normal(0, init_std), layer norm 1/0, bias 0, decoder tied
to the loaded word embeddings); the model's `hf_fresh_init` attribute names such heads.

On the way out (`state_dict_to_hf`, `export_hf`) the layout is `XLMRobertaForMaskedLM` (or
`RobertaForMaskedLM` with model_type="roberta") for position_style "roberta" and
`BertForMaskedLM` for "bert", with exactly the tensors `save_pretrained` writes in transformers
5.x: no `lm_head.decoder.*` / `cls.predictions.decoder.*` (tied to the word embeddings and to
`lm_head.bias` / `cls.predictions.bias`). The MiniJoint mid head, which Hugging Face has no place
for, goes to `mid_head.safetensors` next to it, and `ds_minimodel.json` keeps our full ModelConfig,
so `load_hf_pretrained(export_dir)` rebuilds the exact model.

Our layout differs from Hugging Face's in one place that is not a rename: `layers.i.attention.qkv`
is the row-wise concatenation [query; key; value] of Hugging Face's three projections.

Everything here is plain PyTorch: no DeepSpeed, no network (a ZeRO-3 model must be consolidated,
e.g. with checkpoint.py's fp32 consolidation, before `export_hf`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ds_minimodel.config import ConfigError, ModelConfig, from_dict, migrate_renamed, read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.staged_dir import staged_dir

log = logging.getLogger(__name__)

# Hugging Face model_type -> (our position_style, key prefix of the encoder in *ForMaskedLM).
MODEL_TYPES = {"xlm-roberta": ("roberta", "roberta."), "roberta": ("roberta", "roberta."), "bert": ("bert", "bert.")}
_MLM_CLASS = {"xlm-roberta": "XLMRobertaForMaskedLM", "roberta": "RobertaForMaskedLM", "bert": "BertForMaskedLM"}

EXPORT_MARKER = "ds_minimodel.json"
MID_HEAD_FILE = "mid_head.safetensors"
EXPORT_FORMAT = "ds_minimodel-hf-export"
SPM_NAME = "sentencepiece.bpe.model"  # XLM-R's file name for its sentencepiece model

# Per-layer renames, ours -> Hugging Face (under `{prefix}encoder.layer.{i}.`). qkv is special.
_LAYER_MAP = {
    "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_EMB_MAP = {
    "embeddings.word": "embeddings.word_embeddings.weight",
    "embeddings.position": "embeddings.position_embeddings.weight",
    "embeddings.token_type": "embeddings.token_type_embeddings.weight",
    "embeddings.layer_norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.layer_norm.bias": "embeddings.LayerNorm.bias",
}
# Our head -> Hugging Face head, by position style. The decoder weight is tied, not listed.
_HEAD_MAP = {
    "roberta": {
        "lm_head.dense.weight": "lm_head.dense.weight",
        "lm_head.dense.bias": "lm_head.dense.bias",
        "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
        "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
        "lm_head.bias": "lm_head.bias",
    },
    "bert": {
        "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
        "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
        "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "lm_head.bias": "cls.predictions.bias",
    },
}
_HEAD_DECODER = {"roberta": "lm_head.decoder.", "bert": "cls.predictions.decoder."}
_MID_HEAD_KEYS = ("mid_head.dense.weight", "mid_head.dense.bias", "mid_head.layer_norm.weight",
                  "mid_head.layer_norm.bias", "mid_head.bias")  # mid_head.weight is tied


def _model_type(model_type: str, where: str = "") -> tuple[str, str]:
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{where}model_type {model_type!r} is not supported (supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    return MODEL_TYPES[model_type]


def _short(keys, n: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --------------------------------------------------------------------------------------------
# Configs.


def config_from_hf(hf_config: Any, **overrides: Any) -> ModelConfig:
    """Our ModelConfig from a transformers config object (or its `to_dict()`).

    `overrides` set fields Hugging Face does not describe (attention, kernels, mini_depth, ...).
    """
    raw = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    model_type = raw.get("model_type")
    style, _ = _model_type(model_type, "config: ")
    problems = []
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        problems.append(f"hidden_act {act!r} is not supported (our encoder uses exact gelu)")
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
        problems.append(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        problems.append("is_decoder / add_cross_attention models are not supported (encoder only)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings") if raw.get(k) is None]
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    pad = raw.get("pad_token_id")
    if pad is None:
        if style == "roberta":
            problems.append("pad_token_id is missing (RoBERTa-style positions count from it)")
        pad = 0
    if problems:
        raise UserError(f"config ({model_type}): " + "; ".join(problems))
    fields = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        intermediate_size=raw["intermediate_size"],
        max_positions=raw["max_position_embeddings"],
        pad_token_id=pad,
        position_style=style,
        type_vocab_size=raw.get("type_vocab_size", 1 if style == "roberta" else 2),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5 if style == "roberta" else 1e-12)),
        hidden_dropout=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(raw.get("attention_probs_dropout_prob", 0.1)),
        init_std=float(raw.get("initializer_range", 0.02)),
    )
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown ModelConfig field(s) in overrides: {', '.join(unknown)}")
    fields.update(overrides)
    cfg = ModelConfig(**fields)
    problems = cfg.problems()
    if problems:
        raise UserError(f"config ({model_type}): " + "; ".join(problems))
    return cfg


def _default_model_type(cfg: ModelConfig, model_type: str | None) -> str:
    if model_type is None:
        return "xlm-roberta" if cfg.position_style == "roberta" else "bert"
    style, _ = _model_type(model_type)
    if style != cfg.position_style:
        raise UserError(
            f"model_type {model_type!r} uses position_style {style!r} but model.position_style is "
            f"{cfg.position_style!r}"
        )
    return model_type


def hf_config_from(cfg: ModelConfig, model_type: str | None = None):
    """A transformers config for `cfg`: XLMRobertaConfig (roberta style; or RobertaConfig with
    model_type="roberta") or BertConfig (bert style), with architectures = [*ForMaskedLM]."""
    import transformers

    model_type = _default_model_type(cfg, model_type)
    if cfg.vocab_size is None:
        raise UserError("model.vocab_size is unresolved (None): cannot build a Hugging Face config")
    cls = {"xlm-roberta": transformers.XLMRobertaConfig, "roberta": transformers.RobertaConfig,
           "bert": transformers.BertConfig}[model_type]
    return cls(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.init_std,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=True,
        architectures=[_MLM_CLASS[model_type]],
    )


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in `MLMEncoder(cfg).state_dict()` (built on the meta device: free)."""
    from ds_minimodel.model import MLMEncoder

    with torch.device("meta"):
        model = MLMEncoder(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# State dicts.

_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _normalise_hf_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old TF-converted BERT checkpoints name layer-norm parameters gamma / beta."""
    out = {}
    for k, v in sd.items():
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def _from_hf(hf_state_dict: Mapping[str, torch.Tensor], model_type: str, where: str = "checkpoint"):
    """-> (our state dict, has_mlm_head, {our key: Hugging Face key(s) it came from})."""
    style, prefix = _model_type(model_type, f"{where}: ")
    sd = _normalise_hf_keys(hf_state_dict)
    # Encoder keys carry the prefix in *ForMaskedLM checkpoints, not in bare-encoder ones.
    with_prefix = any(k.startswith(prefix + "embeddings.") for k in sd)
    without = any(k.startswith("embeddings.") for k in sd)
    if with_prefix and without:
        raise UserError(f"{where}: holds encoder keys both with and without the {prefix!r} prefix")
    if not (with_prefix or without):
        raise UserError(
            f"{where}: no {prefix}embeddings.* or embeddings.* tensors: not a {model_type} encoder "
            f"(first keys: {_short(sd)})"
        )
    p = prefix if with_prefix else ""
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    src: dict[str, str] = {}
    missing: list[str] = []

    def take(ours: str, theirs: str) -> None:
        if theirs in sd:
            out[ours], src[ours] = sd[theirs], theirs
            used.add(theirs)
        else:
            missing.append(theirs)

    for ours, theirs in _EMB_MAP.items():
        take(ours, p + theirs)
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _LAYER_RE.match(k[len(p):] if k.startswith(p) else ""))})
    if not layer_ids:
        raise UserError(f"{where}: no {p}encoder.layer.N.* tensors (not a {model_type} encoder)")
    if layer_ids != list(range(len(layer_ids))):
        raise UserError(f"{where}: encoder layers are not numbered 0..N-1 (found {layer_ids})")
    for i in layer_ids:
        base = f"{p}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            parts = [f"{base}attention.self.{n}.{kind}" for n in ("query", "key", "value")]
            gone = [k for k in parts if k not in sd]
            if gone:
                missing.extend(gone)
                continue
            shapes = {tuple(sd[k].shape) for k in parts}
            if len(shapes) != 1:
                raise UserError(
                    f"{where}: {base}attention.self.{{query,key,value}}.{kind} have different shapes "
                    f"{[tuple(sd[k].shape) for k in parts]}"
                )
            out[f"layers.{i}.attention.qkv.{kind}"] = torch.cat([sd[k] for k in parts], dim=0)
            src[f"layers.{i}.attention.qkv.{kind}"] = f"{base}attention.self.{{query,key,value}}.{kind}"
            used.update(parts)
        for ours, theirs in _LAYER_MAP.items():
            for kind in ("weight", "bias"):
                take(f"layers.{i}.{ours}.{kind}", f"{base}{theirs}.{kind}")
    if missing:
        raise UserError(f"{where}: missing {len(missing)} encoder tensor(s): {_short(missing)}")

    # MLM head: all of it or none of it.
    head = _HEAD_MAP[style]
    dec = _HEAD_DECODER[style]
    bias_key = head["lm_head.bias"]
    present = [h for h in head.values() if h in sd]
    if bias_key not in sd and dec + "bias" in sd:  # older checkpoints keep only the decoder's bias
        present.append(bias_key)
    has_head = bool(present) or dec + "weight" in sd
    if has_head:
        absent = [h for h in head.values() if h not in present]
        if absent:
            raise UserError(f"{where}: MLM head is incomplete, missing {_short(absent)}")
        for ours, theirs in head.items():
            if theirs == bias_key and theirs not in sd:
                theirs = dec + "bias"
            out[ours], src[ours] = sd[theirs], theirs
            used.add(theirs)
        out["lm_head.weight"], src["lm_head.weight"] = out["embeddings.word"], src["embeddings.word"]
        if dec + "weight" in sd:
            w = sd[dec + "weight"]
            if w.shape != out["embeddings.word"].shape or not torch.equal(w, out["embeddings.word"]):
                raise UserError(
                    f"{where}: {dec}weight differs from {p}embeddings.word_embeddings.weight; our MLM head "
                    "ties its decoder to the word embeddings, untied heads are not supported"
                )
            used.add(dec + "weight")
        used.add(dec + "bias")  # tied to the head bias (Hugging Face's _tied_weights_keys)

    # Tolerated extras: the pooler, BERT's NSP head, non-persistent buffers saved by old versions.
    def ignorable(k: str) -> bool:
        k2 = k[len(p):] if p and k.startswith(p) else k
        return (
            k2.startswith("pooler.")
            or k.startswith("cls.seq_relationship.")
            or k2 in ("embeddings.position_ids", "embeddings.token_type_ids")
        )

    extra = [k for k in sd if k not in used and not ignorable(k)]
    if extra:
        raise UserError(
            f"{where}: unexpected tensor(s) for a {model_type} encoder/MLM checkpoint: {_short(extra)}"
        )
    return out, has_head, src


def state_dict_from_hf(hf_state_dict: Mapping[str, torch.Tensor], model_type: str) -> tuple[dict, bool]:
    """Hugging Face (*ForMaskedLM or bare encoder) state dict -> (ours, has_mlm_head).

    With a head, `lm_head.weight` is the word-embedding tensor itself (tied). Without one, the
    result has no `lm_head.*` keys: the caller keeps a freshly initialised head (what
    `load_hf_pretrained` does). Never contains `mid_head.*`. Shapes are checked for internal
    consistency only; `load_hf_pretrained` checks them against the config.
    """
    out, has_head, _ = _from_hf(hf_state_dict, model_type)
    return out, has_head


def _strip_module_prefix(sd: Mapping[str, Any]) -> dict:
    """A plain dict of our keys: a DeepSpeed / DDP wrapper's `module.` prefix removed, and the
    tied head weights (`lm_head.weight`, `mid_head.weight`) filled in from `embeddings.word`
    where a consolidation step dropped them as duplicates."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = dict(sd)
    if "embeddings.word" in sd:
        for head in ("lm_head", "mid_head"):
            if f"{head}.bias" in sd and f"{head}.weight" not in sd:
                sd[f"{head}.weight"] = sd["embeddings.word"]
    return sd


def _check_ours(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    """Every tensor `MLMEncoder(cfg)` has, with its shape, and nothing else."""
    if cfg.vocab_size is None:
        raise UserError(f"{where}: model.vocab_size is unresolved (None)")
    problems = cfg.problems()
    if problems:
        raise UserError(f"{where}: invalid model config: " + "; ".join(problems))
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing:
        raise UserError(f"{where}: missing tensor(s) {_short(missing)} for the given model config")
    if extra:
        raise UserError(f"{where}: tensor(s) {_short(extra)} are not in a model with the given config")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise UserError(f"{where}: tensor {k} has shape {tuple(sd[k].shape)}, the model config needs {shape}")
    if not torch.equal(sd["lm_head.weight"], sd["embeddings.word"]):
        raise UserError(f"{where}: lm_head.weight differs from embeddings.word (they must be tied)")


def state_dict_to_hf(our_state_dict: Mapping[str, torch.Tensor], cfg: ModelConfig,
                     model_type: str | None = None) -> dict[str, torch.Tensor]:
    """Our state dict -> the tensors `*ForMaskedLM.save_pretrained` writes (tied ones left out).

    model_type: "xlm-roberta" (default for position_style "roberta"), "roberta", or "bert" (the
    only choice for position_style "bert"). The mid head (if any) is not part of the result.
    Tensors are contiguous copies (safetensors refuses shared storage).
    """
    model_type = _default_model_type(cfg, model_type)
    style, p = MODEL_TYPES[model_type]
    sd = _strip_module_prefix(our_state_dict)
    _check_ours(sd, cfg, "state dict")

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().to("cpu").contiguous().clone()

    out = {p + theirs: t(sd[ours]) for ours, theirs in _EMB_MAP.items()}
    d = cfg.hidden_size
    for i in range(cfg.num_layers):
        base = f"{p}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = sd[f"layers.{i}.attention.qkv.{kind}"]
            for j, name in enumerate(("query", "key", "value")):
                out[f"{base}attention.self.{name}.{kind}"] = t(qkv[j * d:(j + 1) * d])
        for ours, theirs in _LAYER_MAP.items():
            for kind in ("weight", "bias"):
                out[f"{base}{theirs}.{kind}"] = t(sd[f"layers.{i}.{ours}.{kind}"])
    for ours, theirs in _HEAD_MAP[style].items():
        out[theirs] = t(sd[ours])
    return out


# --------------------------------------------------------------------------------------------
# Files.


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def load_bin(f: Path) -> dict:
        try:
            return torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: say which
            raise UserError(f"{f}: cannot read PyTorch weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None

    def load_st(f: Path) -> dict:
        try:
            return load_file(str(f))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{f}: cannot read safetensors weights ({type(e).__name__}: {str(e)[:200]})") from None

    for index, loader in (("model.safetensors.index.json", load_st), ("pytorch_model.bin.index.json", load_bin)):
        if (d / index).is_file():
            try:
                files = sorted(set(read_json_object(d / index)["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as e:
                raise UserError(f"{d / index}: not a valid shard index ({e})") from None
            sd: dict[str, torch.Tensor] = {}
            for f in files:
                if not (d / f).is_file():
                    raise UserError(f"{d / index}: shard {f} is missing")
                sd.update(loader(d / f))
            return sd
    if (d / "model.safetensors").is_file():
        return load_st(d / "model.safetensors")
    if (d / "pytorch_model.bin").is_file():
        return load_bin(d / "pytorch_model.bin")
    raise UserError(f"{d}: no model.safetensors or pytorch_model.bin (nor a sharded index) in this directory")


def _is_previous_export(d: Path) -> bool:
    try:
        return read_json_object(d / EXPORT_MARKER).get("format") == EXPORT_FORMAT
    except UserError:
        return False


def load_hf_pretrained(path_or_dir: str | os.PathLike, mini_depth: int | None = None, *,
                       overrides: Mapping[str, Any] | None = None):
    """Our `MLMEncoder` from a LOCAL Hugging Face directory (config.json + weights), no network.

    Reads model.safetensors / pytorch_model.bin (sharded or not). A directory written by
    `export_hf` comes back exactly: its ds_minimodel.json gives the full ModelConfig and
    mid_head.safetensors the mid head. Otherwise the config comes from config.json
    (`config_from_hf`), and `mini_depth` adds a freshly initialised mid head at that layer
    (asking for a different layer than an export's saved mid head is an error: its weights
    would be silently dropped). `overrides` set non-architectural ModelConfig fields (attention,
    kernels, dropouts, ...). A checkpoint without an MLM head (bare BertModel / RobertaModel)
    gets a fresh head; `model.hf_fresh_init` lists the heads that were not loaded.
    Every other tensor of the model is filled from the file, with its shape checked. Returned in
    eval mode, like `from_pretrained`.
    """
    from ds_minimodel.model import MLMEncoder

    path = Path(path_or_dir)
    d = path.parent if path.is_file() else path
    if not d.is_dir():
        raise UserError(f"{path}: no such directory")
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: no config.json: not a Hugging Face model directory")
    raw = read_json_object(d / "config.json")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{d / 'config.json'}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    overrides = dict(overrides or {})
    marker = d / EXPORT_MARKER
    exported = _is_previous_export(d)
    try:
        if exported:
            meta = read_json_object(marker)
            cfg = from_dict(ModelConfig, meta["model"])
            if cfg.mini_depth is not None and mini_depth is not None and mini_depth != cfg.mini_depth:
                raise UserError(
                    f"{marker}: the export has a trained mid head at layer {cfg.mini_depth}, "
                    f"mini_depth={mini_depth} would drop it"
                )
            if mini_depth is not None:
                cfg = dataclasses.replace(cfg, mini_depth=mini_depth)
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
            if unknown:
                raise UserError(f"unknown ModelConfig field(s) in overrides: {', '.join(unknown)}")
            cfg = dataclasses.replace(cfg, **overrides)
        else:
            overrides.setdefault("mini_depth", mini_depth)
            cfg = config_from_hf(raw, **overrides)
    except ConfigError as e:
        raise UserError(f"{marker}: {e}") from None
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(str(d)) else f"{d / 'config.json'}: {msg}") from None
    problems = cfg.problems()
    if problems:
        raise UserError(f"{d}: invalid model config: " + "; ".join(problems))

    sd, has_head, src = _from_hf(_read_weights(d), model_type, where=str(d))
    saved_mid = exported and migrate_renamed(ModelConfig, read_json_object(marker)["model"]).get("mini_depth") is not None
    if saved_mid:
        if not (d / MID_HEAD_FILE).is_file():
            raise UserError(f"{marker}: says there is a mid head but {MID_HEAD_FILE} is missing")
        from safetensors.torch import load_file

        mid = load_file(str(d / MID_HEAD_FILE))
        if sorted(mid) != sorted(_MID_HEAD_KEYS):
            raise UserError(f"{d / MID_HEAD_FILE}: expected tensors {', '.join(_MID_HEAD_KEYS)}, got {_short(mid)}")
        for k, v in mid.items():
            sd[k], src[k] = v, f"{MID_HEAD_FILE}:{k}"
        sd["mid_head.weight"], src["mid_head.weight"] = sd["embeddings.word"], src["embeddings.word"]

    model = MLMEncoder(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    extra = [k for k in sd if k not in want]
    if extra:
        raise UserError(
            f"{d}: checkpoint tensor(s) {_short(src.get(k, k) for k in extra)} do not fit config.json "
            f"(num_hidden_layers={cfg.num_layers})"
        )
    for k, v in sd.items():
        if tuple(v.shape) != want[k]:
            raise UserError(
                f"{d}: tensor {src.get(k, k)} has shape {tuple(v.shape)} but the config implies {want[k]} "
                f"(as our {k})"
            )
    fresh = []
    if not has_head:
        fresh.append("lm_head")
    if cfg.mini_depth is not None and not saved_mid:
        fresh.append("mid_head")
    allowed = {k for k in want if k.split(".")[0] in fresh}
    missing = [k for k in want if k not in sd and k not in allowed]
    if missing:
        raise UserError(f"{d}: checkpoint lacks tensor(s) the config needs: {_short(missing)}")
    with torch.no_grad():
        result = model.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= allowed, result
    assert model.lm_head.weight is model.embeddings.word
    for name in fresh:
        log.warning("%s: no %s in the checkpoint; it is freshly initialised", d, name)
    model.hf_fresh_init = tuple(fresh)
    return model.eval()


def export_hf(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], cfg: ModelConfig,
              out_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
              model_type: str | None = None) -> Path:
    """Write a directory that `AutoModelForMaskedLM.from_pretrained(out_dir)` loads cleanly.

    Files: config.json, model.safetensors (Hugging Face layout, see `state_dict_to_hf`),
    mid_head.safetensors (only with a mid head), ds_minimodel.json (our full ModelConfig; also the
    marker of an export) and, with `tokenizer_path`, the sentencepiece model as
    sentencepiece.bpe.model (a directory's files are copied as they are). No tokenizer_config.json
    is written: our vocabulary's special ids need not follow XLMRobertaTokenizer's.

    Everything is validated first and written to a temporary sibling that is renamed into place,
    so a failure leaves nothing behind. An existing non-empty `out_dir` is replaced only if it is
    a previous export; anything else is refused (UserError).
    """
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = _strip_module_prefix(sd)
    model_type = _default_model_type(cfg, model_type)
    hf_sd = state_dict_to_hf(sd, cfg, model_type)  # validates every tensor against cfg
    mid = None
    if cfg.mini_depth is not None:
        mid = {k: sd[k].detach().to("cpu").contiguous().clone() for k in _MID_HEAD_KEYS}
    hf_cfg = hf_config_from(cfg, model_type)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    replacing = out.is_dir() and any(out.iterdir())
    if replacing and not _is_previous_export(out):
        raise UserError(f"{out}: directory is not empty and is not a previous ds_minimodel export; refusing to overwrite it")
    tok = None
    if tokenizer_path is not None:
        tok = Path(tokenizer_path)
        if not tok.exists():
            raise UserError(f"tokenizer {tok}: no such file or directory")

    from safetensors.torch import save_file

    with staged_dir(out) as tmp:
        hf_cfg.save_pretrained(str(tmp))
        save_file(hf_sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = ["config.json", "model.safetensors"]
        if mid is not None:
            save_file(mid, str(tmp / MID_HEAD_FILE), metadata={"format": "pt"})
            files.append(MID_HEAD_FILE)
        if tok is not None:
            if tok.is_dir():
                for f in sorted(tok.iterdir()):
                    if f.is_file():
                        if (tmp / f.name).exists() or f.name == EXPORT_MARKER:
                            raise UserError(f"tokenizer {f}: would overwrite the export's own {f.name}")
                        shutil.copy2(f, tmp / f.name)
                        files.append(f.name)
            else:
                shutil.copy2(tok, tmp / SPM_NAME)
                files.append(SPM_NAME)
        meta = {"format": EXPORT_FORMAT, "version": 1, "model_type": model_type,
                "model": dataclasses.asdict(cfg), "files": files}
        (tmp / EXPORT_MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
