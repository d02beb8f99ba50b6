"""The study's second metric: masked-LM validation loss of the FULL model with a checkpoint's
embeddings plugged in, per validation sequence.

Why not the loss each run logs in its metrics.jsonl: a mini-model run's own validation loss is
the loss of the mini-model (layers 1..k and the mid head for MiniJoint, layers 1..k and its
trained top for MiniPost), the standard run's that of the full model: different models, so "the
compute to reach the baseline's final loss" would compare unlike quantities. What carries over to
the big model is the embeddings, so every checkpoint of every method is scored the same way:
plugged into the model the baseline trains through (its adapt.model_dir, all layers and the
final MLM head), on the same validation sequences with the same masks. The masks are drawn with
this scorer's own seed, not the run's train.seed, so every seed is measured on the same set and
the seeds' spread is training noise only. For the baseline this is its own training objective
on validation data.

Units are the validation sequences: num = the summed cross-entropy of a sequence's masked
tokens, den = how many it has, so that resampling sequences resamples the loss token-weighted,
as `loop.evaluate_mlm` averages it.

Their clusters (`clusters`, for the bootstrap) are the validation split's documents: one per
chapter in the Bible recipes (index.json's meta "document"), so the sequences cut from one
chapter are drawn together. A sequence is a window of the packed stream and may straddle two
chapters (a chapter is ~800 tokens, a sequence 62-126): it belongs to the document holding most
of its tokens (the earlier on a tie). Each unit must sit in exactly one cluster to be drawn with
it, and the majority chapter is the one whose text dominates its loss; the correlation a
straddling sequence keeps with its other chapter is a few tokens' worth. With few validation
sequences there are few clusters (64 sequences of 62 tokens span ~5 chapters): the interval then
says so, and its test-set part takes Student's t with C - 1 degrees of freedom.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ds_minimodel.artefacts.langpack import PackInfo, check_compatible
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plugged_encoder
from ds_minimodel.data.loader import eval_batches
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder, gather_masked
from ds_minimodel.steps.adapt.common import select_body
from ds_minimodel.steps.mlm_job import open_corpus
from ds_minimodel.study.bootstrap import UnitClusters
from ds_minimodel.study.runs import StudyRun
from ds_minimodel.study.scoring import Units, file_id


def sequence_documents(tokens: np.ndarray, eos: int, sequences: int, body: int) -> np.ndarray:
    """Per sequence i (the stream's tokens [i*body, (i+1)*body): loader._build_rows), the index of
    the document holding most of its tokens, the earlier on a tie. Document j is the tokens after
    the j-th `</s>` up to and including the next one (shards.py ends every document with one)."""
    span = np.asarray(tokens[:sequences * body])
    assert span.size == sequences * body
    # The document of token t: how many </s> come before it.
    doc = np.concatenate([[0], np.cumsum(span[:-1] == eos)]).reshape(sequences, body)
    return np.array([w[0] + int(np.argmax(np.bincount(w - w[0]))) for w in doc], dtype=np.int64)


@torch.no_grad()
def sequence_losses(model: MLMEncoder, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(summed cross-entropy of each row's masked tokens, their count) through the final head:
    the same loss `MLMEncoder.forward(route="final")` averages over the batch, kept per row."""
    labels = batch["labels"]
    hidden, gold = gather_masked(model.encode(batch["input_ids"])[-1], labels)
    rows = labels.ne(IGNORE_INDEX).nonzero()[:, 0]  # row-major, the order gather_masked takes them in
    ce = F.cross_entropy(model.lm_head(hidden).float(), gold, reduction="none").double()
    sums = torch.zeros(labels.shape[0], dtype=torch.float64).index_add_(0, rows, ce)
    return sums.numpy(), torch.bincount(rows, minlength=labels.shape[0]).double().numpy()


class MLMLossScorer:
    """Validation MLM loss of the full model (`model_dir`, through all layers) with a pack plugged
    in, over the first `sequences` validation sequences of `data_path`, rounded up to whole
    batches of `batch_size` (see the module docstring)."""
    metric = "mlm_loss"
    better = "lower"

    def __init__(self, model_dir: str | Path, data_path: str | Path, seq_len: int, mask_prob: float,
                 sequences: int = 128, batch_size: int = 16, mask_seed: int = 0):
        if sequences < 1:
            raise InvalidValueError(f"loss sequences must be positive, got {sequences}")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise MissingFileError(f"the MLM-loss model {model_dir} does not exist")
        state, cfg, self.lineage = read_model_dir(model_dir)
        # The body and head the standard baseline trains through (adapt.through=full).
        self.body, self.cfg, _, _ = select_body(state, cfg, self.lineage, "full", str(model_dir))
        shards = open_corpus(str(data_path))
        self.tokenizer_fingerprint = shards.index["tokenizer_fingerprint"]
        self.batches = eval_batches(shards, "valid", seq_len, batch_size, math.ceil(sequences / batch_size), 0, 1,
                                    mask_seed, mask_prob)
        self.sequences = sum(int(b["input_ids"].shape[0]) for b in self.batches)
        # The batches hold sequences 0 .. sequences-1 in order (one rank): their documents.
        kind = shards.index.get("meta", {}).get("document")
        docs = sequence_documents(shards.tokens("valid"), shards.index["special"]["eos"], self.sequences, seq_len - 2)
        self._clusters = UnitClusters("chapter" if kind == "chapter" else f"document ({kind or 'unknown'})",
                                      tuple(str(d) for d in docs))
        self.identity = {"metric": self.metric, "model": file_id(self.model_dir / "model.pt"),
                         "data": shards.fingerprint(), "sequences": self.sequences, "seq_len": seq_len,
                         "mask_prob": mask_prob, "mask_seed": mask_seed}

    @classmethod
    def for_run(cls, run: StudyRun, sequences: int = 128, mask_seed: int = 0) -> "MLMLossScorer":
        """Scoring through the model a (baseline) run trained through, on its data's validation split."""
        if run.config.adapt.through != "full":
            raise UserError(f"run {run.name!r} ({run.dir}) trained through a mini-model: the MLM loss is scored "
                            "through the baseline's full model")
        data = run.config.data
        return cls(run.config.adapt.model_dir, data.path, data.seq_len, data.mask_prob, sequences,
                   data.eval_batch_size, mask_seed)

    def clusters(self, language: str) -> UnitClusters:
        """Per validation sequence, its document (the module docstring); the same in every language."""
        return self._clusters

    def references(self, language: str) -> dict:
        return {"validation_sequences": self.sequences,
                "masked_tokens": int(sum(int(b["labels"].ne(IGNORE_INDEX).sum()) for b in self.batches))}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        if info.tokenizer_fingerprint != self.tokenizer_fingerprint:
            raise UserError(f"a {info.language} pack's tokenizer is not the one of the validation data "
                            f"({self.tokenizer_fingerprint})")
        check_compatible(info, hidden_size=self.cfg.hidden_size, pad_token_id=self.cfg.pad_token_id,
                         body_fingerprint=self.lineage["body_fingerprints"].get(str(info.mini_depth), "none"),
                         where=str(self.model_dir))
        model = plugged_encoder(self.body, self.cfg, tensors, info.pad_token_id)
        parts = [sequence_losses(model, b) for b in self.batches]
        return Units(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
