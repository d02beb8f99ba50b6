"""Step 2 for several languages in one job: every language's embeddings over one frozen (mini-)model.

    python launchers/adapt.py --config configs/adapt-demo.yaml adapt.model_dir=runs/demo/final \
        adapt.languages=[sw,tl,vi] data.path='data/bible-{lang}' train.out_dir=runs/adapt-3
    # or corpora by name: adapt.data_paths='{sw: data/bible-sw, tl: /corpora/tl}'

One process holds the body once (`model.MultiLanguageMLM`), every optimizer step trains every
language on its own batch (each of its micro-batches one forward and backward, so one language's
activations are alive at a time), and one checkpoint resumes all of them; the run ends with one
language pack per language in `train.out_dir/packs/<code>/` (the format of a single run's
`pack/`). Metrics: `final_loss_<code>` and `valid_final_loss_<code>` per language, and `loss`,
their mean.

Each language's result is the one a separate run of it would reach (same config, seed and
corpus; tests/test_adapt_languages.py checks it against such runs): its embeddings start as that
run's (`adapt.init_embeddings` with the same seed), its loader is that run's (the batches and
masks of every step), its rows go through its own encoder only (own softmax over its own
vocabulary, own mean over its own masked tokens, own dropout stream), its gradient is clipped by
its own norm, and AdamW, elementwise, moves it as it would move it alone. The FLOPs counted are
the sum of the separate runs' (each language's micro-batch counted at its own vocabulary).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ds_minimodel.artefacts.langpack import save_pack
from ds_minimodel.config import AdaptConfig, to_dict
from ds_minimodel.data.loader import LanguageLoaders, MLMLoader, eval_batches
from ds_minimodel.data.user_bible import pack_provenance
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import MultiLanguageMLM
from ds_minimodel.steps.adapt.common import (
    check_ds_config,
    check_target,
    pack_info,
    read_body,
    start_state,
)
from ds_minimodel.steps.mlm_job import open_corpus
from ds_minimodel.training import engine as ds
from ds_minimodel.training import loop
from ds_minimodel.training.checkpoint import consolidate
from ds_minimodel.training.job import JobSpec, run_job


def run(cfg: AdaptConfig, ds_config_path: str, resume: bool = False) -> Path:
    paths = cfg.corpus_paths()
    shards = {code: open_corpus(path) for code, path in paths.items()}
    tokenizers = {code: s.tokenizer() for code, s in shards.items()}
    body = read_body(cfg)
    for code, corpus in shards.items():
        check_target(corpus, body, paths[code], code, f"adapt.languages says {code}")
    raw_ds = check_ds_config(ds_config_path)
    if cfg.optim.grad_clip > 0 and cfg.train.engine == "deepspeed":
        ds.check_group_clipping({**raw_ds, "bf16": {"enabled": cfg.train.dtype == "bf16"}}, ds_config_path)
    starts = {code: start_state(body, s, cfg) for code, s in shards.items()}
    model_cfg = dataclasses.replace(next(iter(starts.values()))[1], vocab_size=None)
    vocab = {code: tok.vocab_size for code, tok in tokenizers.items()}
    kind = body.kind

    def make_model(ds_config: dict) -> MultiLanguageMLM:
        model = MultiLanguageMLM(model_cfg, vocab)
        model.load_state_dict({model.prefix(model.languages, code) + name: t for code, (start, _, _) in starts.items()
                               for name, t in start.items()}, strict=True)
        for encoder in model.encoders:
            set_requires_grad_for_step(encoder, kind)
        return model

    def make_loader(mb: int, ga: int, rank: int, world: int) -> LanguageLoaders:
        return LanguageLoaders({code: MLMLoader(s, "train", cfg.data.seq_len, mb, ga, rank, world, cfg.train.seed,
                                                cfg.data.mask_prob) for code, s in shards.items()})

    def make_evaluate(engine, dist):
        per_rank = math.ceil(cfg.data.eval_batches / dist.world_size)
        if not per_rank:
            return None
        valid = {code: [{"batches": {code: b}} for b in eval_batches(
                     s, "valid", cfg.data.seq_len, cfg.data.eval_batch_size, per_rank, dist.rank, dist.world_size,
                     cfg.train.seed, cfg.data.mask_prob)] for code, s in shards.items()}
        return lambda: {k: v for code, batches in valid.items()
                        for k, v in loop.evaluate_mlm(engine, batches, {}, (f"final_loss_{code}",)).items()}

    # Each language's micro-batch costs what it costs in its own run: counted at its vocabulary.
    counters = {code: loop.flops_counter(dataclasses.replace(model_cfg, vocab_size=v), kind) for code, v in vocab.items()}

    def micro_flops(batch: dict) -> int:
        return sum(counters[code](b) for code, b in batch["batches"].items())

    def finalize(run_dir: Path, checkpointer) -> None:
        final, _ = consolidate(checkpointer.dir)
        for code, tok in tokenizers.items():
            prefix = MultiLanguageMLM.prefix(list(vocab), code)
            info = pack_info(cfg, body, tok, code, starts[code][2], model_cfg.num_layers,
                             data_path=paths[code], job_languages=list(vocab),
                             **pack_provenance(shards[code].index))  # a user's Bible: where its test verses are
            save_pack(run_dir / "packs" / code, info, final[prefix + "embeddings.word"], final[prefix + "lm_head.bias"],
                      tok.path)

    # The checkpoint's model: the body's config and the languages in order (a resume with other
    # languages, or the same in another order, is refused by name).
    model_config = {**to_dict(model_cfg), "languages": [[code, v] for code, v in vocab.items()]}
    spec = JobSpec(kind=kind, model_config=model_config, make_loader=make_loader, make_model=make_model,
                   loss_keys=("loss", *(f"final_loss_{code}" for code in vocab)), finalize=finalize,
                   make_evaluate=make_evaluate, forward_kwargs={"route": "final"}, micro_flops=micro_flops,
                   parts=len(vocab), clip_groups=lambda model: model.trainable_groups(),
                   rank_state=lambda model: model.rng, checkpoint_frozen=False)
    return run_job(cfg, spec, ds_config_path, resume)
