"""The cipher language's own metric in the study: row precision@1 of every checkpoint's table.

A cipher of the source language (data/cipher.py) is the one target whose right answer is known:
its dataset's known_rows.json maps each target row whose deciphered spelling is a source piece to
that source row. A checkpoint's row is right when its nearest source row by cosine, over the whole
source table, is the known one (tasks/metrics.row_precision_at_1). This measures the embeddings
themselves, with no classifier in between, so it separates "the rows went to the right place"
from "the task transferred".

Units are the known rows, in target-id order: 1 if right, 0 if wrong. They have no clusters (a
row is its own unit; rows of one word family are correlated, which the interval does not see: it
says so, as for any metric without clusters). The source table is the word table of the model the
pack was adapted from: every method's body shares it (MiniPost and MiniJoint keep the pretrained
table), and `ByBody` routes each pack to its own model when the study has several."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ds_minimodel.artefacts.langpack import PackInfo
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.data.cipher_vocab import KNOWN_ROWS_FILE, read_known_rows
from ds_minimodel.errors import MissingFileError, UserError
from ds_minimodel.study.scoring import Units, file_id
from ds_minimodel.tasks.metrics import nearest_row_hits
from ds_minimodel.tokenizers import load_tokenizer


def has_known_rows(data_path: str | Path) -> bool:
    """Whether a target dataset is a cipher language with known rows (the study then scores them)."""
    return (Path(data_path) / KNOWN_ROWS_FILE).is_file()


class RowPrecisionScorer:
    """Row precision@1 of a pack's table against the source table of `model_dir`, over the known
    rows of `data_path` (see the module docstring)."""
    metric = "row_precision"
    better = "higher"

    def __init__(self, model_dir: str | Path, data_path: str | Path):
        self.model_dir, self.data_path = Path(model_dir), Path(data_path)
        if not self.model_dir.is_dir():
            raise MissingFileError(f"the row-precision model {model_dir} does not exist")
        if not has_known_rows(self.data_path):
            raise MissingFileError(f"{self.data_path / KNOWN_ROWS_FILE} does not exist: row precision needs a "
                                   "cipher language (prepare_data --known-rows-from or --cipher-tokenizer)")
        state, _, self.lineage = read_model_dir(model_dir)
        self.source = state["embeddings.word"].detach().double()
        self._known: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # by tokenizer fingerprint
        digest = hashlib.sha256((self.data_path / KNOWN_ROWS_FILE).read_bytes()).hexdigest()[:16]
        self.identity = {"metric": self.metric, "model": file_id(self.model_dir / "model.pt"),
                         "known_rows": digest}

    def _rows(self, tokenizer_path: str, fingerprint: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(target ids, their source ids) in target-id order, for the pack's tokenizer."""
        if fingerprint not in self._known:
            source = self.lineage.get("tokenizer")  # the source ids must be ids of this table's rows
            known = read_known_rows(self.data_path, load_tokenizer(tokenizer_path),
                                    load_tokenizer(source) if source else None)
            if not known:
                raise UserError(f"{self.data_path / KNOWN_ROWS_FILE} lists no known row")
            targets = sorted(known)
            self._known[fingerprint] = (torch.tensor(targets), torch.tensor([known[t] for t in targets]))
        return self._known[fingerprint]

    def clusters(self, language: str):
        return None  # rows are drawn one by one (the module docstring)

    def references(self, language: str) -> dict:
        known = next(iter(self._known.values()), None)
        return {"source_rows": int(self.source.shape[0]), "chance": 1.0 / int(self.source.shape[0]),
                **({"known_rows": int(len(known[0]))} if known is not None else {})}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        targets, want = self._rows(tokenizer_path, info.tokenizer_fingerprint)
        word = tensors["word"].detach().double()
        if word.shape[1] != self.source.shape[1]:
            raise UserError(f"a {info.language} pack of width {word.shape[1]} against the {self.source.shape[1]}-wide "
                            f"table of {self.model_dir}")
        return Units(nearest_row_hits(word, self.source, targets, want).numpy(), None)

