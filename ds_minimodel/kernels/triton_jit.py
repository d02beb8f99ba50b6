"""Build Triton kernels on first use, once per interpreter mode.

`triton.jit` decides at decoration time whether a kernel is compiled for the GPU or run by the
interpreter (`TRITON_INTERPRET=1`, the only way to run Triton on CPU tensors). Decorating at
import time would freeze that choice at whatever the environment was when some other module
first imported ours (in a pytest process: whichever test file was collected first). So the
kernel modules keep their kernels as plain Python functions and this cache decorates them when
they are launched, keyed on the current mode: a test can set TRITON_INTERPRET=1 for itself
without caring about import order, and without affecting anything else.

Kernels built this way must not call other `@triton.jit` helpers (their mode would be fixed at
import); ours are written inline for that reason.
"""

import os

_CACHE = {}


def interpreting():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything at import
        return False
    return True


def jit(fn):
    """The `triton.jit` form of `fn` for the current interpreter mode (cached)."""
    key = (fn.__module__, fn.__qualname__, interpreting())
    kernel = _CACHE.get(key)
    if kernel is None:
        import triton

        kernel = _CACHE[key] = triton.jit(fn)
    return kernel


def check_device(*tensors, what):
    """Raise a clear error when a Triton kernel is asked to run where it cannot."""
    if not triton_available():
        raise RuntimeError(f"{what}: kernels='triton' needs the `triton` package, which is not "
                           "importable here; use kernels='torch' or 'auto'")
    on_cuda = all(t.is_cuda for t in tensors)
    if not on_cuda and not interpreting():
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"{what}: kernels='triton' runs on CUDA tensors only (got {', '.join(devices)}); "
            "use kernels='auto' or 'torch' on CPU, or set TRITON_INTERPRET=1 before running "
            "to execute the Triton kernels in the (slow) CPU interpreter")
    if on_cuda and interpreting():
        raise RuntimeError(f"{what}: TRITON_INTERPRET=1 is set but the tensors are on CUDA; the "
                           "interpreter runs CPU tensors only")
