"""Dataclass configs: YAML file < CLI dotlist, strict, with every problem reported at once.

One dataclass per component (Meta Lingua style). Each field's docstring is the comment above
it. `load_config(PretrainConfig, "configs/x.yaml", ["train.steps=10"])` returns a validated
instance or raises a single `ConfigError` listing every unknown key, bad type and bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ds_minimodel.errors import UserError


class ConfigError(UserError):
    """A config problem; the message lists all of them, one per line after the first."""


@dataclass
class ModelConfig:
    # Vocabulary size; None takes it from the data's tokenizer.
    vocab_size: Optional[int] = None
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    # Learned position table size. RoBERTa/XLM-R use 514: positions start at pad_token_id + 1.
    max_positions: int = 514
    pad_token_id: int = 1
    # "roberta": positions count non-pad tokens from pad_token_id + 1; "bert": 0, 1, 2, ...
    position_style: str = "roberta"
    # 1 for RoBERTa/XLM-R, 2 for BERT (segment embeddings; we always feed segment 0).
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    # "sdpa" (fast) or "explicit" (matmul + softmax; what FlopCounterMode can see on CPU).
    attention: str = "sdpa"
    # MiniJoint: the mini-model depth k (the paper's name): a secondary MLM head after layer k
    # (1..num_layers-1), so layers 1..k and that head are the mini-model; None = off.
    mini_depth: Optional[int] = None
    # Loss = final-head MLM + mid_head_weight * mid-head MLM.
    mid_head_weight: float = 1.0
    # MLM head/embedding kernels: "auto" (Triton on CUDA, chunked torch on CPU), "triton",
    # "torch" (chunked, never holds [masked x vocab] logits) or "off" (plain PyTorch).
    kernels: str = "auto"
    # The chunked head's strategy (kernels "torch"): "vocab" (logits recomputed in backward, least
    # memory), "rows" (gradients in forward from row blocks' logits, one GEMM less) or "auto"
    # (each device's measured winner: kernels.resolve_strategy, bench/head_strategy.py).
    head_strategy: str = "auto"
    # Std of the normal init of linear and embedding weights (BERT/RoBERTa use 0.02).
    init_std: float = 0.02

    def problems(self) -> list[str]:
        out = []
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) <= 0:
                out.append(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size <= 4:
            out.append(f"model.vocab_size must be > 4, got {self.vocab_size}")
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            out.append(f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads {self.num_heads}")
        if self.position_style not in ("roberta", "bert"):
            out.append(f"model.position_style must be 'roberta' or 'bert', got {self.position_style!r}")
        if self.attention not in ("sdpa", "explicit"):
            out.append(f"model.attention must be 'sdpa' or 'explicit', got {self.attention!r}")
        if self.kernels not in ("auto", "triton", "torch", "off"):
            out.append(f"model.kernels must be one of auto|triton|torch|off, got {self.kernels!r}")
        if self.head_strategy not in ("auto", "vocab", "rows"):
            out.append(f"model.head_strategy must be one of auto|vocab|rows, got {self.head_strategy!r}")
        if self.mini_depth is not None and not 1 <= self.mini_depth <= self.num_layers - 1:
            out.append(
                f"model.mini_depth must be in 1..{self.num_layers - 1} (num_layers - 1), "
                f"got {self.mini_depth}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        return out


@dataclass
class DataConfig:
    # Directory written by launchers/prepare_data.py (holds index.json).
    path: str = "data/bible-en"
    # Tokens per sequence, <s> and </s> included.
    seq_len: int = 128
    # Fraction of non-special tokens selected for MLM (80% <mask>, 10% random, 10% kept).
    mask_prob: float = 0.15
    # Validation batches per evaluation (per run, split across ranks).
    eval_batches: int = 8
    # Sequences per validation batch.
    eval_batch_size: int = 16

    def problems(self) -> list[str]:
        out = []
        if self.seq_len < 8:
            out.append(f"data.seq_len must be >= 8, got {self.seq_len}")
        if not 0.0 < self.mask_prob < 1.0:
            out.append(f"data.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.eval_batches < 0 or self.eval_batch_size <= 0:
            out.append("data.eval_batches must be >= 0 and data.eval_batch_size > 0")
        return out


@dataclass
class OptimConfig:
    # Peak learning rate (AdamW).
    lr: float = 5e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    # Linear warm-up steps, then the schedule below decays to lr * min_lr_ratio at train.steps.
    warmup_steps: int = 100
    # "linear", "cosine" or "constant".
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    # Gradient-norm clip (DeepSpeed's gradient_clipping); 0 disables it.
    grad_clip: float = 1.0

    def problems(self) -> list[str]:
        out = []
        if self.lr <= 0:
            out.append(f"optim.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            out.append(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("linear", "cosine", "constant"):
            out.append(f"optim.schedule must be linear|cosine|constant, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            out.append(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            out.append(f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        return out


@dataclass
class TrainConfig:
    # Optimizer steps to run in total (a resumed run continues up to this).
    steps: int = 1000
    # Per-rank micro-batch; None keeps the DeepSpeed JSON's train_micro_batch_size_per_gpu.
    micro_batch_size: Optional[int] = None
    # Gradient-accumulation steps; None keeps the DeepSpeed JSON's value.
    grad_accum: Optional[int] = None
    seed: int = 0
    # "fp32" or "bf16" (fp16 does not work on CPU and is not offered).
    dtype: str = "fp32"
    # Run directory: metrics.jsonl, checkpoints/, resolved config.
    out_dir: str = "runs/pretrain"
    log_every: int = 10
    # Validation every N steps (and at the end); 0 = only at the end.
    eval_every: int = 100
    # Checkpoint every N steps (and at the end); 0 = only at the end.
    save_every: int = 500
    # Checkpoints kept; older ones are deleted after a newer one is complete.
    keep_last: int = 2
    # Log to Weights & Biases (WANDB_MODE=offline works without network).
    wandb: bool = False
    wandb_project: str = "ds_minimodel"
    # Progress bar on rank 0.
    progress: bool = True
    # Seconds a collective may wait before the run fails instead of hanging.
    collective_timeout_s: int = 600
    # Parameter-name patterns (fnmatch, e.g. "layers.0.*") kept frozen: not given to the optimizer.
    freeze: list = field(default_factory=list)
    # End this invocation after this step (checkpoint written) to fit a job's time slot; the
    # schedule still spans train.steps and --resume continues. None = run to train.steps.
    stop_at_step: Optional[int] = None
    # "deepspeed" (ZeRO 0-3 from the --deepspeed JSON) or "torch": plain PyTorch (AdamW, gradients
    # averaged over ranks with all_reduce, no ZeRO), e.g. for single-node adaptation (step 2).
    engine: str = "deepspeed"

    def problems(self) -> list[str]:
        out = []
        if self.steps <= 0:
            out.append(f"train.steps must be positive, got {self.steps}")
        for name in ("micro_batch_size", "grad_accum"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                out.append(f"train.{name} must be positive, got {v}")
        if self.dtype not in ("fp32", "bf16"):
            out.append(f"train.dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.engine not in ("deepspeed", "torch"):
            out.append(f"train.engine must be 'deepspeed' or 'torch', got {self.engine!r}")
        elif self.engine == "torch" and self.dtype != "fp32":
            out.append("train.engine=torch trains in fp32 only; use train.dtype=fp32 or train.engine=deepspeed")
        for name in ("log_every",):
            if getattr(self, name) <= 0:
                out.append(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                out.append(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            out.append(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.steps:
            out.append(f"train.stop_at_step must be in 1..train.steps, got {self.stop_at_step}")
        if not all(isinstance(p, str) for p in self.freeze):
            out.append(f"train.freeze must be a list of parameter-name patterns, got {self.freeze!r}")
        return out


@dataclass
class PretrainConfig:
    """Step 1: MiniJoint (model.mini_depth set) or plain MLM pretraining."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def problems(self) -> list[str]:
        out = _section_problems(self)
        if self.data.seq_len + self.model.pad_token_id + 1 > self.model.max_positions:
            out.append(
                f"data.seq_len {self.data.seq_len} does not fit model.max_positions "
                f"{self.model.max_positions} (positions start at pad_token_id + 1)"
            )
        return out


# --------------------------------------------------------------------------------------------
# Loading: YAML < dotlist, strict.


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return tp()
        return _build(tp, value, key + ".", problems)
    if origin in (list, dict) and typing.get_args(tp):
        return _coerce_container(value, tp, key, problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (type(value) is tp):
        problems.append(f"{key}: expected {tp.__name__}, got {value!r}")
        return None
    # No field holds nan or inf meaningfully (a rate, a weight, a probability); YAML's .nan and
    # .inf, or "nan" given as text, would otherwise pass every range check (nan <= 0 is False).
    if tp is float and not math.isfinite(value):
        problems.append(f"{key}: expected a finite number, got {value!r}")
        return None
    if origin is list and not isinstance(value, list):
        problems.append(f"{key}: expected a list, got {value!r}")
        return None
    return value


def _coerce_container(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """`list[X]` and `dict[str, X]`, element by element (a study spec's languages, its steps per
    method); a bare `list` or `dict` annotation is checked by its owner's problems() instead."""
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        (element,) = typing.get_args(tp)
        # An element that failed its check is left out (its problem is recorded), so that the
        # owner's problems() sees only checked values.
        items = [(v, _coerce(v, element, f"{key}[{i}]", problems)) for i, v in enumerate(value)]
        return [c for v, c in items if c is not None or v is None]
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return None
    _, element = typing.get_args(tp)
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            problems.append(f"{key}: key {k!r} is not a name")
            continue
        checked = _coerce(v, element, f"{key}.{k}", problems)
        if checked is not None or v is None:
            out[k] = checked
    return out


def _build(cls: type, raw: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key in _RENAMED.get(cls, {}):
            # A user's config with an old name is refused, not read: it would otherwise go on
            # silently meaning something in the user's head that the code no longer calls that.
            problems.append(f"{prefix}{key} is {prefix}{_RENAMED[cls][key]} now (the mini-model depth k)")
        elif key not in names:
            moved = _section_of(cls, key)
            hint = f"; it is {moved}.{key} now" if moved else ""
            problems.append(f"unknown key {prefix}{key} (known: {', '.join(sorted(names))}{hint})")
    kwargs = {}
    for name in names:
        if name in raw:
            v = _coerce(raw[name], hints[name], prefix + name, problems)
            if v is not None or raw[name] is None:
                kwargs[name] = v
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_dotlist(items: list[str]) -> dict:
    """`["train.steps=10", "model.mini_depth=null"]` -> nested dict; values parsed as YAML."""
    tree: dict = {}
    bad = []
    for item in items:
        if "=" not in item or item.startswith("="):
            bad.append(f"override {item!r} is not of the form key.sub=value")
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        _set_dotted(tree, key.strip(), value)
    if bad:
        raise ConfigError("; ".join(bad))
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(raw).__name__}")
    return raw


def read_json_object(path: str | Path) -> dict:
    """A file holding one JSON object (a saved config, lineage.json, pack.json, study.json, ...), or
    one UserError line naming the file. The package's one reader of such files."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON and bad UTF-8 alike
        raise UserError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    return raw


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build `cls` from YAML `path` with dotlist `overrides` on top; raise one ConfigError."""
    raw = read_yaml(path) if path else {}
    raw = _merge(raw, parse_dotlist(overrides or []))
    problems: list[str] = []
    cfg = _build(cls, raw, "", problems)
    problems += cfg.problems()  # value checks too, so one run reports everything
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError(f"{len(problems)} config problem(s){where}: " + "; ".join(problems))
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _section_of(cls: type, key: str, saved: bool = False) -> str | None:
    """The step section of `cls` that has a field `key` (e.g. AdaptConfig's `adapt` for
    model_dir): configs of steps 1b-3 kept their own fields at the top level before sections.
    `saved`: a saved config's key may also be a section's old name for a field (`_RENAMED`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and tp.__name__.endswith("Settings") and \
                (key in {g.name for g in dataclasses.fields(tp)} or (saved and key in _RENAMED.get(tp, {}))):
            return f.name
    return None


def from_dict(cls: type, raw: dict):
    """Rebuild a saved (resolved) config, strictly. A config saved before the steps' settings had
    their own section (model_dir, through, ... at the top level) is read into that section, and
    keys saved under an old name (`_RENAMED`) are read under the new one."""
    raw = dict(raw)
    for key in [k for k in raw if k not in {f.name for f in dataclasses.fields(cls)}]:
        section = _section_of(cls, key, saved=True)
        if section is not None:
            raw[section] = {**raw.get(section, {}), key: raw.pop(key)}
    raw = migrate_renamed(cls, raw)
    problems: list[str] = []
    cfg = _build(cls, raw, "", problems)
    if problems:
        raise ConfigError("saved config does not match this version: " + "; ".join(problems))
    return cfg


def _section_problems(cfg) -> list[str]:
    """Every section's own value problems, in field order."""
    return [p for f in dataclasses.fields(cfg) for p in getattr(cfg, f.name).problems()]


def _fixed_trainables(step: str, train: "TrainConfig") -> list[str]:
    """Steps 1b-3 train exactly what the method says (ds_minimodel/method/rules.py); a freeze list
    there would be silently ignored, so it is refused."""
    if train.freeze:
        return [f"train.freeze applies to pretraining only; {step} trains a fixed set of parameters "
                f"(ds_minimodel/method/rules.py), got {train.freeze!r}"]
    return []


@dataclass
class MiniPostSettings:
    """What step 1b carves and trains."""

    # Source: a model directory (model.pt + config.json, e.g. a pretrain run's final/) or a local
    # Hugging Face RoBERTa / XLM-R / BERT directory.
    source: str = "runs/pretrain/final"
    # The mini-model depth k: frozen bottom layers 1..k taken from the source.
    mini_depth: int = 2
    # New trainable layers on top (n); 0 trains only an MLM head over a frozen body (e.g. the
    # head a headless encoder needs before the standard baseline can run through it).
    top_layers: int = 1
    # "copy": start the top from the source's layers k+1..k+n (and its MLM head); "random".
    top_init: str = "copy"

    def problems(self) -> list[str]:
        out = []
        if self.mini_depth < 1 or self.top_layers < 0:
            out.append(f"minipost.mini_depth must be >= 1 and minipost.top_layers >= 0, got {self.mini_depth}, "
                       f"{self.top_layers}")
        if self.top_init not in ("copy", "random"):
            out.append(f"minipost.top_init must be 'copy' or 'random', got {self.top_init!r}")
        return out


@dataclass
class MiniPostConfig:
    """Step 1b: carve layers 1..k out of a pretrained encoder and train a small top over them."""

    minipost: MiniPostSettings = field(default_factory=MiniPostSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/minipost"))

    def problems(self) -> list[str]:
        return _section_problems(self) + _fixed_trainables("MiniPost", self.train)


# A language code of adapt.languages, and where data.path takes it.
LANGUAGE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# adapt.through: adapt through the mini-model or the full one (method/methods.py maps each method
# to one of these).
THROUGH = ("mini", "full")
# How adapt.init starts the new embeddings (steps/adapt/common.init_embeddings). known_rows is a
# diagnostic for a cipher language: it starts from the answer (the correct source rows).
INITS = ("random", "copy_shared", "focus", "known_rows")
LANGUAGE_PLACEHOLDER = "{lang}"


@dataclass
class AdaptSettings:
    """What step 2 trains through, and for which language."""

    # Model directory: a MiniJoint pretrain's final/ (mini = layers 1..k + mid head), a MiniPost
    # run's final/ (mini = its k + n layers), or any full model for through=full.
    model_dir: str = "runs/pretrain/final"
    # "mini": through the mini-model; "full": the standard baseline through the whole model.
    through: str = "mini"
    # Target-language code recorded in the pack (of a single-language job).
    language: str = "xx"
    # New embeddings: "random" (the paper's), "copy_shared" (vectors of pieces the source vocab
    # also has), or "focus" (those, and FOCUS combinations of them for the other pieces:
    # steps/adapt/focus.py; needs the `focus` extra, fasttext). "known_rows", a diagnostic for a
    # cipher language: every row of its data's known_rows.json starts as its correct source row
    # (and output bias), the others as "random" (the start-from-truth drift, docs/adaptation.md).
    init: str = "copy_shared"
    # Several target languages in one job (steps/adapt/multi.py), e.g. [sw, tl, vi]: one frozen
    # (mini-)model, every language's own embeddings, one pack each in train.out_dir/packs/<code>/.
    # Empty: the single-language job (data.path, adapt.language).
    languages: list = field(default_factory=list)
    # Corpus of each language of adapt.languages, e.g. {sw: data/bible-sw}. A language not listed
    # reads data.path with {lang} replaced by its code (data.path=data/bible-{lang}).
    data_paths: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        if self.through not in THROUGH:
            out.append(f"adapt.through must be {' or '.join(map(repr, THROUGH))}, got {self.through!r}")
        if self.init not in INITS:
            out.append(f"adapt.init must be one of {', '.join(map(repr, INITS))}, got {self.init!r}")
        if not isinstance(self.languages, list):
            return out + [f"adapt.languages must be a list of language codes, e.g. [sw, tl], got {self.languages!r}"]
        # Codes name directories (packs/<code>) and metric keys: letters, digits, - and _.
        bad = [c for c in self.languages if not (isinstance(c, str) and LANGUAGE_CODE.fullmatch(c))]
        if bad:
            out.append(f"adapt.languages: {', '.join(map(repr, bad))} is not a language code "
                       "(letters, digits, - and _; quote codes YAML reads otherwise, e.g. 'no')")
        twice = sorted({c for c in self.languages if self.languages.count(c) > 1}, key=str)
        if twice:
            out.append(f"adapt.languages lists {', '.join(map(str, twice))} more than once")
        if not isinstance(self.data_paths, dict):
            out.append(f"adapt.data_paths must map language codes to corpus directories, got {self.data_paths!r}")
        else:
            extra = [c for c in self.data_paths if c not in self.languages]
            if extra:
                out.append(f"adapt.data_paths names {', '.join(map(str, extra))}, not in adapt.languages "
                           f"{self.languages}")
            out += [f"adapt.data_paths.{c} must be a corpus directory, got {p!r}"
                    for c, p in self.data_paths.items() if not (isinstance(p, str) and p)]
        return out


@dataclass
class AdaptConfig:
    """Step 2: a new language's tokenizer + embeddings, trained through a frozen (mini-)model."""

    adapt: AdaptSettings = field(default_factory=AdaptSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/adapt"))

    def problems(self) -> list[str]:
        out = _section_problems(self) + _fixed_trainables("adaptation", self.train)
        if self.adapt.languages and isinstance(self.adapt.languages, list) and isinstance(self.adapt.data_paths, dict):
            missing = list(dict.fromkeys(c for c in self.adapt.languages
                                         if isinstance(c, str) and c not in self.adapt.data_paths))
            if missing and LANGUAGE_PLACEHOLDER not in self.data.path:
                out.append(f"adapt.languages: no corpus for {', '.join(map(str, missing))}: list it in "
                           f"adapt.data_paths or give a data.path with {LANGUAGE_PLACEHOLDER} "
                           f"(e.g. data/bible-{LANGUAGE_PLACEHOLDER}), got data.path={self.data.path}")
        return out

    def corpus_paths(self) -> dict[str, str]:
        """{code: corpus directory} of a multi-language job, in adapt.languages' order."""
        return {c: self.adapt.data_paths.get(c, self.data.path.replace(LANGUAGE_PLACEHOLDER, c))
                for c in self.adapt.languages}


# Fine-tuning tasks: classification (one text or a pair) and extractive QA (SQuAD v1.1 format).
# The Bible tasks are offline stand-ins (tasks/bible.py) and need no task_path.
BIBLE_TASKS = ("bible-genre", "bible-testament")
CLASSIFICATION_TASKS = (*BIBLE_TASKS, "xnli", "pawsx")
QA_TASKS = ("mlqa", "squad")


@dataclass
class FinetuneSettings:
    """What step 3 starts from, on which task, and how the task is fed."""

    model_dir: str = "runs/pretrain/final"
    # "bible-genre" or "bible-testament" (offline stand-ins), "xnli", "pawsx" (sentence-pair
    # classification), or
    # extractive QA: "mlqa" (English SQuAD v1.1 train + MLQA English dev, answers normalised as
    # MLQA's script does) or "squad" (the same files, SQuAD v1.1 normalisation).
    task: str = "bible-genre"
    # Directory of the released task files (xnli / pawsx / mlqa: see tasks/formats.py); unused
    # for the Bible tasks.
    task_path: Optional[str] = None
    # Tokens per sequence, special tokens included (for QA: per question + context window).
    max_len: int = 128
    # QA only: a context longer than its window is covered by windows starting every doc_stride
    # tokens (BERT's run_squad meaning; Hugging Face's run_qa passes the overlap instead).
    doc_stride: int = 128
    # QA only: questions are cut to this many tokens.
    max_query_len: int = 64
    # Classifier dropout (RoBERTa's head uses the hidden dropout).
    head_dropout: float = 0.1
    # Sentence representation for the head: "cls" (<s>, as RoBERTa) or "mean" of token states.
    pooling: str = "cls"
    # Examples per validation pass (0 = the whole validation set); for QA, questions.
    eval_examples: int = 512

    @property
    def is_qa(self) -> bool:
        return self.task in QA_TASKS

    def problems(self) -> list[str]:
        out = []
        tasks = CLASSIFICATION_TASKS + QA_TASKS
        if self.task not in tasks:
            out.append(f"finetune.task must be {'|'.join(tasks)}, got {self.task!r}")
        if self.task not in BIBLE_TASKS and not self.task_path:
            out.append(f"finetune.task {self.task} needs finetune.task_path (a directory of the released files)")
        if self.pooling not in ("cls", "mean"):
            out.append(f"finetune.pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.max_len < 8:
            out.append(f"finetune.max_len must be >= 8, got {self.max_len}")
        if self.eval_examples < 0:
            out.append(f"finetune.eval_examples must be >= 0, got {self.eval_examples}")
        if self.is_qa:
            if self.doc_stride < 1:
                out.append(f"finetune.doc_stride must be positive, got {self.doc_stride}")
            if self.max_query_len < 1:
                out.append(f"finetune.max_query_len must be positive, got {self.max_query_len}")
            # <s> question </s></s> + at least one context token + </s>: 5 tokens besides the question.
            elif self.max_len < self.max_query_len + 5:
                out.append(f"finetune.max_len {self.max_len} leaves no room for context after a question of up "
                           f"to finetune.max_query_len {self.max_query_len} tokens and 4 special tokens; raise "
                           f"max_len to at least {self.max_query_len + 5} or lower max_query_len")
        return out


@dataclass
class FinetuneConfig:
    """Step 3: body + task head on source-language task data, embeddings frozen."""

    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=50))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/finetune"))

    def problems(self) -> list[str]:
        return _section_problems(self) + _fixed_trainables("fine-tuning", self.train)


# Fields renamed since configs were first saved: {dataclass: {old key: new key}}. A user's YAML or
# override with an old key is refused naming the new one (`_build`); a config saved by an older
# version (a model directory's config.json, a checkpoint's meta.json) is migrated (`from_dict`).
# The mini-model depth k had a name per place: model.mid_head_layer, minipost.layers.
_RENAMED: dict[type, dict[str, str]] = {
    ModelConfig: {"mid_head_layer": "mini_depth"},
    MiniPostSettings: {"layers": "mini_depth"},
}


def migrate_renamed(cls: type, raw: dict) -> dict:
    """A copy of saved `raw` (for `cls`) with every old key of `_RENAMED` under its new name, in
    nested sections too. A key saved under both names keeps the new one's value."""
    out = dict(raw)
    for old, new in _RENAMED.get(cls, {}).items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(out.get(f.name), dict):
            out[f.name] = migrate_renamed(hints[f.name], out[f.name])
    return out
