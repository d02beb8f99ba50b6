"""Pure state-dict functions for mini-models: carve, fingerprint, plug.

A mini-model is *aligned* with its full model because its layers 1..k are the full model's
layers 1..k, bit for bit. `fingerprint` hashes exactly those tensors, so a language pack can say
which body it was trained under and `plug_embeddings` can refuse a pack from another model.
Nothing here touches DeepSpeed or builds modules: state dicts in, state dicts out.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from ds_minimodel.config import ModelConfig
from ds_minimodel.errors import UserError

# Tensors a new language replaces: the word table (and the MLM heads' copies of it, which are the
# same tied Parameter) and the heads' output biases, which live in the new vocabulary too.
WORD = "embeddings.word"
TIED = ("lm_head.weight", "mid_head.weight")
BIASES = ("lm_head.bias", "mid_head.bias")


def layer_index(name: str) -> int | None:
    if name.startswith("layers."):
        return int(name.split(".")[1])
    return None


def fingerprint(state: dict[str, torch.Tensor], k: int) -> str:
    """sha256 of layers 1..k (bytes, shapes and names) plus the non-word embedding tensors.

    These are what a language pack's embeddings are trained against and must meet again in
    the model they are plugged into (the word table itself is what the pack replaces).
    """
    names = sorted(n for n in state if (layer_index(n) is not None and layer_index(n) < k)
                   or (n.startswith("embeddings.") and n != WORD))
    missing = [i for i in range(k) if not any(layer_index(n) == i for n in names)]
    if missing:
        raise UserError(f"cannot fingerprint layers 1..{k}: the state dict has no layer(s) {[i + 1 for i in missing]}")
    h = hashlib.sha256()
    for n in names:
        t = state[n].detach().cpu().contiguous()
        h.update(f"{n}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def extract_layers(state: dict, cfg: ModelConfig, k: int) -> tuple[dict, ModelConfig]:
    """Embeddings and layers 1..k of a full model (no heads), as a k-layer config."""
    if not 1 <= k <= cfg.num_layers:
        raise UserError(f"cannot extract {k} layers from a {cfg.num_layers}-layer model")
    out = {n: t for n, t in state.items()
           if n.startswith("embeddings.") or (layer_index(n) is not None and layer_index(n) < k)}
    return out, dataclasses.replace(cfg, num_layers=k, mini_depth=None)


def minijoint_mini(state: dict, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """The MiniJoint mini-model as a standalone k-layer model: layers 1..k + the mid head.

    Its mid head becomes the k-layer model's `lm_head`, so every mini-model (and the full model
    of the baseline) is trained the same way: route "final" over an MLMEncoder.
    """
    if cfg.mini_depth is None:
        raise UserError("this model has no mid head (model.mini_depth): it is not a MiniJoint model")
    out, mini_cfg = extract_layers(state, cfg, cfg.mini_depth)
    for n, t in state.items():
        if n.startswith("mid_head."):
            out["lm_head." + n[len("mid_head."):]] = t
    return out, mini_cfg


def build_minipost(state: dict, cfg: ModelConfig, k: int, top_layers: int, top_init: str,
                   fresh: dict[str, torch.Tensor]) -> tuple[dict, ModelConfig]:
    """State of a MiniPost mini-model: layers 1..k of `state`, then `top_layers` new layers.

    top_init "copy" starts the top from layers k+1..k+n of the full model (and its final MLM
    head, when it has one); "random" takes them from `fresh`, the state dict of a newly
    initialised (k+n)-layer model, which also supplies a head when the source has none.
    """
    if top_init not in ("copy", "random"):
        raise UserError(f"MiniPost top init must be 'copy' or 'random', got {top_init!r}")
    if top_layers < 0:
        raise UserError(f"MiniPost top_layers must be >= 0, got {top_layers}")
    if top_init == "copy" and k + top_layers > cfg.num_layers:
        raise UserError(f"cannot copy layers {k + 1}..{k + top_layers} from a {cfg.num_layers}-layer model")
    bottom, _ = extract_layers(state, cfg, k)
    mini_cfg = dataclasses.replace(cfg, num_layers=k + top_layers, mini_depth=None)
    out = dict(bottom)
    for n, t in fresh.items():
        i = layer_index(n)
        if i is not None and i >= k:
            out[n] = state[n] if top_init == "copy" else t  # mini layer i is full layer i
        elif n.startswith("lm_head."):
            copy_head = top_init == "copy" and n in state
            out[n] = state[n] if copy_head else t
    out["lm_head.weight"] = out[WORD]  # the head's decoder stays tied to the frozen embeddings
    return out, mini_cfg


def plug_embeddings(state: dict, cfg: ModelConfig, word: torch.Tensor, output_bias: torch.Tensor,
                    pad_token_id: int) -> tuple[dict, ModelConfig]:
    """The full model with a new vocabulary: every other tensor is the same object, untouched."""
    if word.ndim != 2 or word.shape[1] != cfg.hidden_size:
        raise UserError(f"embeddings of shape {tuple(word.shape)} do not fit hidden size {cfg.hidden_size}")
    if output_bias.shape != (word.shape[0],):
        raise UserError(f"output bias of shape {tuple(output_bias.shape)} does not match {word.shape[0]} pieces")
    if pad_token_id != cfg.pad_token_id:
        raise UserError(f"pad id {pad_token_id} of the new tokenizer differs from the model's {cfg.pad_token_id}")
    out = dict(state)
    out[WORD] = word
    for name in TIED:
        if name in state:
            out[name] = word
    for name in BIASES:
        if name in state:
            out[name] = output_bias
    return out, dataclasses.replace(cfg, vocab_size=word.shape[0])


def plugged_encoder(state: dict, cfg: ModelConfig, tensors: dict, pad_token_id: int):
    """An `MLMEncoder` (eval mode) of `state` with a pack's tensors ({"word", "output_bias"})
    plugged in: what scoring a language pack through an encoder needs."""
    from ds_minimodel.model import MLMEncoder

    plugged_state, plugged_cfg = plug_embeddings(state, cfg, tensors["word"], tensors["output_bias"], pad_token_id)
    model = MLMEncoder(plugged_cfg)
    model.load_state_dict(plugged_state, strict=True)
    return model.eval()
