"""The compute-budget study: transfer metric against step-2 compute, standard vs mini-model adaptation.

The paper's headline (arXiv 2212.10503, abstract: "2.3x less compute on average") is a
matched-metric comparison: how much step-2 compute does each method need to reach the
accuracy the standard baseline (Artetxe et al. 2020: new embeddings through the full model)
ends with? This module measures it on adaptation runs that kept a checkpoint every few steps:

1. every complete checkpoint of each run becomes a pack-equivalent (its word table and output
   bias, with the run's PackInfo) and is scored with the transfer metric: target-language
   accuracy of the source-fine-tuned classifier with those embeddings plugged in
   (`AccuracyScorer`), or English<->target verse retrieval top-1 (`RetrievalScorer`);
   optionally the run's *initial* embeddings (rebuilt exactly as adapt.py builds them) are a
   point at 0 FLOPs and 0 s;
2. each run is then a curve of (cumulative step-2 FLOPs from the checkpoint's meta.json,
   training wall-clock, metric);
3. `matched_compute`: target = fraction * the baseline's final metric; each curve's FIRST
   crossing of the target is interpolated (`first_crossing`), and a method's ratio is the
   baseline's FLOPs to reach the same target divided by the method's. The same is done for
   wall-clock.

Interpolation (what `first_crossing` assumes). A metric is measured only at checkpoints, so
where exactly a curve crosses the target is unknown between two of them. Let point j be the
first, in order of compute, whose metric is >= target. Then every earlier point is below the
target, in particular point j-1, and the crossing is put on the straight line between them:

    x* = x[j-1] + (target - m[j-1]) / (m[j] - m[j-1]) * (x[j] - x[j-1])

for x = FLOPs, wall-clock seconds and step alike (one interpolation parameter). This is the
least-assuming estimate; it always lies in (x[j-1], x[j]], so the error is at most one
checkpoint interval, which is reported as `flops_bracket`. When j is the curve's first point
there is nothing earlier to interpolate from and x* = x[0]: an upper bound (`at_first_point`).
A later dip below the target does not matter (first crossing); a curve that never reaches the
target is "not reached" and gets no ratio. The crossing is monotone in the target: a higher
target is never reached earlier.

Everything here is deterministic given the runs (which are deterministic given their seeds):
FLOPs are analytic counts, and the metric is evaluated with fixed data in a fixed order.
Wall-clock seconds are measured values and vary with the machine's load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ds_minimodel.artefacts.langpack import PackInfo
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.subprocess_runner import REPO, run_command

METHODS = ("full", "minijoint", "minipost")
METRICS = ("accuracy", "retrieval_top1")
INIT_TAG = "init"


# ---- matched-compute math (pure) ------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint of a run (or its initial embeddings: tag "init", step 0)."""
    step: int
    flops: int  # cumulative step-2 FLOPs (meta.json "loop")
    seconds: float  # cumulative training wall-clock (meta.json "loop" train_seconds)
    metric: float
    tag: str = ""


@dataclass(frozen=True)
class Crossing:
    """Where a curve first reaches a target (see the module docstring for the interpolation)."""
    reached: bool
    flops: float | None = None
    seconds: float | None = None
    step: float | None = None
    # FLOPs of the two points the crossing lies between (equal when at the first point).
    flops_bracket: tuple[float, float] | None = None
    at_first_point: bool = False


def _check_curve(points: list[Point], name: str) -> None:
    if not points:
        raise InvalidValueError(f"curve {name!r} has no points")
    for a, b in zip(points, points[1:]):
        if not (b.step > a.step and b.flops >= a.flops and b.seconds >= a.seconds):
            raise InvalidValueError(f"curve {name!r} is not ordered by training progress: step {a.step} "
                                    f"({a.flops} FLOPs, {a.seconds} s) before step {b.step} ({b.flops} FLOPs, "
                                    f"{b.seconds} s)")
    for p in points:
        if not math.isfinite(p.metric):
            raise InvalidValueError(f"curve {name!r} has a non-finite metric at step {p.step}")


def first_crossing(points: list[Point], target: float) -> Crossing:
    """The first point of the curve at which metric >= target, linearly interpolated from the
    point before it. `points` are in training order (checked)."""
    _check_curve(points, "curve")
    for j, p in enumerate(points):
        if p.metric >= target:
            if j == 0:
                return Crossing(True, float(p.flops), float(p.seconds), float(p.step),
                                (float(p.flops), float(p.flops)), at_first_point=True)
            a = points[j - 1]  # a.metric < target <= p.metric, so 0 < t <= 1
            t = (target - a.metric) / (p.metric - a.metric)
            return Crossing(True, a.flops + t * (p.flops - a.flops), a.seconds + t * (p.seconds - a.seconds),
                            a.step + t * (p.step - a.step), (float(a.flops), float(p.flops)))
    return Crossing(False)


def _ratio(baseline: float | None, method: float | None) -> float | None:
    if baseline is None or method is None or method <= 0 or baseline <= 0:
        return None
    return baseline / method


def matched_compute(curves: dict[str, list[Point]], baseline: str = "full", fraction: float = 1.0,
                    baseline_at: str = "crossing") -> dict:
    """Compute (FLOPs and wall-clock) each curve needs to first reach fraction * the baseline's
    final metric, and its ratio to the baseline's.

    baseline_at: "crossing" (default) compares with the baseline's own first crossing of the
    same target, interpolated the same way; "final" with the baseline's whole run (its last point).
    A ratio is None when either side did not reach the target, or reached it at 0 compute.
    """
    if baseline not in curves:
        raise InvalidValueError(f"baseline {baseline!r} is not among the runs ({', '.join(curves)})")
    if not (math.isfinite(fraction) and fraction > 0):
        raise InvalidValueError(f"fraction must be a positive number, got {fraction}")
    if baseline_at not in ("crossing", "final"):
        raise InvalidValueError(f"baseline_at must be 'crossing' or 'final', got {baseline_at!r}")
    for name, pts in curves.items():
        _check_curve(pts, name)
    base_final = curves[baseline][-1].metric
    target = fraction * base_final
    base_cross = first_crossing(curves[baseline], target)
    if baseline_at == "final":
        ref_flops, ref_seconds = float(curves[baseline][-1].flops), float(curves[baseline][-1].seconds)
    else:
        ref_flops, ref_seconds = base_cross.flops, base_cross.seconds
    methods = {}
    for name, pts in curves.items():
        c = first_crossing(pts, target)
        entry = {
            "final_metric": pts[-1].metric, "best_metric": max(p.metric for p in pts),
            "steps": pts[-1].step, "total_flops": pts[-1].flops, "total_seconds": pts[-1].seconds,
            "points": len(pts), "reached": c.reached, "flops_to_target": c.flops,
            "seconds_to_target": c.seconds, "step_to_target": c.step,
            "flops_bracket": list(c.flops_bracket) if c.flops_bracket else None,
            "at_first_point": c.at_first_point,
            "ratio_flops": _ratio(ref_flops, c.flops), "ratio_seconds": _ratio(ref_seconds, c.seconds),
        }
        if not c.reached:
            entry["note"] = f"never reached {target:.4g} (best {entry['best_metric']:.4g})"
        elif c.flops == 0:
            entry["note"] = "reached at initialization (0 FLOPs): no ratio"
        elif c.at_first_point:
            entry["note"] = "reached by the first checkpoint: its compute is an upper bound"
        if c.reached and not ref_flops:
            entry["ratio_flops"] = entry["ratio_seconds"] = None
            why = "never reached the target" if ref_flops is None else "reached it at 0 FLOPs"
            entry.setdefault("note", f"the baseline {why}: no ratio")
        methods[name] = entry
    return {"baseline": baseline, "fraction": fraction, "baseline_at": baseline_at,
            "baseline_final_metric": base_final, "target": target,
            "baseline_flops_to_target": ref_flops, "baseline_seconds_to_target": ref_seconds,
            "methods": methods}


# ---- adaptation runs: checkpoints as pack-equivalents ---------------------------------------

@dataclass
class StudyRun:
    """An adaptation run directory with its complete checkpoints and the PackInfo of its packs."""
    name: str
    dir: Path
    tags: list[str]
    metas: dict[str, dict]
    config: dict  # the AdaptConfig the run was trained with (from its checkpoints' meta.json)
    info: PackInfo
    tokenizer_path: str

    @property
    def method(self) -> str:
        return self.info.method

    def point_meta(self, tag: str) -> tuple[int, int, float]:
        loop = self.metas[tag]["loop"]
        return int(loop["step"]), int(loop["flops"]), float(loop["train_seconds"])


def _adapt_body(config: dict, where: str):
    """(body state, body config, method, k, source lineage) exactly as adapt.run selects them."""
    from ds_minimodel.artefacts.modeldir import read_model_dir
    from ds_minimodel.steps.adapt import select_body

    model_dir = config.get("model_dir")
    if not model_dir or not Path(model_dir).is_dir():
        raise MissingFileError(f"{where} was adapted from model_dir {model_dir!r}, which does not exist here "
                               "(needed for its initial embeddings or its pack info; try --no-init-point)")
    state, cfg, lineage = read_model_dir(model_dir)
    body, body_cfg, method, k = select_body(state, cfg, lineage, config.get("through", "mini"), model_dir)
    return body, body_cfg, method, k, lineage


def _target_tokenizer(config: dict, where: str):
    from ds_minimodel.steps.mlm_job import open_corpus

    path = config.get("data", {}).get("path")
    if not path or not (Path(path) / "index.json").is_file():
        raise MissingFileError(f"{where} was trained on data.path {path!r}, which is not a dataset here")
    return open_corpus(path).tokenizer()


def _info_from_config(config: dict, where: str) -> tuple[PackInfo, str]:
    """The PackInfo adapt.run would write for this run (when it has no final pack yet)."""
    from ds_minimodel.artefacts.surgery import fingerprint

    body, _, method, k, _ = _adapt_body(config, where)
    tok = _target_tokenizer(config, where)
    info = PackInfo(language=config["language"], method=method, vocab_size=tok.vocab_size,
                    hidden_size=int(body["embeddings.word"].shape[1]), pad_token_id=tok.pad_id,
                    special={"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id,
                             "mask": tok.mask_id},
                    body_fingerprint=fingerprint(body, k), fingerprint_layers=k,
                    tokenizer_fingerprint=tok.fingerprint(),
                    provenance={"model_dir": config.get("model_dir"), "through": config.get("through"),
                                "init": config.get("init")})
    return info, tok.path


def open_run(name: str, run_dir: str | Path) -> StudyRun:
    """Read an adaptation run: its complete checkpoints (sorted by step) and its PackInfo (from
    its final pack/pack.json, or rebuilt from the checkpoint's config when it has none)."""
    from ds_minimodel.training.checkpoint import is_complete, read_meta

    run_dir = Path(run_dir)
    where = f"run {name!r} ({run_dir})"
    if not run_dir.is_dir():
        raise MissingFileError(f"{where}: the directory does not exist")
    ck = run_dir / "checkpoints"
    tags = sorted(p.name for p in ck.glob("step_*") if p.is_dir() and is_complete(p)) if ck.is_dir() else []
    if not tags:
        raise UserError(f"{where} has no complete checkpoint in {ck} (a study run needs train.save_every small "
                        "and train.keep_last large)")
    metas = {t: read_meta(ck / t) for t in tags}
    for t, m in metas.items():
        if not str(m.get("step_kind", "")).startswith("adapt"):
            raise UserError(f"{where} is not an adaptation run: checkpoint {t} is of step kind "
                            f"{m.get('step_kind')!r}")
        if "loop" not in m or "flops" not in m["loop"]:
            raise UserError(f"{where}: checkpoint {t} has no FLOP count in its meta.json")
    tags.sort(key=lambda t: int(metas[t]["loop"]["step"]))
    config = {k: v for k, v in metas[tags[-1]]["config"].items() if k != "model"}
    pack_json = run_dir / "pack" / "pack.json"
    if pack_json.is_file():
        try:
            info = PackInfo(**json.loads(pack_json.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{pack_json} is malformed: {e}") from None
        tokenizer_path = str(run_dir / "pack" / "tokenizer.model")
    else:
        info, tokenizer_path = _info_from_config(config, where)
    return StudyRun(name, run_dir, tags, metas, config, info, tokenizer_path)


def checkpoint_tensors(run: StudyRun, tag: str) -> dict[str, torch.Tensor]:
    """{"word", "output_bias"} of one checkpoint: what its pack would hold."""
    from ds_minimodel.training.checkpoint import consolidate

    state, _ = consolidate(run.dir / "checkpoints", tag)
    word, bias = state["embeddings.word"], state["lm_head.bias"]
    if tuple(word.shape) != (run.info.vocab_size, run.info.hidden_size):
        raise UserError(f"run {run.name!r}: checkpoint {tag} has embeddings {tuple(word.shape)}, its pack info says "
                        f"{run.info.vocab_size} x {run.info.hidden_size}")
    return {"word": word.float(), "output_bias": bias.float()}


def init_tensors(run: StudyRun) -> dict[str, torch.Tensor]:
    """The run's embeddings before its first step, rebuilt with adapt.py's own `init_embeddings`
    from the same source model, tokenizers and seed."""
    from ds_minimodel.steps.adapt import init_embeddings
    from ds_minimodel.tokenizer import Tokenizer

    where = f"run {run.name!r} ({run.dir})"
    body, _, _, _, lineage = _adapt_body(run.config, where)
    target_tok = _target_tokenizer(run.config, where)
    if target_tok.fingerprint() != run.info.tokenizer_fingerprint:
        raise UserError(f"{where}: the tokenizer of data.path {run.config['data']['path']} is not the one the run "
                        "was trained with")
    source_tok = Tokenizer.load(lineage["tokenizer"]) if lineage.get("tokenizer") else None
    word, bias, _ = init_embeddings(run.config.get("init", "copy_shared"), body["embeddings.word"], source_tok,
                                    target_tok, int(run.config["train"]["seed"]))
    return {"word": word, "output_bias": bias}


def check_runs(runs: dict[str, StudyRun], baseline: str) -> None:
    """Refuse runs that are not comparable: a name that says another method than the run trained,
    another target language or tokenizer, or no baseline among them."""
    if baseline not in runs:
        raise UserError(f"the baseline {baseline!r} is not among the runs ({', '.join(runs)}); pass --runs "
                        f"{baseline}=DIR or --baseline NAME")
    for name, run in runs.items():
        if name in METHODS and run.method != name:
            raise UserError(f"mismatched runs: {name}={run.dir} is a {run.method} run (its pack info says method "
                            f"{run.method!r})")
    ref = runs[baseline]
    for name, run in runs.items():
        if (run.info.language, run.info.tokenizer_fingerprint) != (ref.info.language, ref.info.tokenizer_fingerprint):
            raise UserError(f"mismatched runs: {name} ({run.dir}) adapts language {run.info.language!r} with tokenizer "
                            f"{run.info.tokenizer_fingerprint}, the baseline {baseline} ({ref.dir}) "
                            f"{ref.info.language!r} with {ref.info.tokenizer_fingerprint}")


def open_runs(runs: dict[str, str | Path], baseline: str = "full") -> dict[str, StudyRun]:
    """Open and cross-check every run (cheap: meta.json and pack.json only)."""
    if not runs:
        raise UserError("no runs given")
    opened = {name: open_run(name, d) for name, d in runs.items()}
    check_runs(opened, baseline)
    return opened


# ---- scoring --------------------------------------------------------------------------------

def tensors_key(info: PackInfo, tensors: dict) -> str:
    h = hashlib.sha256(f"{info.language}:{info.tokenizer_fingerprint}:{info.body_fingerprint}".encode())
    for name in ("word", "output_bias"):
        t = tensors[name].detach().float().contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_id(path: Path) -> str:
    """Path, size and mtime of a model's weights (of an HF directory's config.json if no model.pt)."""
    if not path.is_file():
        path = next((p for p in (path.parent / "model.safetensors", path.parent / "pytorch_model.bin",
                                 path.parent / "config.json") if p.is_file()), path.parent)
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class AccuracyScorer:
    """Target-language test accuracy of a source-fine-tuned classifier with a pack plugged in.

    The test set is the task's (for the Bible tasks: the held-out chapters, paired with English);
    `eval_examples` takes a fixed seeded subset, the same for every checkpoint. Examples are
    batched in order of length (less padding; the count of correct answers does not depend on
    the order).
    """
    metric = "accuracy"

    def __init__(self, model_dir: str | Path, eval_examples: int | None = None, seed: int = 0, batch_size: int = 32):
        from ds_minimodel.config import FinetuneConfig, from_dict
        from ds_minimodel.steps.finetune.classification import accuracy, load_task
        from ds_minimodel.steps.finetune.common import load_classifier
        from ds_minimodel.tasks.batching import encode_texts, layout_for
        from ds_minimodel.tokenizer import Tokenizer

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise MissingFileError(f"--model {model_dir}: the fine-tuned model directory does not exist")
        if eval_examples is not None and eval_examples < 1:
            raise InvalidValueError(f"eval examples must be positive, got {eval_examples}")
        self.model, config, self.lineage = load_classifier(model_dir)
        self.task = load_task(from_dict(FinetuneConfig, config["finetune"]))
        self.max_len = int(config["task"]["max_len"])
        self.batch_size, self.eval_examples, self.seed = batch_size, eval_examples, seed
        src_test = self.task.tests[self.task.train_language]
        src_tok = Tokenizer.load(self.lineage["tokenizer"])
        # Packed as the model family expects (BERT: [CLS] A [SEP] B [SEP] with segment ids).
        self.layout = layout_for(self.model.encoder.cfg)
        src = encode_texts(src_test, src_tok, self.max_len, self.layout)
        self.source_accuracy = accuracy(self.model, src.ids, [ex.label for ex in src_test], src_tok.pad_id,
                                        batch_size, type_ids=src.type_ids)
        self._encoded: dict[tuple[str, str], tuple[list, list | None, list, int]] = {}
        self.identity = {"metric": self.metric, "model": _file_id(self.model_dir / "model.pt"), "task": self.task.name,
                         "eval_examples": eval_examples, "seed": seed, "max_len": self.max_len}

    def _subset(self, examples: list) -> list:
        if self.eval_examples is None or self.eval_examples >= len(examples):
            return examples
        import numpy as np

        pick = np.random.Generator(np.random.PCG64(self.seed)).choice(len(examples), self.eval_examples, replace=False)
        return [examples[i] for i in sorted(pick)]

    def references(self, language: str) -> dict:
        test = self._subset(self.task.test_in(language))
        from ds_minimodel.tasks.bible import majority_rate

        missing = self.task.meta.get("target_tests", {}).get(language, {}).get("missing")
        return {"source_accuracy": self.source_accuracy, "chance_majority": majority_rate(test),
                "test_examples": len(test), **({"test_verses_missing_in_language": missing} if missing else {})}

    def _encode(self, info: PackInfo, tokenizer_path: str):
        from ds_minimodel.tasks.batching import encode_texts
        from ds_minimodel.tokenizer import Tokenizer

        key = (info.language, info.tokenizer_fingerprint)
        if key not in self._encoded:
            tok = Tokenizer.load(tokenizer_path)
            test = self._subset(self.task.test_in(info.language))  # the pack's language picks the test set
            enc = encode_texts(test, tok, self.max_len, self.layout)
            order = sorted(range(len(enc.ids)), key=lambda i: (len(enc.ids[i]), i))
            types = [enc.type_ids[i] for i in order] if enc.type_ids is not None else None
            self._encoded[key] = ([enc.ids[i] for i in order], types, [test[i].label for i in order], tok.pad_id)
        return self._encoded[key]

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> float:
        from ds_minimodel.steps.finetune.classification import accuracy
        from ds_minimodel.steps.transfer import plugged_classifier

        encoded, types, labels, pad_id = self._encode(info, tokenizer_path)
        plugged = plugged_classifier(self.model, info, tensors, self.lineage, str(self.model_dir))
        return accuracy(plugged, encoded, labels, pad_id, self.batch_size, type_ids=types)


class RetrievalScorer:
    """English<->target verse retrieval top-1 (mean of both directions) on held-out verses:
    English through the pretrained model with its own tokenizer (pooled once), the target
    language through the same body with each pack plugged in (as transfer.evaluate_retrieval).
    The pack's language picks the target verses: the same held-out English verses for every
    language, less those its Bible lacks."""
    metric = "retrieval_top1"

    def __init__(self, pretrained_dir: str | Path, pairs: int = 1000, layer: int | None = None):
        from ds_minimodel.artefacts.modeldir import read_model_dir
        from ds_minimodel.model import MLMEncoder
        from ds_minimodel.steps.transfer import mean_pooled
        from ds_minimodel.tasks.bible import retrieval_sample
        from ds_minimodel.tokenizer import Tokenizer

        self.pretrained_dir = Path(pretrained_dir)
        if not self.pretrained_dir.is_dir():
            raise MissingFileError(f"--pretrained {pretrained_dir}: the pretrained model directory does not exist")
        self.state, self.cfg, self.lineage = read_model_dir(pretrained_dir)
        if not self.lineage.get("tokenizer"):
            raise UserError(f"{pretrained_dir} has no tokenizer.model: retrieval needs the source tokenizer")
        self.layer = layer or max(1, self.cfg.num_layers // 2)
        self.max_pairs = pairs
        self.sample = retrieval_sample("heldout", max_pairs=pairs)  # (verse id, English), every language's superset
        self._row = {vid: i for i, (vid, _) in enumerate(self.sample)}
        self._pairs: dict[str, list] = {}
        self.max_len = min(128, self.cfg.max_positions - self.cfg.pad_token_id - 1)
        model = MLMEncoder(self.cfg)
        model.load_state_dict(self.state, strict=True)
        self.english = mean_pooled(model, [text for _, text in self.sample], Tokenizer.load(self.lineage["tokenizer"]),
                                   self.layer, max_len=self.max_len)
        self.identity = {"metric": self.metric, "model": _file_id(self.pretrained_dir / "model.pt"),
                         "pairs": len(self.sample), "layer": self.layer}

    def pairs_for(self, language: str):
        """The held-out verse pairs of `language` (VersePairs: its meta says what was dropped)."""
        from ds_minimodel.tasks.bible import verse_retrieval_pairs

        if language not in self._pairs:
            self._pairs[language] = verse_retrieval_pairs("heldout", max_pairs=self.max_pairs, language=language)
        return self._pairs[language]

    def references(self, language: str) -> dict:
        pairs = self.pairs_for(language)
        dropped = len(self.sample) - len(pairs)
        return {"chance": 1.0 / len(pairs), "pairs": len(pairs), "layer": self.layer,
                **({"pairs_missing_in_language": dropped} if dropped else {})}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> float:
        from ds_minimodel.artefacts.langpack import check_compatible
        from ds_minimodel.artefacts.surgery import plug_embeddings
        from ds_minimodel.model import MLMEncoder
        from ds_minimodel.steps.transfer import mean_pooled
        from ds_minimodel.tasks.metrics import retrieval_metrics
        from ds_minimodel.tokenizer import Tokenizer

        check_compatible(info, hidden_size=self.cfg.hidden_size, pad_token_id=self.cfg.pad_token_id,
                         body_fingerprint=self.lineage["body_fingerprints"].get(str(info.fingerprint_layers), "none"),
                         where=str(self.pretrained_dir))
        state, cfg = plug_embeddings(self.state, self.cfg, tensors["word"], tensors["output_bias"], info.pad_token_id)
        model = MLMEncoder(cfg)
        model.load_state_dict(state, strict=True)
        pairs = self.pairs_for(info.language)
        target = mean_pooled(model, [p.target for p in pairs], Tokenizer.load(tokenizer_path), self.layer,
                             max_len=self.max_len)
        english = self.english[torch.tensor([self._row[p.id] for p in pairs], dtype=torch.long)]
        return retrieval_metrics(english, target)["top1"]


class ScoreCache:
    """Scores already computed, keyed by the tensors' hash, valid for one scorer identity; kept in
    a JSON file so that re-running a study re-scores nothing (and a shared initial table is scored
    once for all runs)."""

    def __init__(self, path: Path | None, identity: dict):
        self.path, self.identity, self.scores = path, identity, {}
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raw = {}
            if raw.get("identity") == identity:
                self.scores = dict(raw.get("scores", {}))

    def get(self, key: str, compute: Callable[[], float]) -> float:
        if key not in self.scores:
            self.scores[key] = float(compute())
            if self.path is not None:
                from ds_minimodel.training.checkpoint import write_atomic

                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps({"identity": self.identity, "scores": self.scores}, indent=1))
        return self.scores[key]


def collect_points(run: StudyRun, scorer, cache: ScoreCache | None = None, include_init: bool = True,
                   log: Callable[[str], None] = print) -> list[Point]:
    """The run's curve: (its initial embeddings at 0 FLOPs, when asked) + every complete checkpoint."""
    cache = cache or ScoreCache(None, scorer.identity)
    points = []
    sources = ([(INIT_TAG, lambda: init_tensors(run))] if include_init else []) + \
              [(tag, lambda tag=tag: checkpoint_tensors(run, tag)) for tag in run.tags]
    for tag, load in sources:
        tensors = load()
        value = cache.get(tensors_key(run.info, tensors),
                          lambda: scorer.score(run.info, tensors, run.tokenizer_path))
        step, flops, seconds = (0, 0, 0.0) if tag == INIT_TAG else run.point_meta(tag)
        points.append(Point(step, flops, seconds, value, tag))
        log(f"  {run.name:<10} {tag:<14} step {step:>6}  {flops:.3e} FLOPs  {seconds:8.1f} s  "
            f"{scorer.metric} {value:.4f}")
    return points


# ---- report ---------------------------------------------------------------------------------

METRIC_LABEL = {"accuracy": "target-language accuracy", "retrieval_top1": "En<->target retrieval top-1"}


def plot_curves(curves: dict[str, list[Point]], matched: dict, out_dir: Path, metric: str,
                references: dict | None = None) -> list[Path]:
    """metric_vs_flops.png and metric_vs_wallclock.png: each run's curve, the target line and
    each method's interpolated first crossing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for axis, fname, xlabel in (("flops", "metric_vs_flops.png", "cumulative step-2 FLOPs"),
                                ("seconds", "metric_vs_wallclock.png", "step-2 training wall-clock (s)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for name, pts in curves.items():
            line, = ax.plot([getattr(p, axis) for p in pts], [p.metric for p in pts], marker="o", ms=3, label=name)
            m = matched["methods"][name]
            x = m[f"{axis}_to_target"]
            if m["reached"] and x is not None:
                ax.plot([x], [matched["target"]], marker="x", ms=10, mew=2, color=line.get_color())
        ax.axhline(matched["target"], color="k", ls="--", lw=1,
                   label=f"target: {matched['fraction']:g} x {matched['baseline']} final")
        for label, value in (references or {}).items():
            ax.axhline(value, color="grey", ls=":", lw=1, label=label)
        ax.set(xlabel=xlabel, ylabel=METRIC_LABEL.get(metric, metric),
               title=f"{METRIC_LABEL.get(metric, metric)} against step-2 {'compute' if axis == 'flops' else 'time'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown(study: dict) -> str:
    m = study["matched"]
    metric = study["metric"]
    base = m["baseline"]
    against = "own first crossing of the target" if m["baseline_at"] == "crossing" else "whole run"
    lines = ["# Compute-budget study: step-2 compute to reach the standard baseline", "",
             f"Metric: **{METRIC_LABEL.get(metric, metric)}** ({metric}). Target: {m['fraction']:g} x the final "
             f"{metric} of the baseline `{base}` ({m['baseline_final_metric']:.4f}) = **{m['target']:.4f}**. "
             f"Baseline compute compared against: its {against} ({_fmt(m['baseline_flops_to_target'], '.3e')} FLOPs, "
             f"{_fmt(m['baseline_seconds_to_target'], '.1f')} s).",
             "", "| method | run | steps | final | best | step-2 FLOPs (total) | FLOPs to target | "
             "compute saving vs baseline | wall-clock to target (s) | wall-clock saving | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in m["methods"].items():
        lines.append(f"| {name} | `{study['runs'][name]['dir']}` | {e['steps']} | {e['final_metric']:.4f} | "
                     f"{e['best_metric']:.4f} | {e['total_flops']:.3e} | "
                     f"{_fmt(e['flops_to_target'], '.3e', 'not reached')} | {_fmt(e['ratio_flops'], '.2f')}"
                     f"{'x' if e['ratio_flops'] is not None else ''} | "
                     f"{_fmt(e['seconds_to_target'], '.1f', 'not reached')} | {_fmt(e['ratio_seconds'], '.2f')}"
                     f"{'x' if e['ratio_seconds'] is not None else ''} | {e.get('note', '')} |")
    refs = study.get("references") or {}
    if refs:
        lines += ["", "References: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in refs.items()) + "."]
    lines += ["", "The saving is the baseline's FLOPs (wall-clock) to reach the target divided by the method's. "
              "Where a curve crosses the target between two checkpoints, the crossing is linearly interpolated "
              "between the last point below the target and the first at or above it (error at most one checkpoint "
              "interval: `flops_bracket` in study.json). FLOPs are analytic counts (deterministic); wall-clock "
              "is measured and depends on the machine's load.", "",
              "![metric vs FLOPs](metric_vs_flops.png)", "", "![metric vs wall-clock](metric_vs_wallclock.png)", ""]
    return "\n".join(lines)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def study(runs: dict[str, str | Path], scorer, out_dir: str | Path, *, baseline: str = "full", fraction: float = 1.0,
          baseline_at: str = "crossing", include_init: bool = True, log: Callable[[str], None] = print) -> dict:
    """Score every checkpoint of every run, compute the matched-compute ratios and write
    study.json, study.md, metric_vs_flops.png and metric_vs_wallclock.png into out_dir."""
    opened = open_runs(runs, baseline)
    # Validate the numbers before the (slow) scoring.
    matched_compute({n: [Point(0, 0, 0.0, 0.0)] for n in opened}, baseline, fraction, baseline_at)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ScoreCache(out_dir / "score_cache.json", scorer.identity)
    curves = {}
    for name, run in opened.items():
        log(f"[{name}] {len(run.tags)} checkpoints in {run.dir} ({run.method})")
        curves[name] = collect_points(run, scorer, cache, include_init, log)
    matched = matched_compute(curves, baseline, fraction, baseline_at)
    language = opened[baseline].info.language
    references = scorer.references(language)
    plot_refs = {"majority-class chance": references["chance_majority"]} if "chance_majority" in references else \
        {"chance": references["chance"]} if "chance" in references else {}
    plots = plot_curves(curves, matched, out_dir, scorer.metric, plot_refs)
    result = {
        "metric": scorer.metric, "scorer": scorer.identity, "references": references,
        "include_init_point": include_init,
        "runs": {n: {"dir": str(r.dir), "method": r.method, "language": r.info.language,
                     "steps": r.config["train"]["steps"], "seed": r.config["train"]["seed"],
                     "model_dir": r.config.get("model_dir"), "checkpoints": r.tags} for n, r in opened.items()},
        "curves": {n: [dataclasses.asdict(p) for p in pts] for n, pts in curves.items()},
        "matched": matched,
        "interpolation": "first crossing of target = fraction * baseline final metric; linear in FLOPs, wall-clock "
                         "and step between the last point below the target and the first at or above it; the "
                         "first point itself (an upper bound) when it is already at or above the target",
        "plots": [p.name for p in plots],
    }
    result = _json_safe(result)
    from ds_minimodel.training.checkpoint import write_atomic

    write_atomic(out_dir / "study.json", json.dumps(result, indent=2))
    write_atomic(out_dir / "study.md", markdown(result))
    return result


def summary_lines(result: dict) -> list[str]:
    m = result["matched"]
    out = [f"target {result['metric']} {m['target']:.4f} = {m['fraction']:g} x {m['baseline']} final "
           f"{m['baseline_final_metric']:.4f}"]
    for name, e in m["methods"].items():
        if name == m["baseline"] and e["reached"]:
            out.append(f"  {name:<10} (baseline) reached it at {e['flops_to_target']:.3e} FLOPs "
                       f"({e['seconds_to_target']:.2f} s)")
        elif e["ratio_flops"] is not None:
            out.append(f"  {name:<10} reached it at {e['flops_to_target']:.3e} FLOPs ({e['seconds_to_target']:.2f} s): "
                       f"{e['ratio_flops']:.2f}x less compute, {_fmt(e['ratio_seconds'], '.2f')}x less time than "
                       "the baseline")
        else:
            out.append(f"  {name:<10} {e.get('note', 'no ratio')}")
    return out


# ---- running the experiments ----------------------------------------------------------------

@dataclass
class ExperimentOptions:
    """Three adaptation runs (or a subset) with checkpoints dense enough for a study."""
    out: Path
    pretrained: Path
    target_data: Path
    minipost: Path | None = None
    methods: tuple[str, ...] = METHODS
    # Steps per method. Mini-model steps are ~3x cheaper at the CPU demo's shapes (8 layers, k=2),
    # so 3x the baseline's steps gives each method about the same FLOP budget.
    steps: dict = field(default_factory=lambda: {"full": 300, "minijoint": 900, "minipost": 900})
    checkpoints: int = 10  # per run, evenly spaced (the last one at train.steps)
    config: str = "configs/adapt-cpu.yaml"
    ds_config: str = "ds_configs/z0.json"
    overrides: list = field(default_factory=list)  # extra key=value for every run (e.g. train.seed=1)


def plan_experiments(opts: ExperimentOptions) -> list[tuple[str, Path, list[str]]]:
    """[(method, run dir, adapt.py overrides)] for each method, checked before anything runs."""
    if opts.checkpoints < 1:
        raise InvalidValueError(f"--checkpoints must be >= 1, got {opts.checkpoints}")
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        raise InvalidValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "full" not in opts.methods:
        raise InvalidValueError("the study needs the baseline: --methods must include 'full'")
    for label, path in (("--pretrained", opts.pretrained), ("--target-data", opts.target_data)):
        if not Path(path).is_dir():
            raise MissingFileError(f"{label} {path} does not exist")
    if not (Path(opts.target_data) / "index.json").is_file():
        raise MissingFileError(f"--target-data {opts.target_data} is not a dataset (no index.json; "
                               "make it with launchers/prepare_data.py --recipe bible-<language>)")
    if "minipost" in opts.methods:
        if opts.minipost is None:
            raise InvalidValueError("method minipost needs --minipost DIR (a MiniPost model: make pipeline's "
                                    "runs/pipeline/minipost/final), or leave it out of --methods")
        if not Path(opts.minipost).is_dir():
            raise MissingFileError(f"--minipost {opts.minipost} does not exist")
    sources = {"full": (opts.pretrained, "full"), "minijoint": (opts.pretrained, "mini"),
               "minipost": (opts.minipost, "mini")}
    plan = []
    for method in opts.methods:
        # The body each run will train through, selected as adapt.py will: a model without a mid
        # head (minijoint) or a full model given as --minipost fails here, not after an hour.
        _, _, selected, _, _ = _adapt_body({"model_dir": str(sources[method][0]), "through": sources[method][1]},
                                           f"method {method}")
        if selected != method:
            raise InvalidValueError(f"method {method}: {sources[method][0]} adapts as {selected!r}, not {method!r}")
        steps = int(opts.steps.get(method, 0))
        if steps < 1:
            raise InvalidValueError(f"steps for {method} must be positive, got {opts.steps.get(method)}")
        save_every = max(1, -(-steps // opts.checkpoints))  # ceil: at most `checkpoints` saves, the last at `steps`
        saves = steps // save_every + (1 if steps % save_every else 0)
        model_dir, through = sources[method]
        run_dir = Path(opts.out) / f"adapt-{method}"
        overrides = [f"model_dir={Path(model_dir).resolve()}", f"through={through}",
                     f"data.path={Path(opts.target_data).resolve()}", f"train.out_dir={run_dir.resolve()}",
                     f"train.steps={steps}", f"train.save_every={save_every}", f"train.keep_last={saves + 1}",
                     "train.eval_every=0", "train.progress=false", *opts.overrides]
        plan.append((method, run_dir, overrides))
    return plan


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _planned_matches(run_dir: Path, overrides: list[str]) -> list[str]:
    """The planned settings that a run already in run_dir was not made with."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ["config.yaml unreadable"]
    diffs = []
    for item in overrides:
        key, value = item.split("=", 1)
        if key in ("train.progress", "train.keep_last"):
            continue
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != value and not _same_number(node, value):
            diffs.append(f"{key}={node} (planned {value})")
    return diffs


def _repo_path(path: str, repo: Path) -> str:
    """A path as given when it exists from here, else relative to the repository (like the pipeline's)."""
    p = Path(path)
    if p.exists():
        return str(p.resolve())
    if (repo / p).exists():
        return str(repo / p)
    raise MissingFileError(f"{path} does not exist")


def run_experiments(opts: ExperimentOptions, runner: Callable[[list, Path], float] | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run (or finish, or reuse) each method's adaptation run, one after another so that each
    run's wall-clock is measured on an otherwise idle machine. Returns {method: run dir}.

    A run whose pack exists is reused when it was made with the planned settings; a run that
    stopped half-way is resumed (--resume); one made with other settings is refused.
    runner(cmd, log_path) runs one command (default: `subprocess_runner.run_command`, as the
    pipeline does).
    """
    runner = runner or run_command

    plan = plan_experiments(opts)
    logs = Path(opts.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = {}
    for method, run_dir, overrides in plan:
        runs[method] = run_dir
        resume = (run_dir / "config.yaml").is_file()
        if resume:
            diffs = _planned_matches(run_dir, overrides)
            if diffs:
                raise UserError(f"{run_dir} holds an adaptation run made with other settings ({'; '.join(diffs)}); "
                                "remove it or choose another --out")
        if (run_dir / "pack" / "pack.json").is_file():
            log(f"[adapt-{method}] already done ({run_dir})")
            continue
        steps, save_every = (o.split("=", 1)[1] for o in overrides[4:6])
        log(f"[adapt-{method}] {'resuming' if resume else 'training'}: {steps} steps, a checkpoint every {save_every}")
        cmd = [sys.executable, str(REPO / "launchers" / "adapt.py"), "--deepspeed", _repo_path(opts.ds_config, REPO),
               "--config", _repo_path(opts.config, REPO), *(["--resume"] if resume else []), *overrides]
        runner(cmd, logs / f"adapt-{method}.log")
    return runs
