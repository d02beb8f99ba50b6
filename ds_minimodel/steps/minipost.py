"""Step 1b: MiniPost. Carve layers 1..k out of a pretrained encoder, freeze them and the
embeddings, and train a small top (n layers + an MLM head tied to the frozen embeddings) on
source-language MLM. The result is a model directory whose lineage records which full model its
layers 1..k come from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ds_minimodel.artefacts.checkpoint_export import export_checkpoint
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import build_minipost
from ds_minimodel.config import MiniPostConfig
from ds_minimodel.errors import UserError
from ds_minimodel.method.methods import MINIPOST, MODEL_KIND
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.mlm_job import open_corpus, run_mlm_job
from ds_minimodel.tokenizers import load_tokenizer


def run(cfg: MiniPostConfig, ds_config_path: str, resume: bool = False) -> Path:
    shards = open_corpus(cfg.data.path)
    state, src_cfg, lineage = read_model_dir(cfg.minipost.source)
    # Fewer pieces than embedding rows is normal: checkpoints pad their tables (multilingual-e5:
    # 250,002 pieces in 250,037 rows), and the extra rows are never indexed.
    if shards.vocab_size > src_cfg.vocab_size:
        raise UserError(f"corpus {cfg.data.path} has {shards.vocab_size} pieces but {cfg.minipost.source} has a "
                        f"{src_cfg.vocab_size}-row embedding table: MiniPost trains on the source model's language")
    if lineage.get("tokenizer"):

        if load_tokenizer(lineage["tokenizer"]).fingerprint() != shards.tokenizer().fingerprint():
            raise UserError(f"corpus {cfg.data.path} was tokenized with another tokenizer than {cfg.minipost.source}")
    k, n = cfg.minipost.mini_depth, cfg.minipost.top_layers
    if k > src_cfg.num_layers:
        raise UserError(f"minipost.mini_depth={k} exceeds the source model's {src_cfg.num_layers} layers")
    torch.manual_seed(cfg.train.seed)
    fresh = MLMEncoder(dataclasses.replace(src_cfg, num_layers=k + n, mini_depth=None)).state_dict()
    mini_state, mini_cfg = build_minipost(state, src_cfg, k, n, cfg.minipost.top_init, fresh)

    def make_model(ds_config: dict) -> MLMEncoder:
        model = MLMEncoder(mini_cfg)
        model.load_state_dict(mini_state, strict=True)
        # Embeddings and layers 1..k frozen (lm_head.weight is embeddings.word: frozen with it).
        set_requires_grad_for_step(model, MODEL_KIND[MINIPOST], mini_depth=k)
        return model

    def finalize(run_dir: Path, checkpointer) -> None:
        fps = {str(i): lineage["body_fingerprints"][str(i)] for i in range(1, k + 1)}
        export_checkpoint(checkpointer.dir, run_dir / "final", tokenizer_path=lineage.get("tokenizer"),
                          lineage={"kind": "minipost", "mini_depth": k, "top_layers": n,
                                   "source": str(cfg.minipost.source), "source_layers": src_cfg.num_layers,
                                   "body_fingerprints": fps},
                          hf_export=False)

    return run_mlm_job(cfg, mini_cfg, shards, ds_config_path, resume, make_model=make_model, kind=MODEL_KIND[MINIPOST],
                       route="final", loss_keys=("loss", "final_loss"), finalize=finalize,
                       flops_kwargs={"mini_depth": k})
