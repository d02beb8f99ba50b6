"""Tiny Hugging Face checkpoint directories of every kind users bring, built offline.

Their tokenizers are trained here on a few hundred English verses (no download), in each format a
real checkpoint ships:

  "sentencepiece"  XLM-R's slow-tokenizer file sentencepiece.bpe.model (fairseq's training
                   defaults: <unk> 0, <s> 1, </s> 2, no <pad>, no <mask>)
  "unigram"        the same model as transformers' XLMRobertaTokenizer writes it: a Unigram /
                   Metaspace tokenizer.json (XLM-R, multilingual-e5, multilingual MiniLM)
  "bytelevel"      a byte-level BPE tokenizer.json with RoBERTa's special tokens
  "wordpiece"      an uncased WordPiece tokenizer.json with BERT's ids ([PAD] 0, [unused0..98],
                   [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), as all-MiniLM-L6-v2's

`reference(kind, d)` loads each with transformers' own class for that kind, the reference the
tests hold our tokenizers to.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import transformers

from ds_minimodel.tokenizers import load_tokenizer

KINDS = ("sentencepiece", "unigram", "bytelevel", "wordpiece")
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def english_lines(n: int = 400) -> list[str]:
    from ds_minimodel.data.bibles import english_verses

    verses = english_verses("kjv")
    return [verses[k] for k in sorted(verses)[:n]]


def chichewa_lines(n: int = 400) -> list[str]:
    from ds_minimodel.data.bibles import chichewa_verses

    verses = chichewa_verses()
    return [verses[k] for k in sorted(verses)[:n]]


def write_xlmr_sentencepiece(d: Path, lines: list[str], vocab_size: int = 400) -> Path:
    """XLM-R's sentencepiece.bpe.model: a Unigram model with sentencepiece's (fairseq's) default ids."""
    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", minloglevel=2)
    (d / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    return d / "sentencepiece.bpe.model"


def write_tokenizer(kind: str, d: Path, lines: list[str] | None = None) -> Path:
    """A tokenizer of `kind` in directory `d`, with the config files a checkpoint carries."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    lines = lines or english_lines()
    d.mkdir(parents=True, exist_ok=True)
    if kind == "sentencepiece":
        return write_xlmr_sentencepiece(d, lines)
    if kind == "unigram":  # converted by transformers from the sentencepiece model, as XLM-R's own
        spm_dir = d / "_spm"
        write_xlmr_sentencepiece(spm_dir, lines)
        transformers.XLMRobertaTokenizer.from_pretrained(str(spm_dir)).save_pretrained(str(d))
        for f in spm_dir.iterdir():
            f.unlink()
        spm_dir.rmdir()
        return d / "tokenizer.json"
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=500, special_tokens=ROBERTA_SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        specials = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=600, special_tokens=BERT_SPECIALS))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                    "mask_token": "[MASK]"}
    else:
        raise ValueError(kind)
    tok.save(str(d / "tokenizer.json"))
    (d / "special_tokens_map.json").write_text(json.dumps(specials))
    (d / "tokenizer_config.json").write_text(json.dumps({**specials, "do_lower_case": kind == "wordpiece"}))
    return d / "tokenizer.json"


def reference(kind: str, d: Path):
    """transformers' own tokenizer for `kind`, loaded from directory `d` (no network)."""
    if kind == "sentencepiece":
        return transformers.XLMRobertaTokenizer.from_pretrained(str(d))
    cls = {"unigram": transformers.XLMRobertaTokenizerFast, "bytelevel": transformers.RobertaTokenizerFast,
           "wordpiece": transformers.BertTokenizerFast}[kind]
    return cls(tokenizer_file=str(d / "tokenizer.json"))


def write_checkpoint(d: Path, model_type: str, *, layers: int, tokenizer: str | None, rows_extra: int = 0,
                     pad: int | None = None, head: bool = False, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random checkpoint with a tokenizer of kind `tokenizer` (None: no tokenizer), its
    embedding table `rows_extra` rows larger than the tokenizer (a padded vocabulary), pad_token_id
    `pad` (default: the tokenizer's), bare encoder or with an MLM head."""

    d.mkdir(parents=True, exist_ok=True)
    size, tok_pad = 100, 1
    if tokenizer is not None:
        tok = load_tokenizer(str(write_tokenizer(tokenizer, d)))
        size, tok_pad = tok.vocab_size, tok.pad_id
    cfg_cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
               "xlm-roberta": transformers.XLMRobertaConfig}[model_type]
    cfg = cfg_cls(vocab_size=size + rows_extra, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=80,
                  type_vocab_size=2 if model_type == "bert" else 1, pad_token_id=tok_pad if pad is None else pad)
    prefix = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[model_type]
    cls = getattr(transformers, f"{prefix}{'ForMaskedLM' if head else 'Model'}")
    torch.manual_seed(seed)
    cls(cfg).save_pretrained(str(d))
    return d
