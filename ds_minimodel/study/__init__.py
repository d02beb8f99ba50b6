"""The compute-budget study: transfer metric against step-2 compute, standard vs mini-model adaptation.

The paper's headline (arXiv 2212.10503, abstract: "2.3x less compute on average") is a
matched-metric comparison: how much step-2 compute does each method need to reach the
accuracy the standard baseline (Artetxe et al. 2020: new embeddings through the full model)
ends with? This package measures it on adaptation runs, several seeds per method, that kept a
checkpoint every few steps:

1. runs.py: every complete checkpoint of each run becomes a pack-equivalent (its word table and
   output bias, with the run's PackInfo); optionally the run's *initial* embeddings (rebuilt
   exactly as adapt.py builds them) are a point at 0 FLOPs and 0 s;
2. scoring.py: each is scored per unit with the transfer metric: target-language accuracy of the
   source-fine-tuned classifier with those embeddings plugged in, per test example
   (`AccuracyScorer`), or English<->target verse retrieval top-1, per verse pair
   (`RetrievalScorer`); loss_scoring.py: the full model's MLM loss with them plugged in, per
   validation sequence (`MLMLossScorer`); all cached by content;
3. bootstrap.py: a method's curve is its seeds' mean metric at each checkpoint; matching.py: the
   target is fraction * the baseline's final (mean) metric, each curve's crossing of it is found
   on its monotone (isotonic) fit and interpolated, and a method's ratio is the baseline's FLOPs
   to reach the target divided by the method's. bootstrap.py resamples seeds and whole chapters
   of units with replacement and recomputes all of it per replicate; each ratio's interval is
   built for few seeds (a jackknife over seeds with Student's t, plus the chapters' bootstrap);
4. compare.py runs 1-3 for the transfer metric and the MLM loss and writes study.json, study.md
   and the plots (render.py); experiments.py trains the adaptation runs first, through the real
   adapt launcher.

Everything here is deterministic given the runs (which are deterministic given their seeds) and
the bootstrap seed: FLOPs are analytic counts, the metrics are evaluated with fixed data in a
fixed order. Wall-clock seconds are measured values and vary with the machine's load.
"""
