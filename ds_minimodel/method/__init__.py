"""The method's accounting, below both the training loop and the steps (both import it; it
imports neither):

methods.py     the method vocabulary, one table: full / minijoint / minipost, each one's step
               kinds (adapt_<method>) and adapt.through; everything else reads the words here
rules.py       what each step kind trains: the one rule the steps freeze their models by
flops.py       the analytic FLOP count of every step kind (forward / input-gradient /
               weight-gradient, aware of what is frozen), read by the loop, the steps and the study
focus_cost.py  FOCUS's one-time cost: the FLOPs of its auxiliary fastText model and combination
flops_check.py what the count is checked against: one step under torch's FlopCounterMode, and
               the 6N rule and DeepSpeed profiler's arithmetic (profile_flops prints them, and
               its --check runs the step; the tests and bench/flops_accuracy.py use it too)

MFU and the hardware peaks sit beside the loop (training/utilisation.py).
"""
