"""Reading what the steps did:

flops.py      the FLOP count of every step kind (forward / input-gradient / weight-gradient,
              aware of what is frozen), MFU and hardware peaks
study.py      the compute-budget study: transfer metric against step-2 compute, matched accuracy
report.py     the pipeline's report.md and plots
"""
