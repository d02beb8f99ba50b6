"""Language packs: what step 2 produces and step 4 plugs in.

A pack is a directory:

    pack.json              language, method, vocab and hidden size, special ids, the fingerprint
                           of the frozen body (layers 1..k and non-word embeddings) it was
                           trained under, and provenance
    tokenizer.model        the target-language sentencepiece model
    embeddings.safetensors word [V, d] and output_bias [V]

`check_compatible` refuses a pack for another model (hidden size, special tokens, fingerprint)
before anything is loaded into it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ds_minimodel.config import read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.staged_dir import staged_dir
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer

FORMAT = 1


@dataclass
class PackInfo:
    language: str
    method: str  # "minijoint", "minipost" or "full" (the standard baseline)
    vocab_size: int
    hidden_size: int
    pad_token_id: int
    special: dict
    # fingerprint() of the body the embeddings were trained under, and the mini-model depth k it
    # covers (pack.json written before the rename says "fingerprint_layers": read as mini_depth).
    body_fingerprint: str
    mini_depth: int
    tokenizer_fingerprint: str
    provenance: dict = field(default_factory=dict)
    format: int = FORMAT


def save_pack(out_dir: str | Path, info: PackInfo, word: torch.Tensor, output_bias: torch.Tensor,
              tokenizer_path: str) -> Path:
    """Write a pack all at once (`staged_dir`); refuses to replace a non-pack directory."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "pack.json").is_file():
        raise UserError(f"{out_dir} is not empty and is not a language pack: refusing to overwrite it")
    if tuple(word.shape) != (info.vocab_size, info.hidden_size):
        raise UserError(f"pack embeddings are {tuple(word.shape)}, expected ({info.vocab_size}, {info.hidden_size})")
    with staged_dir(out_dir) as tmp:
        save_file({"word": word.detach().float().contiguous().cpu(),
                   "output_bias": output_bias.detach().float().contiguous().cpu()},
                  str(tmp / "embeddings.safetensors"))
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
        (tmp / "pack.json").write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    return out_dir


def read_pack_info(meta: Path) -> PackInfo:
    """A pack's pack.json. One written before the depth's rename says "fingerprint_layers": it is
    read as mini_depth."""
    raw = read_json_object(meta)
    if "fingerprint_layers" in raw:
        raw.setdefault("mini_depth", raw.pop("fingerprint_layers"))
    try:
        return PackInfo(**raw)
    except TypeError as e:
        raise UserError(f"{meta} is malformed: {e}") from None


def load_pack(path: str | Path) -> tuple[PackInfo, dict[str, torch.Tensor], Tokenizer]:
    path = Path(path)
    meta = path / "pack.json"
    if not meta.is_file():
        raise UserError(f"{path} is not a language pack (no pack.json)")
    info = read_pack_info(meta)
    if info.format != FORMAT:
        raise UserError(f"{meta} has format {info.format}; this version reads {FORMAT}")
    if "user_bible" in info.provenance:
        # Adapted on a user's own Bible (data/user_bible.py): its language's test verses are in that
        # file, so whoever scores the pack (transfer, the study) finds them by its code.
        from ds_minimodel.data.user_bible import register_from_pack

        register_from_pack(info.language, info.provenance["user_bible"], str(path))
    try:
        tensors = load_file(str(path / "embeddings.safetensors"))
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise UserError(f"{path}/embeddings.safetensors is unreadable: {e}") from None
    tok = load_tokenizer(str(path / "tokenizer.model"))
    if tuple(tensors["word"].shape) != (info.vocab_size, info.hidden_size) or tok.vocab_size != info.vocab_size:
        raise UserError(f"language pack {path} is inconsistent: embeddings {tuple(tensors['word'].shape)}, "
                        f"tokenizer {tok.vocab_size} pieces, pack.json says {info.vocab_size} x {info.hidden_size}")
    return info, tensors, tok


def check_compatible(info: PackInfo, *, hidden_size: int, pad_token_id: int, body_fingerprint: str,
                     where: str) -> None:
    """Refuse a pack made for another model, naming what differs."""
    problems = []
    if info.hidden_size != hidden_size:
        problems.append(f"hidden size {info.hidden_size} != model's {hidden_size}")
    if info.pad_token_id != pad_token_id or info.special.get("pad") != pad_token_id:
        problems.append(f"pad id {info.pad_token_id} != model's {pad_token_id}")
    if info.body_fingerprint != body_fingerprint:
        problems.append(f"trained under body {info.body_fingerprint}, but {where} has body {body_fingerprint} "
                        f"(layers 1..{info.mini_depth})")
    if problems:
        raise UserError(f"language pack ({info.language}, {info.method}) does not fit {where}: " + "; ".join(problems))
