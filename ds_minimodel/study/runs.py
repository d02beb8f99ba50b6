"""Adaptation runs as the study reads them: complete checkpoints as pack-equivalents, the run's
initial embeddings rebuilt exactly as adapt.py builds them, and its own logged validation loss.
A study has one or more runs (seeds) per method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ds_minimodel.artefacts.langpack import PackInfo, read_pack_info
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import fingerprint
from ds_minimodel.config import AdaptConfig, from_dict
from ds_minimodel.errors import MissingFileError, UserError
from ds_minimodel.method.methods import METHODS
from ds_minimodel.steps.adapt.common import init_embeddings, select_body
from ds_minimodel.steps.mlm_job import open_corpus
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.training.checkpoint import consolidate, is_complete, read_meta
from ds_minimodel.training.metrics import read_metrics


def split_method(name: str) -> tuple[str, str | None]:
    """A study method name with its own embedding init: "minipost+focus" -> ("minipost", "focus");
    "full" -> ("full", None)."""
    base, sep, init = name.partition("+")
    return base, (init if sep else None)
INIT_TAG = "init"


@dataclass
class StudyRun:
    """An adaptation run directory with its complete checkpoints and the PackInfo of its packs."""
    name: str
    dir: Path
    tags: list[str]
    metas: dict[str, dict]
    config: AdaptConfig  # what the run was trained with (from its newest checkpoint's meta.json)
    info: PackInfo
    tokenizer_path: str

    @property
    def method(self) -> str:
        return self.info.method

    @property
    def seed(self) -> int:
        return int(self.config.train.seed)

    def point_meta(self, tag: str) -> tuple[int, int, float]:
        loop = self.metas[tag]["loop"]
        return int(loop["step"]), int(loop["flops"]), float(loop["train_seconds"])


def adapt_body(config: AdaptConfig, where: str):
    """(body state, body config, method, k, source lineage) exactly as adapt.run selects them."""
    model_dir = config.adapt.model_dir
    if not model_dir or not Path(model_dir).is_dir():
        raise MissingFileError(f"{where} was adapted from model_dir {model_dir!r}, which does not exist here "
                               "(needed for its initial embeddings or its pack info; try --no-init-point)")
    state, cfg, lineage = read_model_dir(model_dir)
    body, body_cfg, method, k = select_body(state, cfg, lineage, config.adapt.through, model_dir)
    return body, body_cfg, method, k, lineage


def _target_corpus(config: AdaptConfig, where: str):
    path = config.data.path
    if not path or not (Path(path) / "index.json").is_file():
        raise MissingFileError(f"{where} was trained on data.path {path!r}, which is not a dataset here")
    return open_corpus(path)


def _info_from_config(config: AdaptConfig, where: str) -> tuple[PackInfo, str]:
    """The PackInfo adapt.run would write for this run (when it has no final pack yet)."""
    body, _, method, k, _ = adapt_body(config, where)
    tok = _target_corpus(config, where).tokenizer()
    info = PackInfo(language=config.adapt.language, method=method, vocab_size=tok.vocab_size,
                    hidden_size=int(body["embeddings.word"].shape[1]), pad_token_id=tok.pad_id,
                    special={"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id,
                             "mask": tok.mask_id},
                    body_fingerprint=fingerprint(body, k), mini_depth=k,
                    tokenizer_fingerprint=tok.fingerprint(),
                    provenance={"model_dir": config.adapt.model_dir, "through": config.adapt.through,
                                "init": config.adapt.init})
    return info, tok.path


def open_run(name: str, run_dir: str | Path) -> StudyRun:
    """Read an adaptation run: its complete checkpoints (sorted by step) and its PackInfo (from
    its final pack/pack.json, or rebuilt from the checkpoint's config when it has none)."""
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
    try:
        config = from_dict(AdaptConfig, {k: v for k, v in metas[tags[-1]]["config"].items() if k != "model"})
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    pack_json = run_dir / "pack" / "pack.json"
    if pack_json.is_file():
        info = read_pack_info(pack_json)
        tokenizer_path = str(run_dir / "pack" / "tokenizer.model")
    else:
        info, tokenizer_path = _info_from_config(config, where)
    return StudyRun(name, run_dir, tags, metas, config, info, tokenizer_path)


def checkpoint_tensors(run: StudyRun, tag: str) -> dict[str, torch.Tensor]:
    """{"word", "output_bias"} of one checkpoint: what its pack would hold."""
    state, _ = consolidate(run.dir / "checkpoints", tag)
    word, bias = state["embeddings.word"], state["lm_head.bias"]
    if tuple(word.shape) != (run.info.vocab_size, run.info.hidden_size):
        raise UserError(f"run {run.name!r}: checkpoint {tag} has embeddings {tuple(word.shape)}, its pack info says "
                        f"{run.info.vocab_size} x {run.info.hidden_size}")
    return {"word": word.float(), "output_bias": bias.float()}


def init_tensors(run: StudyRun) -> dict[str, torch.Tensor]:
    """The run's embeddings before its first step, rebuilt with adapt.py's own `init_embeddings`
    from the same source model, tokenizers and seed."""
    word, bias, _ = _rebuild_init(run)
    return {"word": word, "output_bias": bias}


def init_record(run: StudyRun) -> dict:
    """init_embeddings' record of the run's start, rebuilt as init_tensors does (for adapt.init=focus
    that trains its fastText model again: the FLOPs are the run's, the seconds this machine's)."""
    return _rebuild_init(run)[2]


def _rebuild_init(run: StudyRun):
    where = f"run {run.name!r} ({run.dir})"
    body, _, _, _, lineage = adapt_body(run.config, where)
    corpus = _target_corpus(run.config, where)
    target_tok = corpus.tokenizer()
    if target_tok.fingerprint() != run.info.tokenizer_fingerprint:
        raise UserError(f"{where}: the tokenizer of data.path {run.config.data.path} is not the one the run "
                        "was trained with")
    source_tok = load_tokenizer(lineage["tokenizer"]) if lineage.get("tokenizer") else None
    return init_embeddings(run.config.adapt.init, body["embeddings.word"], source_tok, target_tok,
                           run.config.train.seed, corpus, source_bias=body.get("lm_head.bias"))


def own_valid_loss(run: StudyRun) -> dict[int, float]:
    """{step: validation MLM loss} the run logged (metrics.jsonl, at train.eval_every and its last
    step), through the model it trained through: for a mini-model run that is the mini-model's
    loss, not comparable with the full model's (the study scores its own MLM loss for that)."""
    return {int(r["step"]): float(r["valid_final_loss"]) for r in read_metrics(run.dir, "eval")
            if "valid_final_loss" in r}


def check_runs(runs: dict[str, list[StudyRun]], baseline: str) -> None:
    """Refuse runs that are not comparable: a name that says another method than the run trained,
    another target language or tokenizer, or no baseline among them."""
    if baseline not in runs:
        raise UserError(f"the baseline {baseline!r} is not among the runs ({', '.join(runs)}); pass --runs "
                        f"{baseline}=DIR or --baseline NAME")
    for name, seeds in runs.items():
        base, init = split_method(name)
        for run in seeds:
            if base in METHODS and run.method != base:
                raise UserError(f"mismatched runs: {name}={run.dir} is a {run.method} run (its pack info says "
                                f"method {run.method!r})")
            if init and run.config.adapt.init != init:
                raise UserError(f"mismatched runs: {name}={run.dir} started its embeddings with adapt.init="
                                f"{run.config.adapt.init}, not {init}")
    ref = runs[baseline][0]
    for name, seeds in runs.items():
        for run in seeds:
            if (run.info.language, run.info.tokenizer_fingerprint) != (ref.info.language,
                                                                       ref.info.tokenizer_fingerprint):
                raise UserError(f"mismatched runs: {name} ({run.dir}) adapts language {run.info.language!r} with "
                                f"tokenizer {run.info.tokenizer_fingerprint}, the baseline {baseline} ({ref.dir}) "
                                f"{ref.info.language!r} with {ref.info.tokenizer_fingerprint}")
        seen: dict[int, Path] = {}
        for run in seeds:
            if run.seed in seen:
                raise UserError(f"mismatched runs: {name} has two runs of train.seed {run.seed} ({seen[run.seed]} and "
                                f"{run.dir}): each seed of a method once")
            seen[run.seed] = run.dir


def open_runs(runs: dict[str, list[str | Path]], baseline: str = "full") -> dict[str, list[StudyRun]]:
    """Open and cross-check every run: {method name: its runs, one per seed, sorted by seed}
    (cheap: meta.json and pack.json only)."""
    if not runs:
        raise UserError("no runs given")
    opened = {name: sorted((open_run(name, d) for d in dirs), key=lambda r: r.seed) for name, dirs in runs.items()}
    check_runs(opened, baseline)
    return opened
