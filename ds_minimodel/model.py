"""A RoBERTa/XLM-R-shaped encoder with a tied MLM head and an optional mid-layer MLM head.

Plain `nn.Module`, no training infrastructure: DeepSpeed (and its ZeRO-3 partitioning) is
applied from outside by `engine.py`. Two ZeRO-3 rules shape this file:

* every module initialises only the parameters it creates itself, inside its own `__init__`
  (under `zero.Init` a parameter is partitioned as soon as its module's `__init__` returns, so
  a parent writing a child's parameter afterwards would write into an empty shard);
* a module that reads a parameter in `forward` owns it directly (ZeRO-3 gathers a module's own
  parameters in its pre-forward hook). So `Embeddings` holds its tables as parameters rather
  than `nn.Embedding` children, and each `MLMHead` owns the tied word-embedding parameter
  (the same `Parameter` object, as Hugging Face ties `lm_head.decoder.weight`).

The MLM loss is computed on masked positions only: hidden states of the M masked tokens are
gathered first, so the [tokens x vocab] logits never exist (and `kernels.masked_lm_loss` does not
even hold [M x vocab] unless kernels="off").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ds_minimodel import kernels
from ds_minimodel.config import ModelConfig
from ds_minimodel.rng_streams import RngStreams

# The label of a position no loss is taken at: what torch's cross_entropy skips by default. The one
# definition (data/masking.py writes it, the loop and the study count masked positions by it).
IGNORE_INDEX = -100

# Routes through the model (see MLMEncoder.forward).
ROUTES = ("joint", "final", "mid")


class Linear(nn.Linear):
    """nn.Linear with BERT's init (normal(0, std) weight, zero bias), done in its own __init__."""

    def __init__(self, in_features: int, out_features: int, std: float):
        object.__setattr__(self, "init_std", std)  # needed by reset_parameters, called by super
        super().__init__(in_features, out_features)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
        nn.init.zeros_(self.bias)


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, std = cfg.hidden_size, cfg.init_std
        self.cfg = cfg
        self.word = nn.Parameter(torch.empty(cfg.vocab_size, d).normal_(std=std))
        self.position = nn.Parameter(torch.empty(cfg.max_positions, d).normal_(std=std))
        self.token_type = nn.Parameter(torch.empty(cfg.type_vocab_size, d).normal_(std=std))
        with torch.no_grad():  # the padding rows never receive gradient, start them at zero
            self.word[cfg.pad_token_id].zero_()
            if cfg.position_style == "roberta":
                self.position[cfg.pad_token_id].zero_()
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.position_style == "bert":
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        # RoBERTa: non-pad tokens count up from pad_token_id + 1; pads sit at pad_token_id.
        pad = self.cfg.pad_token_id
        not_pad = input_ids.ne(pad).int()
        return (torch.cumsum(not_pad, dim=1) * not_pad + pad).long()

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                tied: kernels.TiedGradient | None = None) -> torch.Tensor:
        pad = self.cfg.pad_token_id
        x = kernels.embedding(input_ids, self.word, impl=self.cfg.kernels, padding_idx=pad, tied=tied)
        pos_pad = pad if self.cfg.position_style == "roberta" else None
        x = x + F.embedding(self.position_ids(input_ids), self.position, padding_idx=pos_pad)
        if token_type_ids is None:
            x = x + self.token_type[0]  # single-segment input (and RoBERTa, which has one type)
        else:  # BERT sentence pairs: segment B is type 1, as its pretraining's second sentence
            x = x + F.embedding(token_type_ids, self.token_type)
        return self.dropout(self.layer_norm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.explicit = cfg.attention == "explicit"
        self.dropout_p = cfg.attention_dropout
        # One fused projection for q, k, v: one matmul instead of three.
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, cfg.init_std)
        self.out = Linear(cfg.hidden_size, cfg.hidden_size, cfg.init_std)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.dropout_p if self.training else 0.0
        mask = None if key_mask is None else key_mask[:, None, None, :]  # True = attend
        if self.explicit:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            y = probs @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    """Post-LN transformer layer, as in BERT, RoBERTa and XLM-R."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, cfg.init_std)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, cfg.init_std)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.mlp_norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class MLMHead(nn.Module):
    """dense -> gelu -> layer norm -> tied decoder + own bias (RoBERTa's lm_head layout)."""

    def __init__(self, cfg: ModelConfig, tied_weight: nn.Parameter):
        super().__init__()
        self.impl, self.strategy = cfg.kernels, cfg.head_strategy
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, cfg.init_std)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.weight = tied_weight  # the word-embedding Parameter itself: owned here too

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None,
                tied: kernels.TiedGradient | None = None) -> torch.Tensor:
        """With labels ([M] ids): mean CE over the M rows of `hidden`. Without: logits.
        tied: the forward's TiedGradient (its lookup's), so d weight joins the one [V, d] buffer."""
        h = self.layer_norm(F.gelu(self.dense(hidden)))
        if labels is None:
            return F.linear(h, self.weight, self.bias)
        return kernels.masked_lm_loss(h, self.weight, self.bias, labels, impl=self.impl, strategy=self.strategy,
                                      tied=tied)


def gather_masked(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `hidden` [B, T, d] at positions whose label is not IGNORE_INDEX, and their labels."""
    flat = labels.reshape(-1)
    idx = flat.ne(IGNORE_INDEX).nonzero().squeeze(1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx), flat.index_select(0, idx)


class MLMEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be resolved before building the model")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.lm_head = MLMHead(cfg, self.embeddings.word)
        self.mid_head = MLMHead(cfg, self.embeddings.word) if cfg.mini_depth else None

    def sharing_body(self, vocab_size: int) -> "MLMEncoder":
        """An encoder of another vocabulary over this one's body: every module and parameter is
        this encoder's own object except the word table and the MLM heads' output biases, which are
        new zeros (load their values). Built on the meta device, so the body is never allocated
        twice."""
        with torch.device("meta"):
            other = MLMEncoder(dataclasses.replace(self.cfg, vocab_size=vocab_size))
        word = self.embeddings.word
        other.embeddings.word = nn.Parameter(word.new_zeros(vocab_size, word.shape[1]))
        for name in ("position", "token_type", "layer_norm"):
            setattr(other.embeddings, name, getattr(self.embeddings, name))
        other.layers = self.layers
        for head in ("lm_head", "mid_head"):
            mine, theirs = getattr(self, head), getattr(other, head)
            if mine is not None:
                theirs.dense, theirs.layer_norm = mine.dense, mine.layer_norm
                theirs.bias = nn.Parameter(mine.bias.new_zeros(vocab_size))
                theirs.weight = other.embeddings.word
        assert not any(t.is_meta for t in other.state_dict().values()), "a tensor was not shared or replaced"
        return other

    def encode(self, input_ids, attention_mask=None, depth: int | None = None,
               token_type_ids=None, tied: kernels.TiedGradient | None = None) -> list[torch.Tensor]:
        """Hidden states after each of the first `depth` layers (all by default); [0] = embeddings."""
        key_mask = None if attention_mask is None else attention_mask.bool()
        states = [self.embeddings(input_ids, token_type_ids, tied)]
        for layer in self.layers[: depth if depth is not None else len(self.layers)]:
            states.append(layer(states[-1], key_mask))
        return states

    def forward(self, input_ids, labels=None, attention_mask=None, route: str = "joint") -> dict:
        """MLM losses on the masked positions of `labels` (IGNORE_INDEX elsewhere).

        route "joint": full depth; loss = final MLM + mid_head_weight * mid MLM (MiniJoint
        pretraining; just the final MLM when there is no mid head).
        route "final": full depth, final head only (e.g. adaptation through the full model).
        route "mid": layers 1..k and the mid head only: the MiniJoint mini-model.
        Without labels: {"hidden": last state, "logits": final-head logits over all positions}.
        """
        k = self.cfg.mini_depth
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        if route == "mid" and self.mid_head is None:
            raise ValueError("route 'mid' needs a model with model.mini_depth set")
        # One [V, d] gradient for the word table, shared by the lookup and the heads (tied_grad.py).
        tied = kernels.TiedGradient() if labels is not None else None
        states = self.encode(input_ids, attention_mask, depth=k if route == "mid" else None, tied=tied)
        if labels is None:
            head = self.mid_head if route == "mid" else self.lm_head
            return {"hidden": states[-1], "logits": head(states[-1])}
        out = {"num_masked": labels.ne(IGNORE_INDEX).sum()}
        if route in ("joint", "final"):
            out["final_loss"] = self.lm_head(*gather_masked(states[-1], labels), tied=tied)
            out["loss"] = out["final_loss"]
        if self.mid_head is not None and route in ("joint", "mid"):
            out["mid_loss"] = self.mid_head(*gather_masked(states[k], labels), tied=tied)
            out["loss"] = out["mid_loss"] if route == "mid" else out["loss"] + self.cfg.mid_head_weight * out["mid_loss"]
        return out


class MultiLanguageMLM(nn.Module):
    """Several languages' MLM over one body: step 2 for many languages in one job.

    Language i runs as its own `MLMEncoder`, `encoders[i]` (of `languages[i]`), built with
    `MLMEncoder.sharing_body`: it owns only its word table and output bias, and every other
    module is the same object in all of them, so the frozen body is in memory once. A language's
    rows go through its own encoder only: its own embedding lookup, its own MLM softmax over its
    own vocabulary (the fused head never sees another language's rows or rows of the table), its
    own mean over its own masked tokens; in training its dropout draws from its own random
    stream (`rng_streams.py`). So its parameters get the gradient, and its rows the masks, that a
    separate run of that language would compute. (The multi-language job passes one language
    per micro-batch: one language's activations alive at a time, as in its own run.)

    Kept as separate parameters (not one [sum V, d] table with offsets): autograd's backward of
    a slice writes a zero-filled gradient of the whole table per slice, and separate tensors make
    each language's clipping group, optimizer state and pack a plain lookup by name.
    """

    def __init__(self, cfg: ModelConfig, vocab_sizes: dict[str, int]):
        super().__init__()
        self.languages = list(vocab_sizes)
        first = MLMEncoder(dataclasses.replace(cfg, vocab_size=vocab_sizes[self.languages[0]]))
        # A list, not a dict by code: a code may be a Module attribute ("to" is Tongan).
        self.encoders = nn.ModuleList([first] + [first.sharing_body(vocab_sizes[c]) for c in self.languages[1:]])
        self.rng = RngStreams(self.languages)

    @staticmethod
    def prefix(languages: list[str], language: str) -> str:
        """The state-dict prefix of `language`'s encoder in a model of `languages`."""
        return f"encoders.{languages.index(language)}."

    def trainable_groups(self) -> list[list[nn.Parameter]]:
        """Each language's trainable parameters (its clipping group), in `languages` order."""
        return [[p for p in enc.parameters() if p.requires_grad] for enc in self.encoders]

    def forward(self, batches: dict[str, dict], route: str = "final") -> dict:
        """batches: {code: MLMEncoder.forward's keyword arguments}. Returns {"loss": the sum of
        the languages' losses, "num_masked": their total, f"{key}_{code}": each language's own}."""
        out = {}
        for code, batch in batches.items():
            i = self.languages.index(code)
            with self.rng.use(code) if self.training else contextlib.nullcontext():
                mine = self.encoders[i](**batch, route=route)
            out.update({f"{k}_{code}": v for k, v in mine.items()})
            out["loss"] = mine["loss"] if "loss" not in out else out["loss"] + mine["loss"]
            out["num_masked"] = mine["num_masked"] + out.get("num_masked", 0)
        return out


class SequenceClassifier(nn.Module):
    """Encoder + RoBERTa's classification head (dense, tanh, dropout, out) on the <s> state, or
    on the mean of the token states (pooling="mean").

    Used for single sentences and sentence pairs alike (pairs are packed as <s> A </s></s> B </s>,
    or [CLS] A [SEP] B [SEP] with token_type_ids for BERT: see tokenizers.layout.Layout).
    The MLM heads stay in `encoder` (so a language pack plugs in by name) but are never called.
    """

    def __init__(self, cfg: ModelConfig, num_labels: int, dropout: float = 0.1, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.encoder = MLMEncoder(cfg)
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, cfg.init_std)
        self.dropout = nn.Dropout(dropout)
        self.out = Linear(cfg.hidden_size, num_labels, cfg.init_std)

    def with_config(self, cfg: ModelConfig) -> "SequenceClassifier":
        """A freshly initialised classifier of the same head for another encoder config (e.g. a
        plugged language pack's vocabulary size)."""
        return SequenceClassifier(cfg, self.out.out_features, self.dropout.p, self.pooling)

    def forward(self, input_ids, labels=None, attention_mask=None, token_type_ids=None) -> dict:
        states = self.encoder.encode(input_ids, attention_mask, token_type_ids=token_type_ids)[-1]
        if self.pooling == "cls":
            h = states[:, 0]
        else:  # mean over real tokens: a steadier feature than <s> for a briefly pretrained encoder
            m = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1)
            h = (states * m.to(states.dtype)).sum(1) / m.sum(1).clamp(min=1).to(states.dtype)
        logits = self.out(self.dropout(torch.tanh(self.dense(self.dropout(h)))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels)
            out["num_correct"] = (logits.argmax(-1) == labels).sum()
        return out



class QuestionAnswering(nn.Module):
    """Encoder + extractive-QA span head: one Linear(d, 2) over every token state, giving a start
    and an end logit per position (Hugging Face's *ForQuestionAnswering `qa_outputs`).

    The loss is Hugging Face's: cross-entropy of the start logits against `start_positions` and of
    the end logits against `end_positions`, averaged. Positions outside the sequence are clamped to
    its length and ignored (never produced by tasks.batching.encode_qa, which labels a window that
    does not hold the answer with the first token, index 0, as run_qa does). Logits are not masked:
    the span decoder (tasks.batching.qa_predictions) only ever picks context tokens.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = MLMEncoder(cfg)
        self.qa_outputs = Linear(cfg.hidden_size, 2, cfg.init_std)

    def with_config(self, cfg: ModelConfig) -> "QuestionAnswering":
        return QuestionAnswering(cfg)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None) -> dict:
        states = self.encoder.encode(input_ids, attention_mask, token_type_ids=token_type_ids)[-1]
        start_logits, end_logits = self.qa_outputs(states).float().unbind(dim=-1)
        out = {"start_logits": start_logits, "end_logits": end_logits}
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            out["loss"] = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                           + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return out
