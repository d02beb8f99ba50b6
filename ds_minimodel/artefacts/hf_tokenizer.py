"""A language pack's tokenizer as a Hugging Face tokenizer that gives exactly our ids.

Our target tokenizers are sentencepiece models trained by `tokenizer.train_tokenizer` (special ids
in the "xlmr" or "bert" layout, `<mask>` a user-defined piece). No stock transformers class reads
them as they are: `XLMRobertaTokenizer` shifts every sentencepiece id by one (fairseq's offset,
and puts `<mask>` last), `BertTokenizer` wants a WordPiece vocab.txt. So the export writes a
`tokenizer.json` (the `tokenizers` library's own format, which `AutoTokenizer` loads through
`PreTrainedTokenizerFast`) that replays sentencepiece's encoding with the model's own ids:

* model: the pieces in id order with their scores (Unigram), or, for a BPE sentencepiece model,
  the same vocabulary with merges ranked by the merged piece's score (sentencepiece merges the
  pair whose result scores highest);
* normalizer: sentencepiece's own precompiled character map (nmt_nfkc by default), then its
  whitespace rules: spaces stripped at both ends and runs of spaces collapsed;
* pre-tokenizer: Metaspace, which turns spaces into "▁", prefixes the text with "▁" (the dummy
  prefix) and splits before each "▁" (sentencepiece pieces never cross a word start);
* post-processor: the frame our data pipeline puts around every sequence, by the body's
  `tokenizers.layout.Layout`: `<s> A </s>` and `<s> A </s></s> B </s>` for the RoBERTa family,
  `<s> A </s> B </s>` for the BERT family, with token types 0/1 where the body has two
  (`<s>`/`</s>` being whatever pieces hold the bos/eos ids);
* the special pieces are added tokens, so the literal strings `<mask>` etc. in a text become
  those tokens, and the text between them is normalised as a whole text is (stripped, with its
  own "▁" prefix): "a <mask> b" gives [<s>] ids("a") [<mask>] ids("b") [</s>], the mask
  standing for a whole word-initial piece, which is what masked-LM training masked (plain
  sentencepiece would emit a lone "▁" before it, and no "▁" before a "b" glued to it).

A pack whose tokenizer is already a `tokenizer.json` keeps its model, normalizer and
pre-tokenizer and gets the post-processor above.
"""

from __future__ import annotations

import json
from pathlib import Path

from ds_minimodel.errors import UserError
from ds_minimodel.tokenizers.base import WORD_START, Tokenizer
from ds_minimodel.tokenizers.layout import Layout
from ds_minimodel.tokenizers.pretrained import HFTokenizer
from ds_minimodel.tokenizers.sentencepiece import SentencePieceTokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# sentencepiece_model.proto enums: TrainerSpec.ModelType, SentencePiece.Type
_UNIGRAM, _BPE = 1, 2
_NORMAL = 1


def _spm_proto(path: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _check_spec(proto, path: str) -> None:
    """Refuse sentencepiece options the replay below does not reproduce (train_tokenizer uses none)."""
    t, n = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if t.model_type not in (_UNIGRAM, _BPE):
        problems.append(f"model type {t.model_type} (only unigram and bpe)")
    if t.byte_fallback:
        problems.append("byte_fallback")
    if t.treat_whitespace_as_suffix or not t.split_by_whitespace:
        problems.append("whitespace handling other than split_by_whitespace with word-initial '▁'")
    if not (n.add_dummy_prefix and n.escape_whitespaces and n.remove_extra_whitespaces):
        problems.append("a normalizer without the dummy prefix, escaped or collapsed whitespace")
    if proto.denormalizer_spec.precompiled_charsmap:
        problems.append("a denormalizer")
    if problems:
        raise UserError(f"tokenizer {path}: cannot be written as a Hugging Face tokenizer.json: "
                        + "; ".join(problems))


def _from_sentencepiece(tok: SentencePieceTokenizer):
    """The `tokenizers.Tokenizer` that segments text as `tok` does (no specials, no frame)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE, Unigram

    proto = _spm_proto(tok.path)
    _check_spec(proto, tok.path)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    assert [p for p, _ in pieces] == tok.pieces(), "the proto and the processor disagree"
    unk = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == _UNIGRAM:
        backend = Backend(Unigram(pieces, unk_id=unk, byte_fallback=False))
    else:
        # Sentencepiece BPE merges, at each step, the adjacent pair whose concatenation is the
        # highest-scoring normal piece: merges ranked by that score replay it.
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
        ranked = sorted((-score, i, piece[:cut], piece[cut:])
                        for piece, (score, i) in normal.items() for cut in range(1, len(piece))
                        if piece[:cut] in normal and piece[cut:] in normal)
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        backend = Backend(BPE(vocab, [(a, b) for _, _, a, b in ranked], unk_token=pieces[unk][0], fuse_unk=True,
                              byte_fallback=False, dropout=None))
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    # remove_extra_whitespaces: only the space counts (the character map has already turned
    # tabs and other blanks into spaces where sentencepiece does).
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " "),
              # The dummy prefix is added even before a text's own leading "▁" (Metaspace would skip it).
              normalizers.Replace(Regex(f"\\A{WORD_START}"), WORD_START * 2)]
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    return backend


def _specials(tok: Tokenizer) -> dict[str, str]:
    """Role -> piece string, for the ids the data pipeline uses."""
    return {role: tok.piece(getattr(tok, f"{role}_id")) for role in ("bos", "eos", "pad", "unk", "mask")}


def backend_tokenizer(tok: Tokenizer, layout: Layout):
    """`tok` as a `tokenizers.Tokenizer`, framing every sequence as `layout` does."""
    from tokenizers import AddedToken, processors
    from tokenizers import Tokenizer as Backend

    if isinstance(tok, SentencePieceTokenizer):
        backend = _from_sentencepiece(tok)
    elif isinstance(tok, HFTokenizer):
        backend = Backend.from_file(tok.path)
        backend.no_truncation()
        backend.no_padding()
    else:  # pragma: no cover - Tokenizer.load returns one of the two
        raise AssertionError(type(tok))
    names = _specials(tok)
    backend.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in names.values()])
    bos, eos = names["bos"], names["eos"]
    b = ":1" if layout.segment_ids else ":0"  # token type of segment B
    single = f"{bos}:0 $A:0 {eos}:0"
    pair = f"{bos}:0 $A:0 {eos}:0 " + f"{eos}{b} " * (layout.separators - 1) + f"$B{b} {eos}{b}"
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(bos, tok.bos_id), (eos, tok.eos_id)])
    # The specials were pieces already: adding them must not have created new ids.
    size = backend.get_vocab_size(with_added_tokens=True)
    wrong = {role: piece for role, piece in names.items() if backend.token_to_id(piece) != getattr(tok, f"{role}_id")}
    if size != tok.vocab_size or wrong:
        raise UserError(f"tokenizer {tok.path}: its Hugging Face form has {size} ids (expected {tok.vocab_size})"
                        + (f" and special pieces at other ids: {wrong}" if wrong else ""))
    return backend


def write_hf_tokenizer(tok: Tokenizer, out_dir: str | Path, layout: Layout, model_max_length: int) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`
    (which `AutoTokenizer.from_pretrained` then loads offline). Returns the file names."""
    out_dir = Path(out_dir)
    backend = backend_tokenizer(tok, layout)
    backend.save(str(out_dir / "tokenizer.json"))
    names = _specials(tok)
    special = {"bos_token": names["bos"], "eos_token": names["eos"], "unk_token": names["unk"],
               "sep_token": names["eos"], "pad_token": names["pad"], "cls_token": names["bos"],
               "mask_token": names["mask"]}
    config = {
        # The generic class: it loads tokenizer.json as it is. A model-specific class would
        # rebuild the pipeline its own way (XLMRobertaTokenizer: fairseq's id offset).
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        # token_type_ids only for a body that reads them (BERT with two token types).
        "model_input_names": (["input_ids", "token_type_ids", "attention_mask"] if layout.segment_ids
                              else ["input_ids", "attention_mask"]),
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return list(TOKENIZER_FILES)
