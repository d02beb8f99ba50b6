"""Peak tensor memory of a callable, on CPU or CUDA (used by the benchmark and the tests).

CUDA has `max_memory_allocated`; the CPU allocator keeps no such counter, and `tracemalloc`
does not see ATen's allocations. The profiler does: with `profile_memory=True` every CPU tensor
allocation and free is a "[memory]" event with a signed byte count, so the running sum of those
events, in time order, is the bytes allocated since the start, and its maximum is the peak.
"""

import torch


def peak_allocated_bytes(fn, device="cpu"):
    """(peak bytes of tensor memory allocated by `fn()` above what was live when it started,
    fn's return value)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    deltas = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak, out
