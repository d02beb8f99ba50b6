"""Reading what the steps did:

body.py       a pretrained body's distance below the unigram cross-entropy of its data
report.py     the pipeline's report.md and plots

The FLOP count lives in `ds_minimodel.method` (below the loop and the steps), MFU beside the loop
(`training/utilisation.py`), the compute study in `ds_minimodel.study`.
"""
