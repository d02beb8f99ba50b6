"""How a model family packs special tokens around one or two segments: the layout the task
batching (tasks/batching.py) and the Hugging Face tokenizer export (artefacts/hf_tokenizer.py)
both follow. It sits with the tokenizers, below both, so that artefacts/ needs nothing of tasks/.

- RoBERTa / XLM-R (and the models trained here): `<s> A </s>`, pairs `<s> A </s></s> B </s>`,
  no token_type_ids (one token type).
- BERT: `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]`, with token_type_ids 0 up to and
  including the first `[SEP]` and 1 for B and its `[SEP]` (0 on padding).
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_minimodel.errors import InvalidValueError


@dataclass(frozen=True)
class Layout:
    """How a model family packs special tokens around one or two segments (see the module doc).

    `segment_ids`: feed token_type_ids (BERT with a two-row token-type table)."""
    family: str = "roberta"
    segment_ids: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("roberta", "bert"):
            raise InvalidValueError(f"layout family must be 'roberta' or 'bert', got {self.family!r}")
        if self.segment_ids and self.family != "bert":
            raise InvalidValueError("token_type_ids are only fed to BERT-family models")

    @property
    def separators(self) -> int:
        """Separator tokens between the two segments of a pair: </s></s> (RoBERTa), [SEP] (BERT)."""
        return 2 if self.family == "roberta" else 1


ROBERTA = Layout("roberta")
BERT = Layout("bert", segment_ids=True)


def layout_for(cfg) -> Layout:
    """The layout of the family of a model config (`ModelConfig`), never of its tokenizer: a new
    language's tokenizer is trained here and knows nothing about the body it is plugged into.
    BERT's absolute positions (position_style "bert", set by hf.config_from_hf for BERT
    checkpoints) mark the BERT family; token_type_ids only when its token-type table has a
    second row (type_vocab_size 2)."""
    if cfg.position_style == "bert":
        return Layout("bert", segment_ids=cfg.type_vocab_size >= 2)
    return ROBERTA
