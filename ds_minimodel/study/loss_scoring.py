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

The output bias refit (`refit_losses`, each run's final checkpoint): a mini-model method learns
its output bias through another head (MiniJoint's mid head, MiniPost's new top), so part of its
plugged loss is the output side of the plug (a bias that fits another head) and the rest the input
side (rows the full body reads less well). Refitting only the bias through the full model, on
masked train sequences of the target corpus, and scoring the same validation sequences again
separates the two: plugged - refit is the output side. The refit is exact (the objective is convex
in the bias: L-BFGS to convergence), with a Gaussian prior at the pack's own bias worth one masked
token per vocabulary entry, so a piece the refit sequences never show keeps the bias it learned.
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
from ds_minimodel.study.runs import StudyRun, checkpoint_tensors
from ds_minimodel.study.scoring import Units, file_id


REFIT_SEQUENCES = 512  # masked train sequences the bias is refit on (~4,700 masked tokens at 64 tokens)
REFIT_ITERATIONS = 100  # L-BFGS iterations (it converges well before on these sizes)


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
def masked_logits(model: MLMEncoder, batch: dict, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the batch's masked tokens through the final head [M, V], their gold ids [M]),
    row-major; without `bias`, the logits before the head's output bias is added."""
    hidden, gold = gather_masked(model.encode(batch["input_ids"])[-1], batch["labels"])
    head = model.lm_head
    if bias:
        return head(hidden), gold
    return F.linear(head.layer_norm(F.gelu(head.dense(hidden))), head.weight), gold


def refit_output_bias(model: MLMEncoder, batches: list[dict], iterations: int = REFIT_ITERATIONS) -> torch.Tensor:
    """The final head's output bias [V] minimizing the mean cross-entropy of the batches' masked
    tokens, everything else fixed, under a Gaussian prior at the model's own bias with the weight
    of one masked token per entry (the module docstring). Convex in the bias: L-BFGS in float64."""
    parts = [masked_logits(model, b, bias=False) for b in batches]
    logits = torch.cat([p[0] for p in parts]).double()
    gold = torch.cat([p[1] for p in parts])
    start = model.lm_head.bias.detach().double()
    bias = start.clone().requires_grad_(True)
    prior = 0.5 / len(gold)
    opt = torch.optim.LBFGS([bias], max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(logits + bias, gold) + prior * (bias - start).square().sum()
        loss.backward()
        return loss

    opt.step(objective)
    return bias.detach().to(model.lm_head.bias.dtype)


@torch.no_grad()
def sequence_losses(model: MLMEncoder, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(summed cross-entropy of each row's masked tokens, their count) through the final head:
    the same loss `MLMEncoder.forward(route="final")` averages over the batch, kept per row."""
    labels = batch["labels"]
    logits, gold = masked_logits(model, batch)
    rows = labels.ne(IGNORE_INDEX).nonzero()[:, 0]  # row-major, the order gather_masked takes them in
    ce = F.cross_entropy(logits.float(), gold, reduction="none").double()
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
        self._refit_source = (shards, seq_len, batch_size, mask_prob, mask_seed)
        self._refit_batches: list[dict] | None = None
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

    def refit_batches(self) -> list[dict]:
        """REFIT_SEQUENCES masked train sequences spread evenly over the train split (its first
        ones would all be Genesis), with this scorer's mask seed; built once."""
        if self._refit_batches is None:
            shards, seq_len, batch_size, mask_prob, mask_seed = self._refit_source
            every = eval_batches(shards, "train", seq_len, batch_size, None, 0, 1, mask_seed, mask_prob)
            want = max(1, math.ceil(REFIT_SEQUENCES / batch_size))
            self._refit_batches = [every[i] for i in np.linspace(0, len(every) - 1, min(want, len(every))).astype(int)]
        return self._refit_batches

    def _plugged(self, info: PackInfo, tensors: dict) -> MLMEncoder:
        if info.tokenizer_fingerprint != self.tokenizer_fingerprint:
            raise UserError(f"a {info.language} pack's tokenizer is not the one of the validation data "
                            f"({self.tokenizer_fingerprint})")
        check_compatible(info, hidden_size=self.cfg.hidden_size, pad_token_id=self.cfg.pad_token_id,
                         body_fingerprint=self.lineage["body_fingerprints"].get(str(info.mini_depth), "none"),
                         where=str(self.model_dir))
        return plugged_encoder(self.body, self.cfg, tensors, info.pad_token_id)

    def refit_score(self, info: PackInfo, tensors: dict) -> Units:
        """`score`'s units with the output bias refit first (the module docstring)."""
        model = self._plugged(info, tensors)
        model.lm_head.bias.data.copy_(refit_output_bias(model, self.refit_batches()))
        parts = [sequence_losses(model, b) for b in self.batches]
        return Units(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        model = self._plugged(info, tensors)
        parts = [sequence_losses(model, b) for b in self.batches]
        return Units(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def refit_losses(opened: dict[str, list[StudyRun]], scorer, out_dir: Path, log) -> dict:
    """Per method, the plugged MLM loss of each seed's final checkpoint with and without the output
    bias refit (`scorer`: an MLMLossScorer, or a ByBody of them), cached by the tensors' hash in
    out_dir/score_cache_mlm_loss_refit.json. {method: {"per_seed": {seed: {"plugged", "refit"}},
    "plugged", "refit", "output_side"}} (means over seeds; output_side = plugged - refit)."""
    from ds_minimodel.study.scoring import ScoreCache, tensors_key

    identity = {**scorer.identity, "metric": "mlm_loss_refit", "refit_sequences": REFIT_SEQUENCES,
                "refit_iterations": REFIT_ITERATIONS}
    cache, plain = ScoreCache(out_dir / "score_cache_mlm_loss_refit.json", identity), \
        ScoreCache(out_dir / f"score_cache_{scorer.metric}.json", scorer.identity)
    out = {}
    for name, runs in opened.items():
        per_seed = {}
        for run in runs:
            tensors = checkpoint_tensors(run, run.tags[-1])
            key = tensors_key(run.info, tensors)
            own = scorer.scorer_for(run.info) if hasattr(scorer, "scorer_for") else scorer
            plugged = plain.get(key, lambda: own.score(run.info, tensors, run.tokenizer_path)).value
            refit = cache.get(key, lambda: own.refit_score(run.info, tensors)).value
            per_seed[str(run.seed)] = {"plugged": plugged, "refit": refit}
            log(f"  [bias refit] {name} s{run.seed} {run.tags[-1]}: plugged {plugged:.4f}, refit {refit:.4f}")
        mean = {k: float(np.mean([v[k] for v in per_seed.values()])) for k in ("plugged", "refit")}
        out[name] = {"per_seed": per_seed, **mean, "output_side": mean["plugged"] - mean["refit"]}
    return out
