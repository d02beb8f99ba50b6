"""The compute-budget study: transfer metric against step-2 compute, standard vs mini-model adaptation.

The paper's headline (arXiv 2212.10503, abstract: "2.3x less compute on average") is a
matched-metric comparison: how much step-2 compute does each method need to reach the
accuracy the standard baseline (Artetxe et al. 2020: new embeddings through the full model)
ends with? This package measures it on adaptation runs that kept a checkpoint every few steps:

1. runs.py: every complete checkpoint of each run becomes a pack-equivalent (its word table and
   output bias, with the run's PackInfo); optionally the run's *initial* embeddings (rebuilt
   exactly as adapt.py builds them) are a point at 0 FLOPs and 0 s;
2. scoring.py: each is scored with the transfer metric: target-language accuracy of the
   source-fine-tuned classifier with those embeddings plugged in (`AccuracyScorer`), or
   English<->target verse retrieval top-1 (`RetrievalScorer`), cached by content; each run is
   then a curve of (cumulative step-2 FLOPs from the checkpoint's meta.json, training
   wall-clock, metric);
3. matching.py: target = fraction * the baseline's final metric; each curve's FIRST crossing of
   the target is interpolated (`first_crossing`), and a method's ratio is the baseline's FLOPs to
   reach the same target divided by the method's. The same is done for wall-clock;
4. compare.py runs 1-3 and writes study.json, study.md and the plots (render.py);
   experiments.py trains the adaptation runs first, through the real adapt launcher.

Everything here is deterministic given the runs (which are deterministic given their seeds):
FLOPs are analytic counts, and the metric is evaluated with fixed data in a fixed order.
Wall-clock seconds are measured values and vary with the machine's load.
"""
