"""Step 2: learn a new language's embeddings through a frozen (mini-)model; write a language pack.

single.py trains one language, multi.py several in one job (`adapt.languages`), common.py holds
what both share.

Every variant trains the same thing, an `MLMEncoder` through route "final" with only the word
table and the output bias trainable (`method/rules.py`); they differ only in the body it runs through,
and record it as their step kind:

  minijoint  adapt_minijoint  layers 1..k of a MiniJoint model and its mid head (as the k-layer model's head)
  minipost   adapt_minipost   a MiniPost mini-model: frozen layers 1..k and its trained top of n layers
  full       adapt_full       the standard baseline (Artetxe et al. 2020): all L layers and the final head
"""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.config import AdaptConfig


def run(cfg: AdaptConfig, ds_config_path: str, resume: bool = False) -> Path:
    """One language, or every language of `adapt.languages` in one job."""
    from ds_minimodel.steps.adapt import multi, single

    return (multi if cfg.adapt.languages else single).run(cfg, ds_config_path, resume)
