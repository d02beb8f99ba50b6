"""What a local Hugging Face checkpoint directory says about itself, read before anything runs.

Everything the pretrained pipeline derives from a checkpoint comes from here (`inspect`): its
architecture and depth, hidden size, embedding rows, whether it ships an MLM head, and its
tokenizer: the file (tokenizer.json first, as transformers prefers it; else XLM-R's
sentencepiece.bpe.model or a tokenizer.model), its kind, its size and its special ids.

Special ids are taken by role from the checkpoint: the tokens that tokenizer_config.json and
special_tokens_map.json name (cls/bos, sep/eos, pad, unk, mask) must be the ones the tokenizer
file gives those roles by itself, since its copies in datasets and model directories are read
without those side files. config.json's pad_token_id must agree with the tokenizer's pad for a
RoBERTa-style model (its positions count from it); for a BERT-style one it only names the
embedding row that gets no gradient, so the tokenizer's pad wins (`pad_override`), as with
checkpoints whose config kept BertConfig's default 0 under XLM-R's vocabulary (pad 1).

A checkpoint that cannot work (no tokenizer, a decoder-only model, an unknown architecture,
no weights, a tokenizer larger than the embedding table) is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ds_minimodel.artefacts import hf
from ds_minimodel.config import read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import ROLES, Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer.model")
# The keys tokenizer_config.json / special_tokens_map.json name each role by. The data pipeline's
# "bos" and "eos" are the tokens around every sequence: BERT's [CLS]/[SEP], XLM-R's <s>/</s>.
ROLE_KEYS = {"bos": ("cls_token", "bos_token"), "pad": ("pad_token",), "eos": ("sep_token", "eos_token"),
             "unk": ("unk_token",), "mask": ("mask_token",)}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_DECODER_ONLY = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
                 "gemma2", "gemma3", "phi", "phi3", "falcon", "opt", "bloom", "mpt", "olmo", "codegen"}
_SUPPORTED = ", ".join(sorted(hf.MODEL_TYPES))


@dataclass(frozen=True)
class HFSource:
    path: Path
    model_type: str
    architecture: str
    position_style: str
    num_layers: int
    hidden_size: int
    vocab_rows: int  # embedding-table rows (config.json vocab_size); >= tokenizer_size
    has_mlm_head: bool
    tokenizer_path: Path
    tokenizer_kind: str
    tokenizer_size: int
    special_ids: dict[str, int] = field(default_factory=dict)  # role -> id, the tokenizer's
    config_pad_id: int | None = None  # config.json's pad_token_id

    @property
    def pad_override(self) -> dict:
        """ModelConfig overrides that make the model pad with its tokenizer's pad id."""
        pad = self.special_ids["pad"]
        return {} if self.config_pad_id == pad else {"pad_token_id": pad}

    def describe(self) -> str:
        pad = self.special_ids
        rows = (f"{self.tokenizer_size:,} pieces" if self.vocab_rows == self.tokenizer_size
                else f"{self.tokenizer_size:,} pieces in {self.vocab_rows:,} embedding rows")
        return (f"{self.architecture} ({self.model_type}), {self.num_layers} layers, hidden {self.hidden_size}, "
                f"{'an' if self.has_mlm_head else 'no'} MLM head; {self.tokenizer_kind} tokenizer "
                f"{self.tokenizer_path.name} ({rows}); special ids " + " ".join(f"{r} {pad[r]}" for r in ROLES))


def find_tokenizer(d: Path) -> Path | None:
    return next((d / n for n in TOKENIZER_FILES if (d / n).is_file()), None)


def declared_special_tokens(d: Path) -> dict[str, tuple[str, str]]:
    """role -> (token, file naming it), from tokenizer_config.json, else special_tokens_map.json."""
    out: dict[str, tuple[str, str]] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if not (d / name).is_file():
            continue
        raw = read_json_object(d / name)
        for role, keys in ROLE_KEYS.items():
            value = next((raw[k] for k in keys if raw.get(k)), None)
            token = value.get("content") if isinstance(value, dict) else value
            if role not in out and isinstance(token, str):
                out[role] = (token, name)
    return out


def source_tokenizer(d: str | Path) -> Tokenizer:
    """The tokenizer of checkpoint directory `d`, its special ids checked against the roles the
    checkpoint declares."""
    d = Path(d)
    path = find_tokenizer(d)
    if path is None:
        raise UserError(f"{d}: no tokenizer ({', '.join(TOKENIZER_FILES)}); a checkpoint with only vocab.txt or "
                        "vocab.json + merges.txt needs its fast tokenizer written first: "
                        "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")
    try:
        tok = load_tokenizer(str(path))
    except UserError as e:
        raise UserError(f"{d}: {e}") from None
    for role, (token, where) in declared_special_tokens(d).items():
        declared, ours = tok.token_id(token), getattr(tok, f"{role}_id")
        if declared is None:
            raise UserError(f"{d}: {where} names {token!r} as the {role} token but {path.name} has no such token")
        if declared != ours:
            raise UserError(f"{d}: {where} names {token!r} (id {declared}) as the {role} token but {path.name} "
                            f"alone reads id {ours} ({tok.piece(ours)!r}) as {role}; such a tokenizer is not supported")
    return tok


def _refuse_architecture(d: Path, raw: dict) -> None:
    model_type = raw.get("model_type")
    archs = [a for a in raw.get("architectures") or [] if isinstance(a, str)]
    arch = archs[0] if archs else f"model_type {model_type!r}"
    if model_type in _DECODER_ONLY or any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) or raw.get("is_decoder"):
        raise UserError(f"{d}: {arch} is a decoder-only language model; mini-model adaptation needs a "
                        f"masked-language-model encoder (model_type {_SUPPORTED})")
    if model_type not in hf.MODEL_TYPES:
        raise UserError(f"{d}: {arch} (model_type {model_type!r}) is not a supported architecture; supported "
                        f"encoders: BERT, RoBERTa, XLM-R (model_type {_SUPPORTED})")


def _weight_names(d: Path) -> list[str]:
    """Tensor names of the checkpoint, without reading the tensors where the format allows."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            weight_map = read_json_object(d / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{d / index}: not a valid shard index (no weight_map)")
            return list(weight_map)
    if (d / "model.safetensors").is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(d / "model.safetensors"), framework="pt") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001 - a corrupt file: say which
            raise UserError(f"{d / 'model.safetensors'}: cannot read safetensors weights ({str(e)[:200]})") from None
    if (d / "pytorch_model.bin").is_file():
        import torch

        try:
            return list(torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{d / 'pytorch_model.bin'}: cannot read PyTorch weights ({str(e)[:200]})") from None
    raise UserError(f"{d}: no model.safetensors or pytorch_model.bin (nor a sharded index) in this directory")


def inspect(path: str | Path) -> HFSource:
    """Everything the pipeline needs to know about a checkpoint directory, checked (UserError)."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: no such directory")
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: no config.json: not a Hugging Face model directory")
    raw = read_json_object(d / "config.json")
    if "model_type" not in raw and "model" in raw:
        raise UserError(f"{d}: a ds_minimodel model directory, not a Hugging Face one; give its export ({d / 'hf'})")
    _refuse_architecture(d, raw)
    try:
        cfg = hf.config_from_hf(raw)
    except UserError as e:
        raise UserError(f"{d / 'config.json'}: {e}") from None
    tok = source_tokenizer(d)
    check_fits(d, raw, cfg.position_style, cfg.vocab_size, tok)
    specials = tok.special_role_ids()
    config_pad = raw.get("pad_token_id")
    names = _weight_names(d)
    archs = raw.get("architectures") or []
    return HFSource(path=d, model_type=raw["model_type"], architecture=archs[0] if archs else raw["model_type"],
                    position_style=cfg.position_style, num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
                    vocab_rows=cfg.vocab_size,
                    has_mlm_head=any(n.startswith(("lm_head.", "cls.predictions.")) for n in names),
                    tokenizer_path=Path(tok.path), tokenizer_kind=tok.kind,
                    tokenizer_size=tok.vocab_size, special_ids=specials, config_pad_id=config_pad)


def check_fits(d: Path, raw: dict, position_style: str, rows: int, tok: Tokenizer) -> None:
    """The tokenizer fits the model: no more pieces than embedding rows (fewer is normal: tables are
    often padded, and the extra rows are never indexed), and, for RoBERTa-style positions, the
    pad id config.json declares."""
    if tok.vocab_size > rows:
        raise UserError(f"{d}: its tokenizer has {tok.vocab_size} pieces but the embedding table only "
                        f"{rows} rows (config.json vocab_size)")
    config_pad = raw.get("pad_token_id")
    if position_style == "roberta" and config_pad is not None and config_pad != tok.pad_id:
        raise UserError(f"{d}: config.json pad_token_id is {config_pad} but the tokenizer pads with "
                        f"{tok.pad_id}; RoBERTa-style positions count from the pad id, so they must agree")


def tokenizer_and_overrides(d: str | Path) -> tuple[Tokenizer | None, dict]:
    """(the checkpoint's tokenizer or None, ModelConfig overrides for `hf.load_hf_pretrained`):
    a BERT-style model pads with its tokenizer's pad id whatever config.json says."""
    d = Path(d)
    if find_tokenizer(d) is None:
        return None, {}
    raw = read_json_object(d / "config.json")
    style = hf.MODEL_TYPES.get(raw.get("model_type"), ("bert",))[0]
    tok = source_tokenizer(d)
    rows = raw.get("vocab_size")
    check_fits(d, raw, style, rows if isinstance(rows, int) else tok.vocab_size, tok)
    return tok, ({} if raw.get("pad_token_id") == tok.pad_id else {"pad_token_id": tok.pad_id})


def special_ids_of(path: str | Path) -> dict[str, int]:
    """role -> id of the tokenizer of a model directory (Hugging Face or ours), or of a tokenizer file."""
    p = Path(path)
    if p.is_file():
        return load_tokenizer(str(p)).special_role_ids()
    if not p.is_dir():
        raise UserError(f"{p}: no such file or directory")
    if (p / "config.json").is_file() and "model_type" in read_json_object(p / "config.json"):
        return source_tokenizer(p).special_role_ids()
    if (p / "tokenizer.model").is_file():  # one of our model or dataset directories
        return load_tokenizer(str(p / "tokenizer.model")).special_role_ids()
    raise UserError(f"{p}: neither a Hugging Face model directory nor one with a tokenizer.model")
