"""Training infrastructure every step shares, free of any one step's logic:

engine.py        the only DeepSpeed import: process group, validated DeepSpeed config, engine
torch_engine.py  the same interface in plain PyTorch (train.engine=torch)
optim.py         AdamW (fused), parameter groups, the learning-rate schedule
job.py           the skeleton of a training step: checks, run lock, engine, resume, loop, finalize
loop.py          the one training loop (steps, accumulation, evaluation, checkpoints, FLOPs, MFU)
checkpoint.py    save / resume with data position and RNG states; consolidation and export
metrics.py       metrics.jsonl, the rank-0 progress bar, wandb
run_lock.py      one owner per run directory (flock, or a heartbeat lease)
faults.py        faults injected at exact points (DSM_FAULT), for the fault tests
"""
