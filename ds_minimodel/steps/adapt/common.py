"""What every step-2 job shares, one language or many: the body it trains through (`select_body`,
`read_body`), the new embeddings' start (`init_embeddings`, `start_state`), the checks before
anything runs, and the language pack's record (`pack_info`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_minimodel.artefacts.langpack import PackInfo
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import fingerprint, minijoint_mini, plug_embeddings
from ds_minimodel.config import AdaptConfig, ModelConfig
from ds_minimodel.data.cipher_vocab import KNOWN_ROWS_FILE, read_known_rows
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.method.methods import ADAPT_KIND, FULL, MINIJOINT, MINIPOST, THROUGH_FULL
from ds_minimodel.steps.adapt.focus import corpus_documents, focus_init
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.training import engine as ds
from ds_minimodel.training.job import env_world_size

def select_body(state: dict, cfg: ModelConfig, lineage: dict, through: str, where: str):
    """(body state, body config, method, depth k the pack's fingerprint covers)."""
    if through == THROUGH_FULL:
        if lineage.get("kind") == "minipost" and int(lineage["mini_depth"]) < int(lineage.get("source_layers", 0)):
            raise UserError(f"adapt.through=full needs a full model, but {where} is a MiniPost mini-model")
        if "lm_head.bias" not in state or "lm_head" in lineage.get("fresh_heads", []):
            raise UserError(f"adapt.through=full needs a model with a trained MLM head; {where} has none "
                            "(train one first: MiniPost with minipost.mini_depth=L, or pretraining)")
        body = {n: t for n, t in state.items() if not n.startswith("mid_head.")}
        return body, dataclasses.replace(cfg, mini_depth=None), FULL, cfg.num_layers
    if lineage.get("kind") == "minipost":
        return state, cfg, MINIPOST, int(lineage["mini_depth"])
    if cfg.mini_depth is not None:
        body, body_cfg = minijoint_mini(state, cfg)
        return body, body_cfg, MINIJOINT, cfg.mini_depth
    raise UserError(f"{where} has no mini-model: it has no mid head (MiniJoint) and is not a MiniPost "
                    "mini-model; use adapt.through=full for the standard baseline")


# The special tokens' id attributes of a Tokenizer: their rows always start as their source rows.
SPECIAL_ROLES = ("bos_id", "pad_id", "eos_id", "unk_id", "mask_id")
# init_embeddings' source_bias when the caller passed none. Not None: None says "the body has no
# usable output bias". The study rebuilds a run's start with init_embeddings; a caller that forgot
# the bias would rebuild a known_rows start that is not the run's, so that init refuses to guess.
_NOT_GIVEN = object()


def init_embeddings(how: str, source_word: torch.Tensor, source_tok: Tokenizer | None, target_tok: Tokenizer,
                    seed: int, corpus: TokenShards | None = None,
                    source_bias=_NOT_GIVEN) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """New [V', d] word table and [V'] output bias, and a record of how they started
    ({"rows_copied": n, ...}: the pack's provenance).

    Rows start as normal noise with the source table's std (the scale the frozen body's first
    layer norm and attention expect). Special tokens always copy their source row, by role.
    "copy_shared" also copies every piece both vocabularies contain (digits, names, punctuation
    and sub-words the two languages share), matched in one spelling (`word_pieces`) so a
    sentencepiece target can share rows with a WordPiece source; lowercased when the source
    tokenizer lowercases its input. "focus" copies the same shared pieces and starts every other
    piece the target corpus (its train split) uses often enough as FOCUS's combination of them
    (steps/adapt/focus.py).

    "known_rows" is a diagnostic, not a method: it starts from the answer. A cipher language's
    dataset (data/cipher_vocab.py; `corpus`'s directory) has known_rows.json, which maps target
    rows to their correct source rows: each of those rows starts as its source row, with the
    source head's output bias for it (`source_bias`: the bias of the head the run trains through,
    `Body.state["lm_head.bias"]`; None when the body has none: every bias then stays 0 and the
    record says so), and the special rows get their source bias too. Every other row is the
    "random" row, from the same generator draw. Adapting from there measures how far each body
    pulls the correct table away (the start-from-truth drift, docs/adaptation.md).
    """
    source_word = source_word.detach()
    g = torch.Generator().manual_seed(seed)
    std = float(source_word.std())
    word = torch.randn(target_tok.vocab_size, source_word.shape[1], generator=g) * std
    bias = torch.zeros(target_tok.vocab_size)
    record = {"rows_copied": 0}
    if source_tok is None:
        if how != "random":
            raise UserError(f"adapt.init={how} needs the source model's tokenizer (tokenizer.model in its directory)")
        return word, bias, record
    for role in SPECIAL_ROLES:
        word[getattr(target_tok, role)] = source_word[getattr(source_tok, role)]
        record["rows_copied"] += 1
    if how == "random":
        return word, bias, record
    if how == "known_rows":
        assert source_bias is not _NOT_GIVEN, "init_embeddings(known_rows) copies the head's bias: pass source_bias"
        _copy_known_rows(word, bias, record, source_word, source_bias, source_tok, target_tok, corpus)
        return word, bias, record
    if how == "focus" and corpus is None:
        raise UserError("adapt.init=focus needs the target corpus (its train split trains the auxiliary "
                        "fastText model)")
    shared = shared_pieces(source_tok, target_tok)
    for i, j in shared:
        word[i] = source_word[j]
    record["rows_copied"] += len(shared)
    if how == "focus":
        result = focus_init(word, source_word, shared,
                            corpus_documents(corpus.tokens("train"), target_tok.eos_id, target_tok.special_ids),
                            target_tok.pieces(), target_tok.special_ids)
        # FOCUS's one-time cost (the study adds it to a "+focus" method's curve): wall-clock and FLOPs.
        record.update(rows_focus=len(result.combined), focus_seconds=round(result.seconds, 2),
                      focus_flops=result.flops, focus_cost=result.cost)
    return word, bias, record


def shared_pieces(source_tok: Tokenizer, target_tok: Tokenizer) -> list[tuple[int, int]]:
    """[(target id, source id)] of the non-special pieces both vocabularies spell alike."""
    source_ids: dict[str, int] = {}
    for i, p in enumerate(source_tok.word_pieces()):
        source_ids.setdefault(p, i)
    shared = []
    for i, piece in enumerate(target_tok.word_pieces()):
        j = source_ids.get(piece.lower() if source_tok.lowercase else piece)
        if j is not None and i not in target_tok.special_ids and j not in source_tok.special_ids:
            shared.append((i, j))
    return shared


def _copy_known_rows(word: torch.Tensor, bias: torch.Tensor, record: dict, source_word: torch.Tensor,
                     source_bias: torch.Tensor | None, source_tok: Tokenizer, target_tok: Tokenizer,
                     corpus: TokenShards | None) -> None:
    """init_embeddings' "known_rows" (see its docstring), in place over the "random" start whose
    special rows are already copied."""
    rows = known_rows_map(corpus, source_tok, target_tok, source_word.shape[0])
    target_ids, source_ids = torch.tensor(list(rows), dtype=torch.long), torch.tensor(list(rows.values()),
                                                                                      dtype=torch.long)
    word[target_ids] = source_word[source_ids].to(word.dtype)
    record["rows_copied"] += len(rows)
    record["rows_known"] = len(rows)
    if source_bias is None:
        record.update(bias_copied=0, bias="zeros: the body has no output bias to copy")
        return
    source_bias = source_bias.detach()
    assert source_bias.shape == (source_word.shape[0],), "the head's bias has one entry per source row"
    for role in SPECIAL_ROLES:
        bias[getattr(target_tok, role)] = source_bias[getattr(source_tok, role)]
    bias[target_ids] = source_bias[source_ids].to(bias.dtype)
    record.update(bias_copied=len(rows) + len(SPECIAL_ROLES), bias="the source head's")


def known_rows_map(corpus: TokenShards | None, source_tok: Tokenizer, target_tok: Tokenizer,
                   source_rows: int) -> dict[int, int]:
    """{target id: source id} of the target corpus's known_rows.json, refused unless it maps this
    target tokenizer's rows onto this source model's."""
    if corpus is None:
        raise UserError("adapt.init=known_rows needs the target corpus (its directory's known_rows.json)")
    path = Path(corpus.path) / KNOWN_ROWS_FILE
    if not path.is_file():
        raise MissingFileError(f"adapt.init=known_rows needs a cipher language's {KNOWN_ROWS_FILE}, and {corpus.path} "
                               f"has none (prepare_data.py --recipe bible-<code>-cipher with --cipher-tokenizer "
                               f"SOURCE or --known-rows-from SOURCE writes it)")
    try:
        rows = read_known_rows(corpus.path, target_tok, source_tok)
    except UserError as exc:  # malformed, or a map of other target or source tokenizers
        raise type(exc)(f"adapt.init=known_rows: {exc}") from None
    bad = [(t, s) for t, s in rows.items() if not (0 <= t < target_tok.vocab_size and 0 <= s < source_rows)]
    if bad:
        raise InvalidValueError(f"adapt.init=known_rows: {path} maps target row {bad[0][0]} to source row "
                                f"{bad[0][1]}, outside {target_tok.vocab_size} target and {source_rows} source rows")
    return rows


@dataclass
class Body:
    """The frozen (mini-)model of adapt.model_dir that step 2 trains through."""

    state: dict
    cfg: ModelConfig
    method: str  # select_body's
    mini_depth: int  # k: the depth a pack's fingerprint covers
    fingerprint: str
    source_tokenizer: Tokenizer | None
    kernels: str  # the source model's kernel setting

    @property
    def kind(self) -> str:
        return ADAPT_KIND[self.method]


def read_body(cfg: AdaptConfig) -> Body:
    state, src_cfg, lineage = read_model_dir(cfg.adapt.model_dir)
    body, body_cfg, method, k = select_body(state, src_cfg, lineage, cfg.adapt.through, cfg.adapt.model_dir)
    expected = lineage["body_fingerprints"].get(str(k))
    body_fp = fingerprint(body, k)
    assert expected in (None, body_fp), "a mini-model's layers 1..k must be its full model's layers 1..k"
    source_tok = load_tokenizer(lineage["tokenizer"]) if lineage.get("tokenizer") else None
    return Body(body, body_cfg, method, k, body_fp, source_tok, src_cfg.kernels)


def check_target(corpus: TokenShards, body: Body, data_path: str, language: str, setting: str) -> None:
    """The corpus fits the body (pad id) and is of the language the pack will be labelled with:
    transfer scores a pack on its label's test set. A corpus that does not say its language
    (index.json meta.language; prepare_data's recipes do) is taken as given. `setting`: the
    config key that names the language, for the message."""
    target_tok = corpus.tokenizer()
    if target_tok.pad_id != body.cfg.pad_token_id:
        raise UserError(f"the tokenizer of {data_path} has pad id {target_tok.pad_id}, the model "
                        f"{body.cfg.pad_token_id}")
    said = corpus.index.get("meta", {}).get("language")
    if said and said != language:
        raise UserError(f"{data_path} is a {said} corpus (its index.json), but {setting}: the pack would be "
                        f"labelled {language} and scored on {language}'s test set")


def check_ds_config(ds_config_path: str) -> dict:
    raw_ds = ds.read_ds_config(ds_config_path)
    if ds.zero_stage(raw_ds) == 3:
        raise UserError(f"adaptation runs on one node with ZeRO 0-2; {ds_config_path} is ZeRO-3")
    return raw_ds


def start_state(body: Body, corpus: TokenShards, cfg: AdaptConfig) -> tuple[dict, ModelConfig, dict]:
    """(the model's starting state dict, its config, init_embeddings' record): the body with the
    target language's (the corpus's tokenizer's) new embeddings plugged in."""
    target_tok = corpus.tokenizer()
    # The head the run trains through is lm_head in every body select_body returns (a MiniJoint
    # mini-model's is the mid head, renamed): its bias is the known rows' correct output bias.
    word, bias, record = init_embeddings(cfg.adapt.init, body.state["embeddings.word"], body.source_tokenizer,
                                         target_tok, cfg.train.seed, corpus,
                                         source_bias=body.state.get("lm_head.bias"))
    start, model_cfg = plug_embeddings(body.state, body.cfg, word, bias, target_tok.pad_id)
    return start, dataclasses.replace(model_cfg, kernels=body.kernels), record


def pack_info(cfg: AdaptConfig, body: Body, target_tok: Tokenizer, language: str, init_record: dict, depth: int,
              **provenance) -> PackInfo:
    return PackInfo(language=language, method=body.method, vocab_size=target_tok.vocab_size,
                    hidden_size=body.cfg.hidden_size, pad_token_id=target_tok.pad_id,
                    special={"bos": target_tok.bos_id, "pad": target_tok.pad_id, "eos": target_tok.eos_id,
                             "unk": target_tok.unk_id, "mask": target_tok.mask_id},
                    body_fingerprint=body.fingerprint, mini_depth=body.mini_depth,
                    tokenizer_fingerprint=target_tok.fingerprint(),
                    provenance={"model_dir": str(cfg.adapt.model_dir), "through": cfg.adapt.through,
                                "init": cfg.adapt.init, **init_record, "steps": cfg.train.steps,
                                "depth": depth, "world_size": env_world_size(), **provenance})
