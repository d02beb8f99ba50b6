"""Reading what the steps did:

flops.py      the FLOP count of every step kind (forward / input-gradient / weight-gradient,
              aware of what is frozen), MFU and hardware peaks
flops_check.py what the count is checked against (one real step under FlopCounterMode) and the
              outside estimates it replaces (the 6N rule, DeepSpeed's profiler arithmetic)
focus_cost.py FOCUS's one-time cost: the FLOPs of its auxiliary fastText model and combination
study.py      the compute-budget study: transfer metric against step-2 compute, matched accuracy
report.py     the pipeline's report.md and plots
"""
