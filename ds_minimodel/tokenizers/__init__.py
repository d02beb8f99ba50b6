"""Tokenizers behind one interface (`base.Tokenizer`), and `load_tokenizer`, which reads any of them:

* sentencepiece.py: sentencepiece models trained here (`train_tokenizer`) with the special-id
  layout the frozen body expects;
* pretrained.py: the tokenizers pretrained checkpoints ship: a Hugging Face `tokenizer.json` of any
  model kind (WordPiece, byte-level BPE, Unigram/BPE with Metaspace), or XLM-R's
  `sentencepiece.bpe.model` read with fairseq's ids.
"""

from __future__ import annotations

import os

from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.tokenizers.base import MASK_PIECE, Tokenizer
from ds_minimodel.tokenizers.pretrained import HFTokenizer, XLMRSentencePieceTokenizer
from ds_minimodel.tokenizers.sentencepiece import SentencePieceTokenizer, load_processor


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer in file `path`, whatever its kind, told apart by content (a `tokenizer.json`
    copied into a dataset or model directory is stored as `tokenizer.model`)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"tokenizer model {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    # A serialized sentencepiece model is a protobuf (first byte a field tag, never "{").
    if head.startswith(b"{"):
        return HFTokenizer.load(path)
    sp = load_processor(path)
    if sp.piece_to_id(MASK_PIECE) != sp.unk_id():
        return SentencePieceTokenizer(path, sp)
    # No <mask>: not one of ours. XLM-R's own sentencepiece.bpe.model has none either; it is
    # read with fairseq's ids, as transformers' XLMRobertaTokenizer reads it.
    if XLMRSentencePieceTokenizer.fits(sp):
        return XLMRSentencePieceTokenizer(path, sp)
    raise InvalidValueError(f"tokenizer {path} has no {MASK_PIECE} piece and is not XLM-R's sentencepiece "
                            "model (<unk> 0, <s> 1, </s> 2, no <pad>); train it with train_tokenizer()")
